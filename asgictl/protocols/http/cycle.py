"""One HTTP request and its response, as the ASGI app sees them, whatever carries them.

An :class:`HTTPCycle` owns the app's ``receive`` and ``send`` callables for one request
and the ASGI semantics of its response, once for every HTTP version: the order of the
messages, no body for HEAD, 1xx, 204 and 304, the app's Content-Length held to what it
sends, trailers, pathsend, ``http.disconnect``, an app error turned into a 500 or a cut
response, the access log and the response observer.

What goes on the wire is its host's: the object that carries the request (an HTTP/1.1
connection, an HTTP/2 stream) and implements :class:`CycleHost`. The host frames the
response (HTTP/1.1: status line, Content-Length or chunked, Connection, the head joined
with the first body in one write; HTTP/2: HEADERS, DATA within the peer's windows,
trailers, END_STREAM), feeds the request body in (:meth:`HTTPCycle.feed_body`, ``more_body``,
:meth:`HTTPCycle.on_disconnect`), and decides what follows a complete response.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from asgictl.protocols.asgi import ClientDisconnected, log_http_access
from asgictl.protocols.http.response import NO_BODY_STATUSES

if TYPE_CHECKING:
    import asyncio

    from asgictl.protocols.state import ServerState

logger = logging.getLogger("asgictl.error")

_DISCONNECT = {"type": "http.disconnect"}
_PATHSEND_CHUNK = 256 * 1024

__all__ = ["ClientDisconnected", "CycleHost", "HTTPCycle"]


class CycleHost(Protocol):
    """What an :class:`HTTPCycle` needs from what carries its request.

    The attributes: ``state`` (the ServerState), ``loop``; ``read_eof`` (no more request
    bytes can arrive: receive() answers http.disconnect), ``read_paused`` (request body
    is held back until the app reads), ``write_paused`` (``send`` must ``await drain()``
    before the next message).

    Response methods, called in ASGI order for one cycle: ``start_response`` once (set
    ``cycle.head`` to the held-back head and ``cycle.length_left`` to the app's
    Content-Length, or None), then ``write_body`` for each body message (the data as the
    app sent it: the host drops it when ``cycle.no_body``, and sets ``cycle.head`` to
    None once the head is on its way), ``body_length`` when pathsend knows the size
    first, and ``write_trailers`` when the app sends trailers.
    """

    state: ServerState
    loop: asyncio.AbstractEventLoop
    read_eof: bool
    read_paused: bool
    write_paused: bool

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
        the host refuses (nothing written then)."""

    def body_length(self, cycle: HTTPCycle, size: int) -> None:
        """pathsend: the body is ``size`` bytes (frame it so when the app set no framing)."""

    def write_trailers(self, cycle: HTTPCycle, headers: Iterable[tuple[bytes, bytes]], more: bool) -> None:
        """Trailer fields (``http.response.trailers``), the last of the response unless ``more``."""

    def cycle_done(self, cycle: HTTPCycle) -> None:
        """The response of ``cycle`` is complete."""

    def app_failed(self, cycle: HTTPCycle, exc: BaseException | None) -> None:
        """The app raised ``exc`` (None: returned without a complete response)."""


class HTTPCycle:
    """The ASGI ``receive``/``send`` of one request, carried by ``conn`` (a CycleHost).

    ``run(app)`` runs the app; the host feeds the request body with :meth:`feed_body`
    and ``more_body = False`` (then :meth:`wake`), and reports a peer that went away with
    :meth:`on_disconnect`. ``send`` raises RuntimeError for a message out of order and
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
        self.response_started = False
        self.response_complete = False
        #: the host's head, held back until the first body message (None once written)
        self.head: Any = None
        self.started_at = 0.0
        # The rest of the response side (status, no_body, trailers, length_left) is set
        # by the start message: fewer stores per request, and nothing reads them before.

    # -------------------------------------------------------------------- from the host

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
            if not self.response_started and not self.disconnected:
                conn.write_continue(self)
        while not (self.disconnected or self.response_complete):
            if self.body or (self.more_body is False and not self.body_delivered):
                break
            if conn.read_eof:
                # The client sent EOF: nothing more can arrive, so it has gone (or
                # half-closed; the response can still be written either way).
                return _DISCONNECT
            conn.resume_reading()
            self.waiter = conn.loop.create_future()
            await self.waiter
        if self.disconnected or self.response_complete:
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
            more = message.get("more_body", False)
            self._write_body(message.get("body", b""), more)
            if not more and not self.trailers:
                self._finish()
            elif self.conn.write_paused and not self.disconnected:
                await self.conn.drain()
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
            if self.head is None:
                raise RuntimeError(_unexpected(kind, self.response_complete))
            await self._pathsend(message["path"])
        else:
            raise RuntimeError(_unexpected(kind, self.response_complete))

    def _write_body(self, data: bytes, more: bool) -> None:
        if self.response_complete:
            raise RuntimeError(_unexpected("http.response.body", True))
        if self.disconnected:
            return
        left = self.length_left
        if left is not None and not self.no_body:
            left = self.length_left = left - len(data)
            if left < 0:
                raise RuntimeError("Response content longer than Content-Length")
        self.conn.write_body(self, data, more)

    async def _pathsend(self, path: str) -> None:
        conn = self.conn
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if self.length_left is None and not self.trailers:
                # Known size: framed by Content-Length so the connection stays reusable.
                conn.body_length(self, size)
            sent = 0
            while True:
                data = fh.read(_PATHSEND_CHUNK)
                sent += len(data)
                more = bool(data) and sent < size
                self._write_body(data, more)
                if not more or self.disconnected:
                    break
                if conn.write_paused:
                    await conn.drain()
        if self.disconnected:
            raise ClientDisconnected("client disconnected during pathsend")
        if not self.trailers:
            self._finish()

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
        if state.timed:  # the access log or the response observer wants the duration
            seconds = conn.loop.time() - self.started_at
            if state.access_log:
                log_http_access(self.scope, self.status, seconds)
            observe = state.on_response
            if observe is not None:
                observe(self.status, seconds)
        conn.cycle_done(self)

    # -------------------------------------------------------------------------- running

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass  # the app stopped because the client left: nothing to report
        except BaseException as exc:
            self.conn.app_failed(self, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not self.response_started:
                if not self.disconnected:
                    logger.error("ASGI callable returned without starting response.")
                    self.conn.app_failed(self, None)
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self.conn.app_failed(self, None)
        finally:
            self.conn.state.active_requests -= 1


def _unexpected(kind: str, complete: bool) -> str:
    if complete:
        return f"Unexpected ASGI message '{kind}' sent, after response already completed."
    return f"Unexpected ASGI message '{kind}' sent, in the wrong order."
