"""HTTP/1.1 response framing: the wire side of an HTTPCycle on an HTTP/1.1 connection.

:class:`ResponseFraming` is the part of the HTTP/1.1 connection that implements the
response half of :class:`~asgictl.protocols.http.cycle.CycleHost`. One response is
written at a time on a connection, so the framing state lives here, not per request.

Framing is decided when the first body message arrives, so that a small response
(start + a single body) leaves in ONE ``transport.write``: the head is held back until
then and joined with the body. A response without a Content-Length of the app's is
given one when its body is complete in the first message; otherwise it is sent chunked
(HTTP/1.1) or delimited by closing the connection (HTTP/1.0). Streamed pieces sent back
to back are held until the app yields to the loop (at most 64 KiB) and leave in one write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from asgictl.protocols.flow import FlowControlled
from asgictl.protocols.http.response import (
    CONNECTION,
    CONTENT_LENGTH,
    CONTINUE_100,
    CRLF,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    SPECIAL_HEADERS,
    STATUS_LINES,
    TRANSFER_ENCODING,
    chunk,
    status_line,
)

if TYPE_CHECKING:
    from asgictl.protocols.http.cycle import HTTPCycle
    from asgictl.protocols.state import ServerState

_KEEP_ALIVE_LINE = b"connection: keep-alive\r\n"
_CLOSE_LINE = b"connection: close\r\n"
_CHUNKED_LINE = b"transfer-encoding: chunked\r\n"
#: Streamed body bytes held back at most before a write (see ResponseFraming._buffer).
_FLUSH_AT = 64 * 1024


class ResponseFraming(FlowControlled):
    __slots__ = ("chunked", "flush_handle", "head_lines", "pending", "pending_size")

    state: ServerState

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        #: the response in progress is sent chunked
        self.chunked = False
        #: lines the held-back head has so far (the CR/LF check of _write_head)
        self.head_lines = 0
        #: streamed body pieces not written yet (see _buffer)
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.flush_handle: asyncio.Handle | None = None

    def write_continue(self, cycle: HTTPCycle) -> None:
        if self.transport is not None:
            self.transport.write(CONTINUE_100)

    def start_response(self, cycle: HTTPCycle, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        state = self.state
        head = [STATUS_LINES.get(status) or status_line(status), state.default_headers]
        length: int | None = None
        self.chunked = False
        for name, value in headers:
            if name in SPECIAL_HEADERS:
                lname = name  # the set holds lower-case names
            elif name.islower() or name.lower() not in SPECIAL_HEADERS:
                head += (name, b": ", value, CRLF)  # no field the server has a say in
                continue
            else:
                lname = name.lower()
            # Framing and connection fields, the server/date defaults.
            if lname == CONTENT_LENGTH:
                if status in NO_BODY_STATUSES:
                    continue
                length = int(value)
            elif lname == TRANSFER_ENCODING:
                # The server does the chunking; an app's chunked header is honoured,
                # any other coding of its own is left to the app (RFC 9112 6.1).
                if value.lower() == b"chunked":
                    self.chunked = True
                    continue
            elif lname == CONNECTION:
                if value.lower() == b"close":
                    cycle.keep_alive = False
                continue
            else:  # server or date: the app's replaces the default one
                head[1] = _without(head[1], lname)
            head += (name, b": ", value, CRLF)
        # Lines the head has so far (the status line, the defaults, one per field of the
        # app's); write_body checks the joined bytes against it.
        defaults = head[1]
        self.head_lines = (len(head) + 2) // 4 + (
            state.default_lines if defaults is state.default_headers else defaults.count(b"\n")
        )
        cycle.length_left = length
        cycle.head = head

    def body_length(self, cycle: HTTPCycle, size: int) -> None:
        if not self.chunked:
            cycle.head.append(b"content-length: %d\r\n" % size)
            self.head_lines += 1
            cycle.length_left = size

    def write_body(self, cycle: HTTPCycle, data: bytes, more: bool) -> None:
        head = cycle.head
        if head is not None:
            # The first body message: decide the framing and finish the head block.
            cycle.head = None
            lines = self.head_lines + 1  # and the blank line that ends the head
            if cycle.length_left is None and not self.chunked and cycle.status not in NO_BODY_STATUSES:
                if not more and not cycle.trailers:
                    head.append(b"content-length: %d\r\n" % len(data))
                    lines += 1
                    cycle.length_left = 0  # the whole body is this one piece
                elif cycle.scope["http_version"] == "1.0":
                    cycle.keep_alive = False  # the body ends when the connection closes
                else:
                    self.chunked = True
            if self.chunked:
                if cycle.scope["http_version"] == "1.0":
                    self.chunked = False
                    cycle.keep_alive = False
                else:
                    head.append(_CHUNKED_LINE)
                    lines += 1
            if cycle.expect_continue and cycle.more_body:
                # Answered without asking for the body the client is holding back: it
                # may send it or not, so the connection's next bytes cannot be trusted.
                cycle.keep_alive = False
            if not cycle.keep_alive:
                head.append(_CLOSE_LINE)
                lines += 1
            elif cycle.scope["http_version"] == "1.0":
                head.append(_KEEP_ALIVE_LINE)
                lines += 1
        if cycle.no_body:
            data = b""
        elif self.chunked:
            framed = chunk(data) if data else b""
            if not more and cycle.trailers == 0:
                framed += LAST_CHUNK
            data = framed
        if head is not None:
            head += (CRLF, data)
            payload = b"".join(head)
            # One scan of the head for the whole header block instead of a check per
            # header: a CR or LF inside a name or value (response splitting) shows up
            # as a line break too many.
            end = len(payload) - len(data)
            if payload.count(b"\n", 0, end) != lines or payload.count(b"\r", 0, end) != lines:
                cycle.response_started = False  # nothing was written: the app gets its 500
                raise RuntimeError("Invalid HTTP header: CR or LF in a response header")
            data = payload
        if more:
            if data:
                self._buffer(data)
        elif self.pending is None:
            if data:
                self.transport.write(data)  # the common case: nothing held back
        else:
            self.flush(data)

    def _buffer(self, data: bytes) -> None:
        """Hold a streamed piece until the app yields to the loop (or 64 KiB pile up):
        an app that sends many small chunks back to back then costs one write, not
        one system call per chunk, and nothing waits longer than one loop iteration."""
        pending = self.pending
        if pending is None:
            self.pending = [data]
            self.pending_size = len(data)
            self.flush_handle = self.loop.call_soon(self.flush, b"")
        else:
            pending.append(data)
            self.pending_size += len(data)
        if self.pending_size >= _FLUSH_AT:
            self.flush(b"")

    def flush(self, data: bytes = b"") -> None:
        """Write what is pending plus ``data``, in one write."""
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.pending_size = 0
            if self.flush_handle is not None:
                self.flush_handle.cancel()
                self.flush_handle = None
            if data:
                pending.append(data)
            data = b"".join(pending)
        transport = self.transport
        if data and not transport.is_closing():
            transport.write(data)

    def write_trailers(self, cycle: HTTPCycle, headers: Iterable[tuple[bytes, bytes]], more: bool) -> None:
        # Without chunked framing (HTTP/1.0, or a Content-Length of the app's) there is
        # no place for trailers on the wire: they are dropped, as RFC 9110 6.5 allows.
        if self.chunked and not cycle.no_body:
            first = cycle.trailers == 1
            lines = [b"0\r\n"] if first else []
            for name, value in headers:
                lines += (name, b": ", value, CRLF)
            block = b"".join(lines)
            expected = len(lines) // 4 + first
            if block.count(b"\n") != expected or block.count(b"\r") != expected:
                raise RuntimeError("Invalid HTTP trailer: CR or LF in a trailer field")
            self.flush(block + CRLF if not more else block)


def _without(block: bytes, name: bytes) -> bytes:
    prefix = name + b": "
    return b"".join(line + CRLF for line in block.split(CRLF) if line and not line.startswith(prefix))
