"""One HTTP request and its response, as the ASGI app sees them.

An :class:`HTTPCycle` owns the app's ``receive`` and ``send`` callables for one request.
It is the same for every parser: the parser adapters feed it request body through its
connection, and it writes the response through the connection's transport.

Framing of the response is decided when the first body message arrives, so that a small
response (start + a single body) leaves in ONE ``transport.write``: the head is held back
until then and joined with the body. A response without a Content-Length of the app's is
given one when its body is complete in the first message; otherwise it is sent chunked
(HTTP/1.1) or delimited by closing the connection (HTTP/1.0).
"""

from __future__ import annotations

import builtins
import logging
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any

from asgictl.protocols.http.fields import (
    CONNECTION,
    CONTENT_LENGTH,
    KNOWN_NAMES,
    TRANSFER_ENCODING,
    InvalidField,
    check_trailer_name,
    count_line_breaks,
    invalid_block,
    learn_name,
    list_tokens,
)
from asgictl.protocols.http.response import (
    CONTINUE_100,
    CRLF,
    LAST_CHUNK,
    NO_BODY_STATUSES,
    STATUS_LINES,
    chunk,
    simple_response,
    status_line,
)

if TYPE_CHECKING:
    import asyncio

    from asgictl.protocols.http.connection import HTTPConnection

logger = logging.getLogger("asgictl.error")

_DISCONNECT = {"type": "http.disconnect"}
#: The access-log record's extra for a response the client did not wait for.
#: The status logged for a request whose client left before any response was started
#: (nginx's "client closed request"; nothing was sent).
CLIENT_CLOSED_REQUEST = 499
_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())
_KEEP_ALIVE_LINE = b"connection: keep-alive\r\n"
_CLOSE_LINE = b"connection: close\r\n"
_CHUNKED_LINE = b"transfer-encoding: chunked\r\n"
#: Streamed body bytes held back at most before a write (see HTTPCycle._buffer).
_FLUSH_AT = 64 * 1024


class ClientDisconnected(OSError):
    """Raised by ``send`` once the client has gone (ASGI spec 2.4)."""


