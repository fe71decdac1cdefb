"""One HTTP/2 stream as the host of an HTTPCycle (or of a WebSocket over HTTP/2).

:class:`H2Stream` implements :class:`~asgictl.protocols.http.cycle.CycleHost` for one
stream: the response head becomes a HEADERS frame (``:status`` and the fields, no
connection-specific ones, RFC 9113 8.2.2), the body DATA frames within the peer's
stream and connection windows and frame size, trailers a last HEADERS frame with
END_STREAM. What the windows do not take waits in the stream's outbox, and ``send``
waits (``drain``) until it is gone: a peer that reads slowly holds the app back instead
of making the server buffer without bound. Request body is acknowledged (WINDOW_UPDATE)
as the app reads it, so the peer can have at most a window's worth in flight.

The app's fields are held to the same grammar and framing rules as on HTTP/1.1
(``fields.py``: token names, field values, one Content-Length, only ``chunked`` as a
Transfer-Encoding), then lower-cased; the fields that belong to one HTTP/1.1 connection
are dropped. A file response is read (``files.copy_region``: on the loop or in the
executor, as for HTTP/1.1) into DATA frames within the windows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from asgictl.protocols.http.fields import (
    BOTH_FRAMINGS,
    CONNECTION,
    CONTENT_LENGTH,
    KNOWN_NAMES,
    TRANSFER_ENCODING,
    InvalidField,
    check_trailer_name,
    check_transfer_coding,
    check_value,
    check_values,
    content_length,
    learn_name,
)
from asgictl.protocols.http.files import copy_region
from asgictl.protocols.http.response import NO_BODY_STATUSES
from asgictl.protocols.http2.engine import CANCEL, INTERNAL_ERROR

if TYPE_CHECKING:
    from asgictl.protocols.http.cycle import HTTPCycle
    from asgictl.protocols.http2.connection import HTTP2Connection
    from asgictl.protocols.state import ServerState

#: Fields that mean something only to one HTTP/1.1 connection: never in HTTP/2.
CONNECTION_FIELDS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_STATUS = {code: str(code).encode("ascii") for code in range(100, 600)}
_CONTINUE = [(b":status", b"100")]


class H2Stream:
    __slots__ = (
        "app_done",
        "conn",
        "cycle",
        "drain_waiter",
        "end_after",
        "loop",
        "outbox",
        "received",
        "request_complete",
        "reset",
        "state",
        "stalled_since",
        "stream_id",
        "trailers_out",
        "tunnel",
        "unacked",
        "body_mark",
    )

    def __init__(self, conn: HTTP2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.state: ServerState = conn.state
        self.loop = conn.loop
        self.cycle: Any = None
        #: body not sent yet (the windows were closed), and END_STREAM after it
        self.outbox: list[bytes] = []
        self.end_after = False
        #: trailer fields waiting for the outbox to empty
        self.trailers_out: list[tuple[bytes, bytes]] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        #: request body bytes received, and those the app consumed but not acknowledged
        self.received = 0
        self.unacked = 0
        self.request_complete = False
        #: the app's response is complete (on the wire or in the outbox)
        self.app_done = False
        #: the stream was reset (by either side): nothing more goes out
        self.reset = False
        #: since when the outbox waits for a window (the send deadline)
        self.stalled_since: float | None = None
        #: (bytes received, when) the clock saw last (the body-read deadline)
        self.body_mark: tuple[int, float] | None = None
        #: a WebSocket over this stream (RFC 8441): its StreamTransport
        self.tunnel: Any = None

    # ------------------------------------------------------------ CycleHost: reading

    read_eof = False

    @property
    def read_paused(self) -> bool:
        return self.unacked > 0

    def resume_reading(self) -> None:
        """The app took what was received: give the peer its window back."""
        if not self.reset:
            self.give_back()

    def give_back(self) -> None:
        """WINDOW_UPDATE for the body received and not acknowledged yet (when the app
        read it, or when the stream is over: the connection's window must not shrink)."""
        size = self.unacked
        if size:
            self.unacked = 0
            self.conn.acknowledge(self.stream_id, size)

    def body_received(self, data: bytes, flow_length: int) -> None:
        self.received += len(data)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.app_done:
            # Nobody will read it: hand the window back at once.
            self.conn.acknowledge(self.stream_id, flow_length)
            return
        self.unacked += flow_length
        cycle.feed_body(data)

    # ------------------------------------------------------------ CycleHost: writing

    @property
    def write_paused(self) -> bool:
        return bool(self.outbox) or self.conn.write_paused

    async def drain(self) -> None:
        conn = self.conn
        while (self.outbox or conn.write_paused) and not self.reset and not conn.transport.is_closing():
            if self.outbox:
                if self.drain_waiter is None:
                    self.drain_waiter = self.loop.create_future()
                await asyncio.shield(self.drain_waiter)
            else:
                await conn.drain()

    def release_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def write_continue(self, cycle: HTTPCycle) -> None:
        if not self.reset:
            self.conn.send_headers(self.stream_id, _CONTINUE, False)

    def start_response(self, cycle: HTTPCycle, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        fields = [(b":status", _STATUS.get(status) or _bad_status(status))]
        length: int | None = None
        chunked = False
        defaults = self.state.h2_default_fields
        no_body = status in NO_BODY_STATUSES
        known = KNOWN_NAMES
        for name, value in headers:
            kind = known.get(name)
            if kind is None:
                kind = learn_name(name)
            if kind:
                if kind == CONTENT_LENGTH:
                    repeat = length is not None
                    length = content_length(value, length)
                    if repeat or no_body:
                        continue  # an identical repeat is folded
                elif kind == TRANSFER_ENCODING:
                    check_transfer_coding(value)  # asks for framing, which HTTP/2 does
                    chunked = True
                    continue
                elif kind == CONNECTION:
                    continue
                else:  # server or date: the app's replaces the default one
                    lower = name.lower()
                    defaults = [field for field in defaults if field[0] != lower]
            name = name.lower()
            if name in CONNECTION_FIELDS:
                continue
            check_value(value)
            fields.append((name, value))
        if chunked and length is not None:
            raise InvalidField(BOTH_FRAMINGS)
        fields += defaults
        cycle.length_left = None if no_body else length
        cycle.head = fields

    def body_length(self, cycle: HTTPCycle, size: int) -> None:
        cycle.head.append((b"content-length", b"%d" % size))
        cycle.length_left = size

    def write_body(self, cycle: HTTPCycle, data: bytes, more: bool) -> None:
        if self.reset:
            return
        last = not more and not cycle.trailers
        head = cycle.head
        if head is not None:
            cycle.head = None
            if (
                not more
                and not cycle.trailers
                and cycle.length_left is None
                and cycle.status not in NO_BODY_STATUSES
            ):
                head.append((b"content-length", b"%d" % len(data)))
                cycle.length_left = 0
            if cycle.no_body:
                data = b""
            self.conn.send_headers(self.stream_id, head, last and not data)
            if last and not data:
                return
        elif cycle.no_body:
            data = b""
        if data or last:
            self.outbox.append(data)
            self.end_after = last
            self.pump()

    def write_trailers(self, cycle: HTTPCycle, headers: Iterable[tuple[bytes, bytes]], more: bool) -> None:
        if self.reset:
            return
        fields = self.trailers_out or []
        values = []
        for name, value in headers:
            if KNOWN_NAMES.get(name) is None:
                learn_name(name)
            check_trailer_name(name)
            fields.append((name.lower(), value))
            values.append(value)
        check_values(values)
        self.trailers_out = fields
        if not more:
            if cycle.head is not None:  # trailers right after the head: no DATA at all
                self.conn.send_headers(self.stream_id, cycle.head, False)
                cycle.head = None
            self.end_after = True
            self.pump()

    def pump(self) -> None:
        """Send what the windows take of the outbox (then the trailers or END_STREAM)."""
        conn = self.conn
        outbox = self.outbox
        stream_id = self.stream_id
        while outbox:
            data = outbox[0]
            window = conn.window(stream_id)
            if window <= 0 and data:
                if self.stalled_since is None:
                    self.stalled_since = self.loop.time()
                return
            if len(data) > window:
                outbox[0] = data[window:]
                conn.send_data(stream_id, data[:window], False)
                continue
            del outbox[0]
            conn.send_data(stream_id, data, self.end_after and not outbox and self.trailers_out is None)
        self.stalled_since = None
        if self.end_after and self.trailers_out is not None:
            conn.send_headers(stream_id, self.trailers_out, True)
            self.trailers_out = None
        self.release_drain()
        if self.tunnel is not None:
            self.tunnel.window_opened()
        if self.app_done:
            conn.stream_finished(self)

    # ------------------------------------------------------------ CycleHost: the end

    def cycle_done(self, cycle: HTTPCycle) -> None:
        self.app_done = True
        if not self.outbox:
            self.conn.stream_finished(self)

    def is_closing(self) -> bool:
        return self.reset or self.conn.transport.is_closing()

    async def send_file(self, cycle: HTTPCycle, fd: int, offset: int, count: int) -> int:
        if cycle.head is not None:
            self.write_body(cycle, b"", True)  # HEADERS now, the body in DATA below
        if not count or self.reset:
            return 0
        return await copy_region(self, fd, offset, count, self._send_piece)

    def _send_piece(self, data: bytes) -> None:
        self.outbox.append(data)
        self.end_after = False
        self.pump()

    def answer(self, cycle: HTTPCycle, status: int, body: bytes) -> None:
        self.respond(status, body)

    def cut(self, cycle: HTTPCycle, failed: bool) -> None:
        self.cancel(INTERNAL_ERROR if failed else CANCEL)

    def send_raw(self, data: bytes, end: bool) -> None:
        """DATA of a tunnel (a WebSocket's frames), END_STREAM after it if ``end``."""
        self.outbox.append(data)
        if end:
            self.end_after = True
            self.app_done = True
        self.pump()

    def respond(self, status: int, body: bytes) -> None:
        """A plain-text response of the server's own (an error), complete at once."""
        fields = [
            (b":status", _STATUS[status]),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            *self.state.h2_default_fields,
        ]
        self.app_done = True
        self.conn.send_headers(self.stream_id, fields, False)
        self.outbox.append(body)
        self.end_after = True
        self.pump()

    def gone(self) -> None:
        """The stream ended under the app: reset by the client, or the connection lost."""
        self.give_back()
        self.reset = True
        self.outbox.clear()
        self.release_drain()
        if self.cycle is not None:
            self.cycle.on_disconnect()
        if self.tunnel is not None:
            self.tunnel.connection_lost()

    def cancel(self, code: int = CANCEL) -> None:
        """Reset the stream from this side (RST_STREAM ``code``); the app sees a disconnect."""
        if not self.reset:
            self.give_back()
            self.reset = True
            self.outbox.clear()
            self.conn.reset_stream(self.stream_id, code)
        self.release_drain()
        if self.cycle is not None:
            self.cycle.on_disconnect()
        if self.tunnel is not None:
            self.tunnel.connection_lost()


def _bad_status(status: int) -> bytes:
    raise ValueError(f"invalid HTTP status code {status!r}")
