"""Serving PEP 3333 WSGI applications as ASGI 3 applications (``--interface wsgi``).

This module owns :class:`WSGIAdapter`, the bridge between the event loop and a blocking
WSGI app: building the WSGI ``environ`` from an ASGI ``http`` scope, the streaming
``wsgi.input`` file, ``start_response``/``write()`` and the sending of the response
iterable. It imports nothing else of asgictl.

The WSGI app always runs in the adapter's own thread pool, never in the event loop
thread. Both directions stream: the worker thread pulls ``http.request`` messages from
``receive`` only when the app reads more than is buffered, and sends every body chunk as
soon as the app produces it, waiting for each ``send`` to complete (backpressure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["WSGIAdapter", "WSGIInput", "build_environ"]

# ASGI types, kept local so that this module stands alone.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# WSGI types (``wsgiref.types`` exists only from Python 3.11).
Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], None]
StartResponse = Callable[..., Write]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_T = TypeVar("_T")

# Headers that become CONTENT_TYPE / CONTENT_LENGTH instead of HTTP_* variables.
_CGI_HEADERS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class _ClientGone(Exception):
    """The client disconnected or the request was cancelled: stop sending the response.

    Raised in the worker thread by the loop bridge; :meth:`_Response.run` catches it after
    the response iterable has been closed.
    """


# ------------------------------------------------------------------------- loop bridge


class _LoopBridge:
    """Runs ASGI ``receive``/``send`` coroutines on the event loop for the worker thread.

    The worker thread blocks on each call until the coroutine completes on the loop, which
    gives natural backpressure. :meth:`abort` (from the loop thread, when the ASGI task is
    cancelled) releases a thread blocked in a call and makes every later call fail fast, so
    that a thread is never left waiting for a loop that will not answer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # The lock orders "submit a call" against "abort": without it an abort could land
        # between the closed check and the submission, and the new call would never be
        # cancelled.
        self._lock = threading.Lock()
        self._closed = False
        self._pending: concurrent.futures.Future[Any] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def call(self, func: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``func()`` on the loop and return its result; raise :class:`_ClientGone`
        if the bridge is closed, or is aborted while waiting."""
        with self._lock:
            if self._closed:
                raise _ClientGone
            # The coroutine is created only once we know it will be scheduled, so that an
            # aborted bridge leaves no "coroutine was never awaited" warnings behind.
            coro = func()
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
            except RuntimeError:  # the loop is closed
                coro.close()  # type: ignore[attr-defined]
                self._closed = True
                raise _ClientGone from None
            self._pending = future
        try:
            return future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            raise _ClientGone from None
        finally:
            with self._lock:
                self._pending = None

    def close(self) -> None:
        """Refuse further calls (the client is gone); a call in progress is left alone."""
        with self._lock:
            self._closed = True

    def abort(self) -> None:
        """Refuse further calls and cancel the one in progress, if any."""
        with self._lock:
            self._closed = True
            if self._pending is not None:
                # Cancelling the concurrent future wakes the waiting thread at once, even
                # if the loop never runs the cancellation of the task itself.
                self._pending.cancel()


# ------------------------------------------------------------------------- wsgi.input


class WSGIInput:
    """``wsgi.input``: the request body, read from the worker thread as it arrives.

    Each read pulls ``http.request`` messages from ``receive`` only until it can be
    answered, so the body is never read ahead of the app. ``http.disconnect`` (or an
    aborted request) ends the input: reads then return what is buffered, then ``b""``.
    """

    def __init__(self, bridge: _LoopBridge, receive: Receive) -> None:
        self._bridge = bridge
        self._receive = receive
        self._buffer = bytearray()
        self._eof = False

    def _pull(self) -> None:
        """Append the next body message to the buffer, or mark the end of the input."""
        try:
            message = self._bridge.call(self._receive)
        except _ClientGone:
            self._eof = True
            return
        if message["type"] == "http.request":
            self._buffer += message.get("body", b"")
            if not message.get("more_body", False):
                self._eof = True
        else:
            # http.disconnect: nobody will read the response either, so the next send
            # stops the response instead of computing it for no one.
            self._eof = True
            self._bridge.close()

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        # Deleting from the front of a bytearray is cheap in CPython (no full copy).
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while not self._eof:
                self._pull()
            return self._take(len(self._buffer))
        while len(self._buffer) < size and not self._eof:
            self._pull()
        return self._take(min(size, len(self._buffer)))

    def readline(self, limit: int | None = -1) -> bytes:
        if limit is None:
            limit = -1
        searched = 0  # the buffer before this offset holds no newline
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                size = newline + 1
                break
            if self._eof or 0 <= limit <= len(self._buffer):
                size = len(self._buffer)
                break
            searched = len(self._buffer)
            self._pull()
        if limit >= 0:
            size = min(size, limit)
        return self._take(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The server owns the input; closing it does nothing (as in other servers)."""


# ---------------------------------------------------------------------------- environ


def _wsgi_str(value: str) -> str:
    """A PEP 3333 "native string": the UTF-8 bytes of ``value`` decoded as latin-1.

    ``surrogateescape`` round-trips bytes that a server decoded from invalid UTF-8 that way.
    """
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


def build_environ(scope: Scope, body: Any) -> Environ:
    """The WSGI environ of an ASGI ``http`` scope, with ``body`` as ``wsgi.input``."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    # Strip root_path only on a segment boundary: "/app" is not a prefix of "/apple".
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
        path = path[len(root_path) :]
    scheme: str = scope.get("scheme", "http")

    environ: Environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": _wsgi_str(root_path),
        "PATH_INFO": _wsgi_str(path),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        # The input ends where the request body ends, so apps may read it to EOF without a
        # Content-Length (chunked uploads); Werkzeug honours this mod_wsgi/gunicorn flag.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "asgi.scope": scope,
    }

    server = scope.get("server")
    if server is None or server[1] is None:
        # No server address, or a unix socket ((path, None)): a socket path is no host
        # name, and frameworks build URLs from SERVER_NAME:SERVER_PORT without a Host.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = _DEFAULT_PORTS.get(scheme, "80")
    else:
        environ["SERVER_NAME"] = str(server[0])
        environ["SERVER_PORT"] = str(server[1])

    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        if client[1] is not None:
            environ["REMOTE_PORT"] = str(client[1])

    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if "_" in name:
            # "X_Forwarded_For" and "X-Forwarded-For" would both become
            # HTTP_X_FORWARDED_FOR: a client could spoof a header set by a proxy. Drop
            # them, as nginx and gunicorn do by default.
            continue
        key = _CGI_HEADERS.get(name) or "HTTP_" + name.upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if key in environ:
            # HTTP/2 splits Cookie into several fields, to be joined with "; " (RFC 9113
            # 8.2.3); other repeated fields are joined with "," (RFC 9110 5.3).
            separator = "; " if name == "cookie" else ","
            value = environ[key] + separator + value
        environ[key] = value
    return environ


# --------------------------------------------------------------------------- response


def _check_header_text(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"WSGI response {what} must be str, not {type(text).__name__}: {text!r}")
    if "\r" in text or "\n" in text:
        # A newline in a header would let the app (or a value it echoes) inject headers.
        raise ValueError(f"WSGI response {what} contains a newline: {text!r}")
    return text.encode("latin-1")


class _Response:
    """The response side of one request: ``start_response``, ``write`` and the iterable.

    All methods run in the worker thread.
    """

    def __init__(self, bridge: _LoopBridge, send: Send) -> None:
        self._bridge = bridge
        self._send = send
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._started = False  # http.response.start has been sent

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Write:
        if exc_info is not None:
            try:
                if self._started:
                    # PEP 3333: too late to change the status; re-raise the app's error so
                    # that it propagates and the server aborts the connection.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback reference cycle
        elif self._status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")

        if not isinstance(status, str):
            raise TypeError(f"WSGI status must be str, not {type(status).__name__}: {status!r}")
        code = status.split(" ", 1)[0]
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"invalid WSGI status {status!r}: expected e.g. '200 OK'")
        encoded: list[tuple[bytes, bytes]] = []
        for header in headers:
            if not isinstance(header, tuple) or len(header) != 2:
                raise TypeError(f"WSGI response headers must be (name, value) tuples, not {header!r}")
            name, value = header
            encoded.append(
                (_check_header_text(name, "header name").lower(), _check_header_text(value, "header value"))
            )
        self._status = int(code)
        self._headers = encoded
        return self.write

    def _send_message(self, message: Message) -> None:
        try:
            self._bridge.call(functools.partial(self._send, message))
        except OSError:
            # The ASGI way to say "the client went away" (spec 2.4): stop sending.
            self._bridge.close()
            raise _ClientGone from None

    def write(self, data: bytes) -> None:
        """Send one body chunk now (the iterable's chunks and the legacy write() alike)."""
        if self._status is None:
            raise RuntimeError("WSGI app sent body data before calling start_response()")
        if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
        if not data:
            # PEP 3333: an empty chunk must not cause the headers to be sent.
            return
        if not self._started:
            self._send_start()
        self._send_message({"type": "http.response.body", "body": bytes(data), "more_body": True})

    def _send_start(self) -> None:
        self._started = True
        self._send_message({"type": "http.response.start", "status": self._status, "headers": self._headers})

    def _finish(self) -> None:
        if self._status is None:
            raise RuntimeError("WSGI app returned without calling start_response()")
        if not self._started:
            self._send_start()
        self._send_message({"type": "http.response.body", "body": b"", "more_body": False})

    def run(self, app: WSGIApp, environ: Environ) -> None:
        """Call the app and send its response; the body of the worker thread."""
        try:
            iterable = app(environ, self.start_response)
            try:
                for chunk in iterable:
                    self.write(chunk)
                self._finish()
            finally:
                # PEP 3333: close() must be called however the iteration ended: an error,
                # a gone client, or success. It releases the app's resources (files, DB
                # cursors, generator finally blocks).
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except _ClientGone:
            # Nothing left to say to a gone client, and nothing the server should log.
            return


# ---------------------------------------------------------------------------- adapter


class WSGIAdapter:
    """An ASGI 3 application serving the PEP 3333 WSGI application ``app``.

    The app runs in a thread pool of ``max_workers`` threads named ``asgictl-wsgi``,
    owned by the adapter: at most that many requests run the app at once, later ones
    wait for a free thread. Only ``http`` scopes are served: ``lifespan`` and
    ``websocket`` scopes raise :class:`RuntimeError` (the server, in lifespan "auto"
    mode, reports lifespan as unsupported and carries on).

    An exception from the app propagates out of ``__call__``: before the response started
    the server answers 500, after it the server closes the connection. A client that
    disconnects ends the response quietly, after the app's iterable has been closed.
    """

    def __init__(self, app: WSGIApp, max_workers: int = 10) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self.app = app
        self.max_workers = max_workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="asgictl-wsgi"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            raise RuntimeError(f"WSGI apps do not support {kind}")

        loop = asyncio.get_running_loop()
        bridge = _LoopBridge(loop)
        response = _Response(bridge, send)
        environ = build_environ(scope, WSGIInput(bridge, receive))
        # Run in a copy of the current context, as asyncio.to_thread does, so that context
        # variables set by ASGI middleware (request ids, tracing) reach the WSGI app.
        context = contextvars.copy_context()
        call = functools.partial(context.run, response.run, self.app, environ)
        try:
            await loop.run_in_executor(self._executor, call)
        except asyncio.CancelledError:
            # The thread cannot be cancelled: release it from any receive/send it waits
            # for, and make its next one fail, so it closes the iterable and returns.
            bridge.abort()
            raise

    def shutdown(self, wait: bool = True) -> None:
        """Stop the thread pool; with ``wait``, after the running requests finish."""
        self._executor.shutdown(wait=wait)
