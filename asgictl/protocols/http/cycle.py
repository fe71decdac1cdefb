"""One HTTP request and its response, as the ASGI app sees them, whatever carries them.

An :class:`HTTPCycle` owns the app's ``receive`` and ``send`` callables for one request
and the ASGI semantics of its response, once for every HTTP version: the order of the
messages, no body for HEAD, 1xx, 204 and 304, the app's Content-Length held to what it
sends, trailers, file responses (pathsend, zerocopysend), ``http.disconnect`` (the
client left, or the server is going away), an app error turned into a 500 or a cut
response, a response the app abandoned, the access line and the response observer.

What goes on the wire is its host's: the object that carries the request (an HTTP/1.1
connection, an HTTP/2 stream) and implements :class:`CycleHost`. The host frames the
response (HTTP/1.1: status line, Content-Length or chunked, Connection, the head joined
with the first body in one write, the field grammar of ``fields.py``; HTTP/2: HEADERS,
DATA within the peer's windows, trailers, END_STREAM), feeds the request body in
(:meth:`HTTPCycle.feed_body`, ``more_body``, :meth:`HTTPCycle.on_disconnect`), sends file
regions, and decides what follows a complete response.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from asgictl.protocols.asgi import ClientDisconnected
from asgictl.protocols.http.response import NO_BODY_STATUSES

if TYPE_CHECKING:
    from asgictl.protocols.state import ServerState

logger = logging.getLogger("asgictl.error")

_DISCONNECT = {"type": "http.disconnect"}
#: The status logged for a request whose client left before any response was started
#: (nginx's "client closed request"; nothing was sent).
CLIENT_CLOSED_REQUEST = 499
_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())

__all__ = ["CLIENT_CLOSED_REQUEST", "ClientDisconnected", "CycleHost", "HTTPCycle"]


class CycleHost(Protocol):
    """What an :class:`HTTPCycle` needs from what carries its request.

    The attributes: ``state`` (the ServerState), ``loop``; ``read_eof`` (no more request
    bytes can arrive: receive() answers http.disconnect), ``read_paused`` (request body
    is held back until the app reads), ``write_paused`` (``send`` must ``await drain()``
    before the next message).

    Response methods, called in ASGI order for one cycle: ``start_response`` once (check
    the app's fields, set ``cycle.head`` to the held-back head and ``cycle.length_left``
    to the app's Content-Length, or None; raise InvalidField for a field the grammar
    refuses), then ``write_body`` for each body message (the data as the app sent it:
    the host drops it when ``cycle.no_body``, and sets ``cycle.head`` to None once the
    head is on its way), ``body_length`` when a file response knows its size first,
    ``send_file`` for a file region, and ``write_trailers`` when the app sends trailers.
    """

    state: ServerState
    loop: asyncio.AbstractEventLoop
    read_eof: bool
    read_paused: bool
    write_paused: bool

    def is_closing(self) -> bool:
        """The carrier takes no more bytes (the client left, or it is being closed)."""

    def resume_reading(self) -> None:
        """The app waits for request body: let the client send more."""

    async def drain(self) -> None:
        """Wait until the response may take more (write buffer, flow-control window)."""

    def write_continue(self, cycle: HTTPCycle) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body."""

    def start_response(self, cycle: HTTPCycle, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Check and hold the head of the response (``http.response.start``)."""

    def write_body(self, cycle: HTTPCycle, data: bytes, more: bool) -> None:
        """A body piece, the head with it if not written yet; raises RuntimeError for a head
        the host refuses (nothing written then: it sets ``cycle.response_started`` back)."""

    def body_length(self, cycle: HTTPCycle, size: int) -> None:
        """A file response: the body is ``size`` bytes (framed so if the framing allows)."""

    async def send_file(self, cycle: HTTPCycle, fd: int, offset: int, count: int) -> int:
        """The head (if held) and ``count`` bytes of the open file ``fd`` from ``offset``
        as the next body piece, after everything written before; returns the bytes sent
        (fewer only if the file ended or the carrier closed)."""

    def write_trailers(self, cycle: HTTPCycle, headers: Iterable[tuple[bytes, bytes]], more: bool) -> None:
        """Trailer fields (``http.response.trailers``), the last of the response unless ``more``."""

    def cycle_done(self, cycle: HTTPCycle) -> None:
        """The response of ``cycle`` is complete."""

    def answer(self, cycle: HTTPCycle, status: int, body: bytes) -> None:
        """A plain-text response of the server's own in place of the app's (nothing of
        the app's was written): 500 for an app error, 503 for a stop."""

    def cut(self, cycle: HTTPCycle, failed: bool) -> None:
        """The response cannot be completed: end it so the client cannot take it for
        complete (HTTP/1.1: close the connection after what was sent; HTTP/2: reset the
        stream). ``failed``: because of an app error (not a client that left or a stop)."""


class HTTPCycle:
    """The ASGI ``receive``/``send`` of one request, carried by ``conn`` (a CycleHost).

    ``run(app)`` runs the app; the host feeds the request body with :meth:`feed_body`
    and ``more_body = False`` (then :meth:`wake`), and reports a peer that went away with
    :meth:`on_disconnect`. ``send`` raises RuntimeError for a message out of order (or
    InvalidField, a RuntimeError, for a field the grammar refuses) and
    ClientDisconnected once the peer has gone.
    """

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
        "response_started",
        "response_complete",
        "length_left",
        "no_body",
        "trailers",
        "started_at",
    )

    def __init__(
        self,
        conn: CycleHost,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.conn = conn
        self.scope = scope
        #: the connection may carry another request after this one (HTTP/1.1's concern)
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
        #: the host's head, held back until the first body message (None once written)
        self.head: Any = None
        #: time.perf_counter() of the complete head, when timed (access log, metrics)
        self.started_at = 0.0
        # The rest of the response side (status, no_body, trailers, length_left) is set
        # by the start message: fewer stores per request, and nothing reads them before.

    # -------------------------------------------------------------------- from the host

    def feed_body(self, data: bytes) -> None:
        """``data``: request body bytes as they arrive (the host pauses reading while
        the app has not taken them)."""
        self.body = self.body + data if self.body else data
        self.wake()

    def on_disconnect(self) -> None:
        """The peer went away (or the request was cut): receive() answers
        http.disconnect, send() raises ClientDisconnected."""
        self.disconnected = True
        self.wake()

    def wake(self) -> None:
        """Resume a receive() or send() waiting for the host (body, drain, the end)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------------- receive

    async def receive(self) -> dict[str, Any]:
        """The ASGI ``receive``: ``http.request`` messages with the body as it arrives
        (sending ``100 Continue`` first when the client waits for it), then
        ``http.disconnect`` once the client has gone, the response is complete, or the
        server stops with the request read whole."""
        conn = self.conn
        if self.expect_continue:
            # The client waits for this before sending the body: send it only now that
            # the app asks for the body (RFC 9110 10.1.1).
            self.expect_continue = False
            if not self.response_started and not self.disconnected:
                conn.write_continue(self)
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
        """The ASGI ``send``: ``http.response.start``, ``.body``, ``.trailers``,
        ``.pathsend`` and ``.zerocopysend``, in the order the spec allows (RuntimeError
        otherwise), waiting while the host's write buffer is full."""
        if self.disconnected:
            # ASGI 2.4: the app learns that nobody is listening any more.
            raise ClientDisconnected("the client has disconnected")
        # The two messages of every response are handled inline (a call less each).
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            more = message.get("more_body", False)
            data = message.get("body", b"")
            left = self.length_left
            if left is not None and not self.no_body:
                left = self.length_left = left - len(data)
                if left < 0:
                    if self.head is not None:
                        self.response_started = False  # nothing was written: the app gets its 500
                    raise RuntimeError("Response content longer than Content-Length")
            self.conn.write_body(self, data, more)
            if not more and not self.trailers:
                self._finish()
            elif self.conn.write_paused and not self.disconnected:
                await self.conn.drain()
                if self.disconnected:  # cut while waiting (the client left, or --timeout-send)
                    raise ClientDisconnected("the client has disconnected")
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            status = message["status"]
            self.status = status
            self.no_body = status in NO_BODY_STATUSES or self.scope["method"] == "HEAD"
            # 0: no trailers; 1: announced by the app; 2: the first trailers were sent
            self.trailers = 1 if message.get("trailers") else 0
            self.conn.start_response(self, status, message.get("headers", ()))
            self.response_started = True
        elif kind == "http.response.trailers":
            if not self.response_started or not self.trailers or self.head is not None:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            more = message.get("more_trailers", False)
            if not self.disconnected:
                self.conn.write_trailers(self, message.get("headers", ()), more)
                self.trailers = 2
            if not more:
                self._finish()
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        elif kind == "http.response.zerocopysend":
            await self._zerocopysend(message)
        else:
            raise RuntimeError(_unexpected(kind, self.response_complete))

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
        file ``fd`` from ``offset``: framed like a body message, sent by the host's
        ``send_file`` (zero-copy where the transport allows)."""
        if self.response_complete:
            raise RuntimeError(_unexpected("http.response.body", True))
        conn = self.conn
        if self.head is not None and self.length_left is None and not more and not self.trailers:
            # Known size: framed by Content-Length so the connection stays reusable.
            conn.body_length(self, count)
        if self.no_body or self.disconnected:
            count = 0
        elif self.length_left is not None:
            if count > self.length_left:
                if self.head is not None:
                    self.response_started = False  # nothing was written: the app gets its 500
                raise RuntimeError("Response content longer than Content-Length")
            self.length_left -= count
        if not self.disconnected:
            sent = await conn.send_file(self, fd, offset, count)
            if sent < count and not self.disconnected and not conn.is_closing():
                # The file ended before the announced size: the framing is broken.
                raise RuntimeError(f"file ended after {sent} of {count} bytes")
        if self.disconnected or conn.is_closing():
            raise ClientDisconnected("the client disconnected during a file response")
        if not more:
            conn.write_body(self, b"", False)  # the end of the framing (last chunk, END_STREAM)
            if not self.trailers:
                self._finish()
        elif conn.write_paused:
            await conn.drain()

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
        conn = self.conn
        state = conn.state
        if state.timed:  # the access log or the response observer is on
            access = state.access_log
            if access is not None:
                access.response(self.scope, self.status, self.started_at, self.keep_alive)
            observe = state.on_response
            if observe is not None:
                observe(self.status, perf_counter() - self.started_at)
        conn.cycle_done(self)

    def _record(self, status: int, disconnected: bool) -> None:
        """The access line and the observer's count of a response the server ended."""
        state = self.conn.state
        access = state.access_log
        if access is not None:
            access.response(self.scope, status, self.started_at, False, disconnected)
        observe = state.on_response
        if observe is not None:
            observe(status, perf_counter() - self.started_at, disconnected)

    def _abandoned(self) -> None:
        """The app stopped before its response was complete because the connection is
        over for it: the client left (or half-closed), or the server is going away and
        told it so. Not an error of the app: the response is cut where it is (if none
        was started while the server goes away, the client gets 503), and the access
        line and the metrics record it, as disconnected when the client left."""
        if self.response_complete:
            return
        conn = self.conn
        client_left = self.disconnected or conn.read_eof or conn.is_closing()
        self.response_complete = True
        if self.response_started and self.head is None:  # the head went out
            status = self.status
            conn.cut(self, False)
        elif client_left:
            status = CLIENT_CLOSED_REQUEST
            conn.cut(self, False)
        else:
            status = 503
            self.response_started = True
            conn.answer(self, 503, b"Service Unavailable")
        self._record(status, client_left)

    def _failed(self, exc: BaseException | None) -> None:
        """The app raised ``exc`` (None: it returned without a complete response): a 500
        if nothing was written, else the response is cut."""
        conn = self.conn
        if isinstance(exc, asyncio.CancelledError):
            if not conn.is_closing():
                conn.cut(self, False)
            return
        if exc is not None:
            logger.error("Exception in ASGI application\n", exc_info=exc)
        if self.disconnected or conn.is_closing():
            return
        if not self.response_started:
            self.response_started = self.response_complete = True
            conn.answer(self, 500, b"Internal Server Error")
            self._record(500, False)  # the 500 counts as a response, like the app's own
        elif not self.response_complete:
            # The head is gone: the only honest signal left is to end the response
            # short, after what the app did send.
            self.response_complete = True
            conn.cut(self, True)

    # -------------------------------------------------------------------------- running

    async def run(self, app: Any) -> None:
        """Run ``app`` for this request (the task of state.start_task): an app error
        or an incomplete response becomes a 500, or a cut response after its head."""
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
                self._failed(exc)
                if not isinstance(exc, Exception):
                    raise
        else:
            if not self.response_complete:
                if self.told_disconnect or self.disconnected:
                    self._abandoned()  # it stopped because it heard http.disconnect
                elif not self.response_started:
                    logger.error("ASGI callable returned without starting response.")
                    self._failed(None)
                else:
                    logger.error("ASGI callable returned without completing response.")
                    self._failed(None)
        finally:
            state = self.conn.state
            state.active_requests -= 1
            state.tasks.pop(self, None)  # kept there by state.start_task


def _only_disconnects(exc: BaseException) -> bool:
    """``exc`` is send()'s ClientDisconnected, or a group of nothing else (a task group
    around the app's streaming, e.g. anyio's)."""
    if isinstance(exc, ClientDisconnected):
        return True
    if isinstance(exc, _EXCEPTION_GROUP):
        return all(_only_disconnects(inner) for inner in exc.exceptions)  # type: ignore[attr-defined]
    return False


def _unexpected(kind: str, complete: bool) -> str:
    if complete:
        return f"Unexpected ASGI message '{kind}' sent, after response already completed."
    return f"Unexpected ASGI message '{kind}' sent, in the wrong order."