class HTTPCycle:
    __slots__ = (
        "conn",
        "scope",
        "keep_alive",
        # request side
        "body",
        "more_body",
        "body_delivered",
        "body_size",
        "expect_continue",
        "waiter",
        "disconnected",
        "told_disconnect",
        # response side
        "status",
        "head",
        "head_lines",
        "response_started",
        "response_complete",
        "chunked",
        "length_left",
        "no_body",
        "trailers",
        "started_at",
        "pending",
        "pending_size",
        "flush_handle",
    )

    def __init__(
        self,
        conn: HTTPConnection,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = b""
        self.more_body = True
        self.body_delivered = False
        self.body_size = 0
        self.expect_continue = expect_continue
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        #: receive() gave the app http.disconnect (it may then stop mid-response)
        self.told_disconnect = False
        self.response_started = False
        self.response_complete = False
        #: the head block, held back until the first body message (None once written)
        self.head: list[bytes] | None = None
        #: time.perf_counter() of the complete head, when timed (access log, metrics)
        self.started_at = 0.0
        #: streamed body pieces not written yet (see _buffer)
        self.pending: list[bytes] | None = None
        # The rest of the response side (status, framing, head_lines, ...) is set by
        # _start: one request costs fewer stores, and nothing reads them before it.

    # ------------------------------------------------------------------ from the parser

    def feed_body(self, data: bytes) -> None:
        self.body = self.body + data if self.body else data
        self.wake()

    def on_disconnect(self) -> None:
        self.disconnected = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------------- receive

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if self.expect_continue:
            # The client waits for this before sending the body: send it only now that
            # the app asks for the body (RFC 9110 10.1.1).
            self.expect_continue = False
            if not self.response_started and not self.disconnected and conn.transport is not None:
                conn.transport.write(CONTINUE_100)
        while not (self.disconnected or self.response_complete):
            if self.body or (self.more_body is False and not self.body_delivered):
                break
            if conn.read_eof or (self.more_body is False and conn.state.shutting_down):
                # The client sent EOF: nothing more can arrive, so it has gone (or
                # half-closed; the response can still be written either way). Or the
                # server is going away (stop, reload, recycle) and the request is all
                # read: what the app waits for now, as a streaming response does, is
                # the end, so it hears it now rather than at the shutdown deadline.
                self.told_disconnect = True
                return _DISCONNECT
            conn.resume_reading()
            self.waiter = conn.loop.create_future()
            await self.waiter
        if self.disconnected or self.response_complete:
            self.told_disconnect = True
            return _DISCONNECT
        body = self.body
        self.body = b""
        if not self.more_body:
            self.body_delivered = True
        elif len(body) and conn.read_paused:
            conn.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    # ---------------------------------------------------------------------------- send

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected:
            # ASGI 2.4: the app learns that nobody is listening any more.
            raise ClientDisconnected("the client has disconnected")
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            data = message.get("body", b"")
            more = message.get("more_body", False)
            self._write_body(data, more)
            if not more and not self.trailers:
                self._finish()
            elif self.conn.write_paused and not self.disconnected:
                await self.conn.drain()
                if self.disconnected:  # cut while waiting (the client left, or --timeout-send)
                    raise ClientDisconnected("the client has disconnected")
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            self._start(message)
        elif kind == "http.response.trailers":
            if not self.response_started or not self.trailers or self.head is not None:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            self._write_trailers(message)
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        elif kind == "http.response.zerocopysend":
            await self._zerocopysend(message)
        else:
            raise RuntimeError(_unexpected(kind, self.response_complete))

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        state = self.conn.state
        default_headers = state.default_headers
        head = [STATUS_LINES.get(status) or status_line(status), default_headers]
        no_body = status in NO_BODY_STATUSES
        length: int | None = None
        chunked = False
        keep_alive = self.keep_alive
        known = KNOWN_NAMES
        for name, value in message.get("headers", ()):
            # Every name is a token (RFC 9110 5.1): a cached one costs this lookup only.
            kind = known.get(name)
            if kind is None:
                kind = learn_name(name)
            if kind:
                if kind == CONTENT_LENGTH:
                    # 1*DIGIT and one value (RFC 9110 8.6): "+2", "1_0" or "2, 3" would be
                    # read differently by each client; an identical repeat is folded.
                    if not value.isdigit():
                        raise InvalidField(f"Invalid Content-Length {value!r}: not 1*DIGIT (RFC 9110 8.6)")
                    if length is not None:
                        if int(value) != length:
                            raise InvalidField("Differing Content-Length values (RFC 9110 8.6)")
                        continue
                    length = int(value)
                    if no_body:
                        continue
                elif kind == TRANSFER_ENCODING:
                    # The server does the chunking (RFC 9112 6.1): an app's "chunked" asks
                    # for it; any other coding could not be framed honestly.
                    if list_tokens(value) != [b"chunked"]:
                        raise InvalidField(f"Unsupported response Transfer-Encoding {value!r}")
                    chunked = True
                    continue
                elif kind == CONNECTION:
                    if b"close" in list_tokens(value):
                        keep_alive = False
                    continue
                else:  # server or date: the app's replaces the default one
                    default_headers = head[1] = _without(head[1], name.lower())
            head += (name, b": ", value, CRLF)
        if chunked and length is not None:
            raise InvalidField("Content-Length and Transfer-Encoding in one response (RFC 9112 6.2)")
        if no_body:
            length = None
        # Lines the head has so far; _write_body checks the joined bytes against it.
        self.head_lines = (
            1
            + (len(head) - 2) // 4
            + (
                state.default_lines
                if default_headers is state.default_headers
                else default_headers.count(b"\n")
            )
        )
        self.status = status
        self.no_body = no_body or self.scope["method"] == "HEAD"
        self.trailers = 1 if message.get("trailers", False) else 0
        self.length_left = length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.head = head
        self.response_started = True

    def _write_body(self, data: bytes, more: bool) -> None:
        if self.response_complete:
            raise RuntimeError(_unexpected("http.response.body", True))
        if self.disconnected:
            return
        head = self.head
        if head is not None:
            # The first body message: decide the framing and finish the head block.
            self.head = None
            pieces = len(head)
            http10 = self.scope["http_version"] == "1.0"
            if self.length_left is None and not self.chunked and self.status not in NO_BODY_STATUSES:
                if not more and not self.trailers:
                    head.append(b"content-length: %d\r\n" % len(data))
                    self.length_left = len(data)
                elif http10:
                    self.keep_alive = False  # the body ends when the connection closes
                else:
                    self.chunked = True
            if self.chunked:
                if http10:
                    self.chunked = False
                    self.keep_alive = False
                else:
                    head.append(_CHUNKED_LINE)
            if self.expect_continue and self.more_body:
                # Answered without asking for the body the client is holding back: it
                # may send it or not, so the connection's next bytes cannot be trusted.
                self.keep_alive = False
            if not self.keep_alive:
                head.append(_CLOSE_LINE)
            elif http10:
                head.append(_KEEP_ALIVE_LINE)
            head.append(CRLF)
            # The head's lines: the app's headers and the default ones counted in
            # _start, plus one per piece added just above (the blank line included).
            lines = self.head_lines + len(head) - pieces
        if self.no_body:
            data = b""
        elif self.length_left is not None:
            self.length_left -= len(data)
            if self.length_left < 0:
                if head is not None:
                    self.response_started = False  # nothing was written: the app gets its 500
                raise RuntimeError("Response content longer than Content-Length")
        if self.chunked and not self.no_body:
            framed = chunk(data) if data else b""
            if not more and self.trailers == 0:
                framed += LAST_CHUNK
            data = framed
        if head is not None:
            block = b"".join(head)
            # One C-level scan of the whole block instead of a check per field: a CR,
            # LF or other control byte in a value (RFC 9110 5.5) is one more than the
            # CR and LF that end each of the block's lines.
            if count_line_breaks(block) != 2 * lines:
                self.response_started = False  # nothing was written: the app gets its 500
                raise invalid_block(block)
            data = block + data if data else block
        if more:
            if data:
                self._buffer(data)
        elif self.pending is None:
            if data:
                self.conn.transport.write(data)  # the common case: nothing held back
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
            self.flush_handle = self.conn.loop.call_soon(self.flush, b"")
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
        transport = self.conn.transport
        if data and not transport.is_closing():
            transport.write(data)

    def _write_trailers(self, message: dict[str, Any]) -> None:
        more = message.get("more_trailers", False)
        if self.chunked and not self.no_body and not self.disconnected:
            first = self.trailers == 1
            self.trailers = 2
            lines = [b"0\r\n"] if first else []
            for name, value in message.get("headers", ()):
                if KNOWN_NAMES.get(name) is None:
                    learn_name(name)
                check_trailer_name(name)
                lines += (name, b": ", value, CRLF)
            block = b"".join(lines)
            if count_line_breaks(block) != 2 * (len(lines) // 4 + first):
                raise invalid_block(block)
            self.flush(block + CRLF if not more else block)
        # Without chunked framing (HTTP/1.0, or a Content-Length of the app's) there is
        # no place for trailers on the wire: they are dropped, as RFC 9110 6.5 allows.
        if not more:
            self._finish()

    async def _pathsend(self, path: str) -> None:
        if self.head is None:
            raise RuntimeError(_unexpected("http.response.pathsend", self.response_complete))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            await self._send_file(fd, 0, os.fstat(fd).st_size, False)
        finally:
            os.close(fd)

    async def _zerocopysend(self, message: dict[str, Any]) -> None:
        if not self.response_started:
            raise RuntimeError(_unexpected("http.response.zerocopysend", self.response_complete))
        fd = message["file"].fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)  # the spec: from the file's position
        count = message.get("count")
        if count is None:
            count = max(os.fstat(fd).st_size - offset, 0)
        await self._send_file(fd, offset, count, message.get("more_body", False))

    async def _send_file(self, fd: int, offset: int, count: int, more: bool) -> None:
        """The body (or, with ``more``, the next part of it) is ``count`` bytes of the
        file ``fd`` from ``offset``: framed like a body message, sent by the connection's
        ``send_file`` (zero-copy where the transport allows)."""
        if self.response_complete:
            raise RuntimeError(_unexpected("http.response.body", True))
        if self.head is not None and self.length_left is None and not self.chunked:
            if not more and not self.trailers:
                # Known size: framed by Content-Length so the connection stays reusable.
                self.head.append(b"content-length: %d\r\n" % count)
                self.head_lines += 1
                self.length_left = count
        # The head (decided framing) and anything held back leave first, in one write.
        if self.head is not None and self.length_left is not None and not self.chunked:
            self._write_body(b"", False)  # Content-Length framing: written at once
        else:
            self._write_body(b"", True)
            self.flush()
        if count and not self.no_body and not self.disconnected:
            if self.length_left is not None:
                if count > self.length_left:
                    raise RuntimeError("Response content longer than Content-Length")
                self.length_left -= count
            conn = self.conn
            if self.chunked:
                conn.transport.write(b"%x\r\n" % count)
            sent = await conn.send_file(fd, offset, count)
            if sent < count:
                if not self.disconnected and not conn.transport.is_closing():
                    # The file ended before the announced size: the framing is broken.
                    raise RuntimeError(f"file ended after {sent} of {count} bytes")
            elif self.chunked:
                conn.transport.write(CRLF)
        if self.disconnected or self.conn.transport.is_closing():
            raise ClientDisconnected("the client disconnected during a file response")
        if not more:
            self._write_body(b"", False)
            if not self.trailers:
                self._finish()
        elif self.conn.write_paused:
            await self.conn.drain()

    def _finish(self) -> None:
        if self.response_complete:
            return
        if self.length_left and not self.no_body and not self.disconnected:
            # Fewer bytes than the app's Content-Length promised: the client would wait
            # forever for the rest, so the connection cannot be reused.
            logger.error("Response content shorter than Content-Length")
            self.keep_alive = False
        self.response_complete = True
        if self.waiter is not None:  # a receive() waiting for body gets http.disconnect
            self.wake()
        state = self.conn.state
        access = state.access_log
        if access is not None:
            access.response(self.scope, self.status, self.started_at, self.keep_alive)
        observe = state.on_response
        if observe is not None:
            observe(self.status, perf_counter() - self.started_at)
        self.conn.cycle_done(self)

    def _abandoned(self) -> None:
        """The app stopped before its response was complete because the connection is
        over for it: the client left (or half-closed), or the server is going away and
        told it so. Not an error of the app: the response is cut where it is (if none
        was started while the server goes away, the client gets 503), and the access
        line and the metrics record it, as disconnected when the client left."""
        if self.response_complete:
            return
        conn = self.conn
        transport = conn.transport
        client_left = self.disconnected or conn.read_eof or transport.is_closing()
        self.response_complete = True
        if self.response_started and self.head is None:  # the head went out
            status = self.status
            self.flush()
        elif client_left:
            status = CLIENT_CLOSED_REQUEST
        else:
            status = 503
            self.response_started = True
            transport.write(simple_response(503, b"Service Unavailable", conn.state.default_headers))
        state = conn.state
        access = state.access_log
        if access is not None:
            access.response(self.scope, status, self.started_at, False, client_left)
        observe = state.on_response
        if observe is not None:
            observe(status, perf_counter() - self.started_at, client_left)
        conn.closing = True
        transport.close()

    # -------------------------------------------------------------------------- running

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if _only_disconnects(exc):
                # The app let send()'s ClientDisconnected escape (ASGI 2.4): the client
                # left, which is no error of the app's nor the server's.
                logger.debug(
                    'ASGI app stopped: the client disconnected ("%s %s")',
                    self.scope["method"],
                    self.scope["path"],
                )
                self._abandoned()
            else:
                self.conn.app_failed(self, exc)
                if not isinstance(exc, Exception):
                    raise
        else:
            if not self.response_complete:
                if self.told_disconnect or self.disconnected:
                    self._abandoned()  # it stopped because it heard http.disconnect
                elif not self.response_started:
                    logger.error("ASGI callable returned without starting response.")
                    self.conn.app_failed(self, None)
                else:
                    logger.error("ASGI callable returned without completing response.")
                    self.conn.app_failed(self, None)
        finally:
            self.conn.state.active_requests -= 1


def _only_disconnects(exc: BaseException) -> bool:
    """``exc`` is send()'s ClientDisconnected, or a group of nothing else (a task group
    around the app's streaming, e.g. anyio's)."""
    if isinstance(exc, ClientDisconnected):
        return True
    if isinstance(exc, _EXCEPTION_GROUP):
        return all(_only_disconnects(inner) for inner in exc.exceptions)  # type: ignore[attr-defined]
    return False


def _without(block: bytes, name: bytes) -> bytes:
    prefix = name + b": "
    return b"".join(line + CRLF for line in block.split(CRLF) if line and not line.startswith(prefix))


def _unexpected(kind: str, complete: bool) -> str:
    if complete:
        return f"Unexpected ASGI message '{kind}' sent, after response already completed."
    return f"Unexpected ASGI message '{kind}' sent, in the wrong order."
