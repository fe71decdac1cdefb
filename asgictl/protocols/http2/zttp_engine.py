"""The ``zttp`` engine (uvicorn's author's Zig sans-IO HTTP/1.1-2-3 library), measured
behind the same seam as ``h2``: ``--http2-engine zttp``.

It is not the default, because zttp decides things the connection must decide (the
README's HTTP/2 section lists what fails of the HTTP/2 suite): its
SETTINGS are fixed (128 concurrent streams, 64 KiB header list, extended CONNECT always
offered), it gives every DATA frame's window back as soon as it is parsed (request body
is not held to what the app reads), it answers SETTINGS and PING itself and has no way
to send a PING, and it checks request fields itself (the shared policy then sees a
request without pseudo-header fields). The adapter maps what it can: zttp's parsed
request back to the fields the connection checks, its events to the connection's
calls, the connection's frames to zttp's stream calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zttp

from asgictl.protocols.http2.engine import INITIAL_WINDOW_SIZE, PROTOCOL_ERROR, EngineError

if TYPE_CHECKING:
    from asgictl.protocols.http2.connection import HTTP2Connection

_MAX_FRAME = 16384


class ZttpEngine:
    """One HTTP/2 connection's framing, by ``zttp``."""

    __slots__ = ("closed", "conn", "highest", "started", "z")

    def __init__(
        self,
        conn: HTTP2Connection,
        settings: dict[int, int],
        connection_window: int,
        upgrade: bytes | None = None,
    ) -> None:
        if upgrade is not None:
            raise EngineError(PROTOCOL_ERROR, "h2c upgrade is not available with the zttp engine")
        self.conn = conn
        self.z = zttp.Connection(zttp.SERVER, zttp.HTTP2)
        self.z.initiate_connection()
        self.highest = 0
        #: streams whose response head went out (a later HEADERS is trailers)
        self.started: set[int] = set()
        self.closed = False

    def receive(self, data: bytes) -> None:
        conn = self.conn
        z = self.z
        try:
            z.receive_data(data)
            while True:
                event = z.next_event()
                kind = type(event)
                if kind is zttp.NeedData:
                    return
                if kind is zttp.Request:
                    self.highest = max(self.highest, event.stream_id)
                    conn.on_request(event.stream_id, _fields(event, conn.scheme), event.end_stream)
                elif kind is zttp.Data:
                    conn.on_data(event.stream_id, event.data, len(event.data), False)
                elif kind is zttp.EndOfMessage:
                    if event.trailers:
                        conn.on_trailers(event.stream_id, list(event.trailers))
                    else:
                        conn.on_data(event.stream_id, b"", 0, True)
                elif kind is zttp.WindowUpdate:
                    conn.on_window_update(event.stream_id)
                elif kind is zttp.RstStream:
                    conn.on_reset(event.stream_id, event.error_code, True)
                elif kind is zttp.Settings:
                    conn.on_settings(any(key == INITIAL_WINDOW_SIZE for key, _ in event.params))
                elif kind is zttp.Ping:
                    if event.ack:
                        conn.on_ping_ack(event.data)
                    else:
                        conn.on_ping()
                elif kind is zttp.GoAway:
                    conn.on_goaway(event.error_code)
                elif kind is zttp.ConnectionClosed:
                    raise EngineError(0, "connection closed")
        except zttp.ProtocolError as exc:
            raise EngineError(PROTOCOL_ERROR, str(exc)) from None

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        stream = self.z.stream(stream_id)
        if headers and headers[0][0] == b":status":
            status = int(headers[0][1])
            if status < 200:
                stream.send_informational(status, headers[1:])
                return
            self.started.add(stream_id)
            stream.send_response(status, headers[1:], end_stream)
        else:  # trailers
            stream.end_message(headers)
        if end_stream:
            self.started.discard(stream_id)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.z.stream(stream_id)
        if data:
            stream.send_data(data)
        if end_stream:
            stream.end_message()
            self.started.discard(stream_id)

    def window(self, stream_id: int) -> int:
        stream_window = self.z.stream(stream_id).send_window
        if stream_window is None:
            return 0
        return min(self.z.send_window, stream_window, _MAX_FRAME)

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Nothing to do: zttp gives the window back as soon as it parses the DATA."""

    def reset(self, stream_id: int, code: int) -> bool:
        try:
            self.z.stream(stream_id).reset(code)
        except zttp.ProtocolError:
            return False
        return True

    def goaway(self, code: int, last_stream_id: int) -> None:
        self.z.close(code, last_stream_id)

    def ping(self, payload: bytes) -> None:
        """zttp cannot send a PING: the shutdown's second GOAWAY goes after its wait."""

    @property
    def headers_pending(self) -> bool:
        return False

    @property
    def highest_stream_id(self) -> int:
        return self.highest

    def data_to_send(self) -> bytes:
        return self.z.data_to_send()


def _fields(request: Any, scheme: str) -> list[tuple[bytes, bytes]]:
    """The request's fields as the connection checks them (zttp parsed the pseudo-header
    fields and folded :authority into host: it is given back as :authority)."""
    fields = [(b":method", request.method), (b":scheme", scheme.encode()), (b":path", request.target)]
    if request.protocol is not None:
        fields.append((b":protocol", request.protocol))
    headers = request.headers
    headers = headers if type(headers) is list else headers.to_list(lowercase_names=True)
    # :authority, as the other engine reports it, so the scope's host field comes first.
    fields += [(b":authority", value) for name, value in headers if name == b"host"][:1]
    fields += [field for field in headers if field[0] != b"host"]
    return fields
