"""The WSGI adapter: a PEP 3333 app served as an ASGI 3 app (``--interface wsgi``).

:class:`WSGIAdapter` takes each ``http`` request to the app: a small body with a
Content-Length is read here on the loop first (``PREREAD``), then the app runs in the
adapter's pool of threads, behind a bounded queue (503 past it), or with ``inline`` on
the loop itself when the body is all here. The response comes back through
:class:`~asgictl.worker.wsgi.response.Response`; this class wakes the loop for it, once
for every response with news.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import io
import queue
import threading
from typing import Any

from asgictl.worker.wsgi.bridge import Environ, LoopBridge, Receive, Scope, Send, WSGIApp
from asgictl.worker.wsgi.environ import WSGIInput, build_environ
from asgictl.worker.wsgi.response import BODY, FileWrapper, Response

#: A request body with a Content-Length up to this size is read on the loop before the
#: app runs (no hand-off per read); larger or chunked bodies stream to the thread.
PREREAD = 64 * 1024


async def _service_unavailable(send: Send) -> None:
    body = b"Service Unavailable: every thread is busy and the queue is full\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": BODY, "body": body, "more_body": False})


class WSGIAdapter:
    """An ASGI 3 application serving the PEP 3333 WSGI application ``app``.

    The app runs in a pool of ``threads`` threads named ``asgictl-wsgi`` (started with
    the first request), so at most that many requests run it at once; up to
    ``queue_size`` more wait for a free thread, and a request that finds the queue full is
    answered 503 at once. With ``inline`` the app runs on the event loop's thread for
    every request whose body is all here (see the module docstring), and the threads only
    serve streamed bodies.

    ``lifespan`` scopes are answered (startup, and shutdown which stops the threads);
    ``websocket`` scopes raise :class:`RuntimeError`. An exception from the app propagates
    out of ``__call__``: before the response started the server answers 500, after it the
    server closes the connection. A client that disconnects ends the response quietly,
    after the app's iterable has been closed.
    """

    def __init__(self, app: WSGIApp, threads: int = 8, queue_size: int = 256, inline: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if queue_size < 0:
            raise ValueError(f"queue_size must not be negative, not {queue_size}")
        self.app = app
        self.threads = threads
        self.queue_size = queue_size
        self.inline = inline
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # Responses with news for the loop, and whether a wake-up is already on its way.
        self._outbox: collections.deque[Response] = collections.deque()
        self._wake_pending = False
        #: requests handed to the threads whose response is not complete yet
        self._in_flight = 0

    # ------------------------------------------------------------------- the loop side

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                return await self._lifespan(receive, send)
            raise RuntimeError(f"WSGI apps do not support {kind}")
        self._loop = asyncio.get_running_loop()
        bridge = LoopBridge(self._loop)
        environ = build_environ(scope, None)
        environ["wsgi.file_wrapper"] = FileWrapper
        body = await self._preread(environ, receive)
        if body is None:
            environ["wsgi.input"] = WSGIInput(bridge, receive)
        else:
            if body is _GONE:
                return  # the client left while sending its body: nobody to answer
            environ["wsgi.input"] = io.BytesIO(body)
            if self.inline:
                await Response(self._loop, self._notify, bridge, environ, False).run_inline(self.app, send)
                return
        if self._in_flight >= self.threads + self.queue_size:
            # Every thread is busy and queue_size requests already wait for one.
            await _service_unavailable(send)
            return
        response = Response(self._loop, self._notify, bridge, environ, True)
        self._in_flight += 1
        try:
            # Run in a copy of the current context, as asyncio.to_thread does, so that
            # context variables set by ASGI middleware (request ids, tracing) reach the app.
            self._jobs.put((contextvars.copy_context(), response))
            if not self._workers:
                self._start_threads()
            await response.relay(send)
        finally:
            self._in_flight -= 1

    async def _preread(self, environ: Environ, receive: Receive) -> Any:
        """The whole request body if it is small and has a Content-Length (b"" without
        a body), read here on the loop; _GONE if the client left; None to stream it."""
        length = environ.get("CONTENT_LENGTH")
        if length is None:
            if "HTTP_TRANSFER_ENCODING" in environ:
                return None
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if size > PREREAD:
            return None
        if size == 0:
            return b""
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return _GONE
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _notify(self, response: Response) -> None:
        """Wake the loop to send ``response``'s news (any thread; at most one wake-up is
        on its way at a time, and it serves every response in the outbox)."""
        self._outbox.append(response)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._drain_outbox)
            except RuntimeError:  # the loop is closed: nobody will send it
                response.bridge.close()

    def _drain_outbox(self) -> None:
        # Cleared before draining: a thread that sees False afterwards schedules another
        # wake-up, one that still sees True has its response drained here.
        self._wake_pending = False
        outbox = self._outbox
        while outbox:
            waiter = outbox.popleft().waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ----------------------------------------------------------------------- threads

    def _start_threads(self) -> None:
        for number in range(self.threads):
            thread = threading.Thread(target=self._work, name=f"asgictl-wsgi-{number}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def _work(self) -> None:
        jobs = self._jobs
        app = self.app
        while True:
            job = jobs.get()
            if job is None:
                return
            context, response = job
            context.run(response.run, app)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads once the requests queued before have run; with ``wait``,
        return after they have."""
        workers, self._workers = self._workers, []
        for _ in workers:
            self._jobs.put(None)
        if wait:
            for thread in workers:
                thread.join()


#: _preread's answer when the client left before its body was complete.
_GONE: Any = object()
