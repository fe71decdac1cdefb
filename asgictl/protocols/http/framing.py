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

The app's fields are held to RFC 9110's grammar (``fields.py``) as they are read: names
and values through the caches of checked ones; its Content-Length to one number
(``fields.content_length``). A file region goes through
``files.send_region`` (sendfile where the transport allows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING

from asgictl.protocols.flow import FlowControlled
from asgictl.protocols.http.fields import (
    BOTH_FRAMINGS,
    CONNECTION,
    CONTENT_LENGTH,
    KNOWN_NAMES,
    KNOWN_VALUES,
    TRANSFER_ENCODING,
    InvalidField,
    check_trailer_name,
    check_transfer_coding,
    content_length,
    count_line_breaks,
    invalid_block,
    learn_name,
    learn_value,
    list_tokens,
)
from asgictl.protocols.http.files import send_region
from asgictl.protocols.http.response import (
    CONTINUE_100,
    CRLF,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    STATUS_LINES,
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
    __slots__ = ("chunked", "flush_handle", "pending", "pending_size")

    state: ServerState

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        #: the response in progress is sent chunked
        self.chunked = False
        #: streamed body pieces not written yet (see _buffer)
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.flush_handle: asyncio.Handle | None = None

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def write_continue(self, cycle: HTTPCycle) -> None:
        if self.transport is not None:
            self.transport.write(CONTINUE_100)

    def start_response(self, cycle: HTTPCycle, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        state = self.state
        try:
            head = [STATUS_LINES[status], state.default_headers]
        except KeyError:
            head = [status_line(status), state.default_headers]
        no_body = status in NO_BODY_STATUSES
        length: int | None = None
        chunked = False
        keep_alive = cycle.keep_alive
        known = KNOWN_NAMES
        values = KNOWN_VALUES
        for name, value in headers:
            # Every name is a token (RFC 9110 5.1) and every value a field-value (5.5):
            # a cached one costs one lookup.
            try:
                kind = known[name]
            except KeyError:
                kind = learn_name(name)
            if kind:
                if kind == CONTENT_LENGTH:
                    # 1*DIGIT (content_length): nothing else to check in the value.
                    if length is None and value.isdigit():
                        length = int(value)
                        if no_body:
                            continue
                    else:
                        repeat = length is not None
                        length = content_length(value, length)
                        if repeat or no_body:
                            continue  # an identical repeat is folded
                    head += (name, b": ", value, CRLF)
                    continue
                if kind == TRANSFER_ENCODING:
                    check_transfer_coding(value)
                    chunked = True
                    continue
                if kind == CONNECTION:
                    if b"close" in list_tokens(value):
                        keep_alive = False
                    continue
                # server or date: the app's replaces the default one
                head[1] = _without(head[1], name.lower())
            # fields.check_value, inline (a call less per field)
            try:
                if value not in values:
                    learn_value(value)
            except TypeError:  # unhashable: a bytearray or memoryview, checked each time
                learn_value(value)
            head += (name, b": ", value, CRLF)
        if chunked and length is not None:
            raise InvalidField(BOTH_FRAMINGS)
        cycle.length_left = None if no_body else length
        self.chunked = chunked
        cycle.keep_alive = keep_alive
        cycle.head = head

    def body_length(self, cycle: HTTPCycle, size: int) -> None:
        if not self.chunked:
            cycle.head.append(b"content-length: %d\r\n" % size)
            cycle.length_left = size

    def write_body(self, cycle: HTTPCycle, data: bytes, more: bool) -> None:
        head = cycle.head
        if head is not None:
            # The first body message: decide the framing and finish the head block.
            cycle.head = None
            http10 = cycle.scope["http_version"] == "1.0"
            if cycle.length_left is None and not self.chunked and cycle.status not in NO_BODY_STATUSES:
                if not more and not cycle.trailers:
                    head.append(b"content-length: %d\r\n" % len(data))
                    cycle.length_left = 0  # the whole body is this one piece
                elif http10:
                    cycle.keep_alive = False  # the body ends when the connection closes
                else:
                    self.chunked = True
            if self.chunked:
                if http10:
                    self.chunked = False
                    cycle.keep_alive = False
                else:
                    head.append(_CHUNKED_LINE)
            if cycle.expect_continue and cycle.more_body:
                # Answered without asking for the body the client is holding back: it
                # may send it or not, so the connection's next bytes cannot be trusted.
                cycle.keep_alive = False
            if not cycle.keep_alive:
                head.append(_CLOSE_LINE)
            elif http10:
                head.append(_KEEP_ALIVE_LINE)
            head.append(CRLF)
        if cycle.no_body:
            data = b""
        elif self.chunked:
            framed = chunk(data) if data else b""
            if not more and cycle.trailers == 0:
                framed += LAST_CHUNK
            data = framed
        if head is not None:
            # Every piece of the head was checked as it was added (start_response); the
            # body joins it in the same copy.
            if data:
                head.append(data)
            data = b"".join(head)
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
                if KNOWN_NAMES.get(name) is None:
                    learn_name(name)
                check_trailer_name(name)
                lines += (name, b": ", value, CRLF)
            block = b"".join(lines)
            if count_line_breaks(block) != 2 * (len(lines) // 4 + first):
                raise invalid_block(block)
            self.flush(block + CRLF if not more else block)

    async def send_file(self, cycle: HTTPCycle, fd: int, offset: int, count: int) -> int:
        # The head (framing decided) and anything held back leave first, in one write.
        if cycle.head is not None and cycle.length_left is not None and not self.chunked:
            self.write_body(cycle, b"", False)  # Content-Length framing: written at once
        else:
            self.write_body(cycle, b"", True)
            self.flush()
        if not count:
            return 0
        transport = self.transport
        if self.chunked:
            transport.write(b"%x\r\n" % count)
        sent = await send_region(self, fd, offset, count)
        if sent == count and self.chunked and not transport.is_closing():
            transport.write(CRLF)
        return sent


def _without(block: bytes, name: bytes) -> bytes:
    prefix = name + b": "
    return b"".join(line + CRLF for line in block.split(CRLF) if line and not line.startswith(prefix))
