"""WebSockets over HTTP/2 (RFC 8441): the ASGI websocket cycle of HTTP/1.1, over a stream.

An extended CONNECT with ``:protocol websocket`` runs the same
:class:`~asgictl.protocols.websockets.connection.WSConnection` (either ``--ws`` library)
as an HTTP/1.1 upgrade does. What differs is only what carries it: the WSConnection is
given a :class:`StreamTransport` instead of a socket's transport.

- Handshake: the framing libraries check an HTTP/1.1 handshake (Upgrade, Connection,
  Sec-WebSocket-Key); RFC 8441 has none of those, so the engine is shown the request's
  fields plus those three (a fresh key), and the app sees the request's own. The answer
  the WSConnection writes as HTTP/1.1 (the 101, or a 403/500/503 or the app's denial
  response) becomes a HEADERS frame: 101 is 200 (RFC 8441 5), the HTTP/1.1-only fields
  go, the rest (subprotocol, extensions, the app's headers, a denial's body) stay.
- Frames: what the WSConnection writes after that is DATA on the stream (within the
  peer's windows: ``pause_writing`` while they are closed); DATA from the client is fed
  to it, acknowledged (WINDOW_UPDATE) unless it paused reading.
- The end: the WSConnection's close is END_STREAM, its abort a RST_STREAM CANCEL; the
  client's END_STREAM is EOF, its RST_STREAM (or the connection's loss) the connection
  lost.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import TYPE_CHECKING, Any

from asgictl.protocols.http2.engine import CANCEL
from asgictl.protocols.http2.stream import CONNECTION_FIELDS

if TYPE_CHECKING:
    from asgictl.protocols.http2.connection import HTTP2Connection
    from asgictl.protocols.http2.stream import H2Stream

#: HTTP/1.1 answer fields that mean nothing in HTTP/2 (RFC 9113 8.2.2, RFC 8441 5).
_DROPPED = CONNECTION_FIELDS | {b"sec-websocket-accept"}


class StreamTransport(asyncio.Transport):
    """One HTTP/2 stream as the transport of a WSConnection."""

    def __init__(self, conn: HTTP2Connection, stream: H2Stream) -> None:
        super().__init__()
        self.conn = conn
        self.stream = stream
        self.protocol: Any = None
        self.head_sent = False
        self.closing = False
        self.lost = False
        self.reading = True
        #: DATA received while reading was paused, not acknowledged yet
        self.held = 0
        self.paused_writing = False

    # ------------------------------------------------------------ what the WSConnection calls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def write(self, data: bytes) -> None:
        if self.closing or self.stream.reset:
            return
        if not self.head_sent:
            self.head_sent = True
            data = self._send_head(data)
        if data:
            self.stream.send_raw(data, False)
        self._check_writing()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if not self.stream.reset:
            self.stream.send_raw(b"", True)
        self.conn.loop.call_soon(self.connection_lost)

    def abort(self) -> None:
        self.closing = True
        self.stream.cancel(CANCEL)
        self.conn.loop.call_soon(self.connection_lost)

    def is_closing(self) -> bool:
        return self.closing or self.stream.reset

    def get_write_buffer_size(self) -> int:
        """Bytes written and not sent yet: what waits in the stream's outbox for the
        peer's windows (the WSConnection's --timeout-send reads it)."""
        return sum(len(data) for data in self.stream.outbox)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        if self.held:
            self.conn.acknowledge(self.stream.stream_id, self.held)
            self.held = 0

    def is_reading(self) -> bool:
        return self.reading

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    # ------------------------------------------------------------ from the HTTP/2 connection

    def feed(self, data: bytes, flow_length: int) -> None:
        """DATA from the client."""
        if self.closing:
            self.conn.acknowledge(self.stream.stream_id, flow_length)
            return
        if self.reading:
            self.conn.acknowledge(self.stream.stream_id, flow_length)
        else:
            self.held += flow_length
        if data:
            self.protocol.data_received(data)

    def eof(self) -> None:
        """The client ended its side of the stream."""
        if not self.closing and not self.protocol.eof_received():
            self.close()

    def window_opened(self) -> None:
        self._check_writing()

    def connection_lost(self) -> None:
        if not self.lost:
            self.lost = True
            self.closing = True
            self.protocol.connection_lost(None)

    # ------------------------------------------------------------ helpers

    def _check_writing(self) -> None:
        waiting = bool(self.stream.outbox)
        if waiting and not self.paused_writing:
            self.paused_writing = True
            self.protocol.pause_writing()
        elif not waiting and self.paused_writing:
            self.paused_writing = False
            self.protocol.resume_writing()

    def _send_head(self, data: bytes) -> bytes:
        """The HTTP/1.1 answer at the start of ``data`` as a HEADERS frame; the rest back."""
        end = data.find(b"\r\n\r\n")
        head, rest = data[:end], data[end + 4 :]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        fields = [(b":status", b"200" if status == 101 else b"%d" % status)]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name not in _DROPPED:
                fields.append((name, value.strip()))
        self.stream.conn.send_headers(self.stream.stream_id, fields, False)
        return rest


def start_websocket(conn: HTTP2Connection, stream: H2Stream, http_scope: dict[str, Any]) -> None:
    """Run the ASGI websocket cycle of an extended CONNECT over ``stream``."""
    state = conn.state
    factory = state.ws_protocol
    assert factory is not None
    transport = StreamTransport(conn, stream)
    stream.tunnel = transport
    protocol = factory(state, http_scope)
    transport.set_protocol(protocol)
    key = base64.b64encode(os.urandom(16))
    protocol.engine_headers = [
        *http_scope["headers"],
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"sec-websocket-key", key),
    ]
    protocol.connection_made(transport)
    protocol.handshake(b"")
