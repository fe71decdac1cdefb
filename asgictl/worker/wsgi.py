"""Serving PEP 3333 WSGI applications as ASGI 3 applications (``--interface wsgi``).

This module owns :class:`WSGIAdapter`, the bridge between the event loop and a blocking
WSGI app: building the WSGI ``environ`` from an ASGI ``http`` scope, ``wsgi.input``,
``start_response``/``write()``, ``wsgi.file_wrapper`` and the sending of the response
iterable. It imports nothing else of asgictl.

Where the app runs: in the adapter's own pool of ``threads`` threads (the default), or
with ``inline`` on the event loop's thread for requests whose body is all here.

The hand-off between the loop and a thread is the cost to keep small, so each request
crosses it once each way at most:

- a request body of up to ``PREREAD`` bytes (with a Content-Length) is read on the loop
  before the app runs, and ``wsgi.input`` is a plain in-memory file; a larger or chunked
  body streams: the thread pulls ``http.request`` messages only when the app reads more
  than is buffered;
- requests wait for a thread in a bounded queue (``queue_size``; one more gets 503);
- the thread never waits for the loop to write: it appends the response's messages to
  the request's outbox and wakes the loop (one wake-up serves every response finished
  meanwhile); it waits only when more than ``AHEAD`` bytes are not written yet
  (backpressure), or for a file to be sent before it closes it;
- a response whose Content-Length is reached is complete at once, so the loop writes head
  and body in one write; the iterable's ``close()`` follows in the thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import io
import logging
import os
import queue
import stat
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FileWrapper", "WSGIAdapter", "WSGIInput", "build_environ"]

logger = logging.getLogger("asgictl.error")

#: A request body with a Content-Length up to this size is read on the loop before the
#: app runs (no hand-off per read); larger or chunked bodies stream to the thread.
PREREAD = 64 * 1024
#: Response bytes a thread may produce ahead of what the loop has written; each message
#: also counts MESSAGE_COST, so that an app yielding tiny chunks cannot queue millions.
AHEAD = 1024 * 1024
MESSAGE_COST = 256

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

    Raised in the worker thread once the bridge is closed; :meth:`_Response.run` catches
    it after the response iterable has been closed.
    """


# ------------------------------------------------------------------------- loop bridge


class _LoopBridge:
    """Whether the client of one request is still there, and the way a thread reading a
    streamed request body runs ``receive`` on the event loop.

    The thread blocks on each call until the coroutine completes on the loop.
    :meth:`abort` (from the loop thread, when the client is gone or the ASGI task is
    cancelled) releases a thread blocked in a call and makes every later call, and every
    later response message, fail fast, so that a thread is never left waiting for a loop
    that will not answer.
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
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


#: Header name (as the parser gives it) -> environ key, or None for a name that is
#: dropped; filled as names are seen, up to a bound (a client may invent names).
_HEADER_KEYS: dict[bytes, str | None] = {}
_HEADER_KEYS_MAX = 512


def _header_key(raw_name: bytes) -> str | None:
    name = raw_name.decode("latin-1").lower()
    if "_" in name:
        # "X_Forwarded_For" and "X-Forwarded-For" would both become
        # HTTP_X_FORWARDED_FOR: a client could spoof a header set by a proxy. Drop
        # them, as nginx and gunicorn do by default.
        key = None
    else:
        key = _CGI_HEADERS.get(name) or "HTTP_" + name.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _HEADER_KEYS_MAX:
        _HEADER_KEYS[raw_name] = key
    return key


#: The environ entries that are the same for every request.
_CONSTANT: Environ = {
    "wsgi.version": (1, 0),
    # The input ends where the request body ends, so apps may read it to EOF without a
    # Content-Length (chunked uploads); Werkzeug honours this mod_wsgi/gunicorn flag.
    "wsgi.input_terminated": True,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}


def build_environ(scope: Scope, body: Any) -> Environ:
    """The WSGI environ of an ASGI ``http`` scope, with ``body`` as ``wsgi.input``."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    # Strip root_path only on a segment boundary: "/app" is not a prefix of "/apple".
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
        path = path[len(root_path) :]
    scheme: str = scope.get("scheme", "http")

    environ = _CONSTANT.copy()
    environ["REQUEST_METHOD"] = scope["method"]
    environ["SCRIPT_NAME"] = _wsgi_str(root_path) if root_path else ""
    environ["PATH_INFO"] = _wsgi_str(path)
    environ["QUERY_STRING"] = scope.get("query_string", b"").decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + scope.get("http_version", "1.1")
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = body
    environ["wsgi.errors"] = sys.stderr
    environ["asgi.scope"] = scope

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

    keys = _HEADER_KEYS
    for raw_name, raw_value in scope.get("headers", ()):
        key = keys[raw_name] if raw_name in keys else _header_key(raw_name)
        if key is None:
            continue
        value = raw_value.decode("latin-1")
        if key in environ:
            # HTTP/2 splits Cookie into several fields, to be joined with "; " (RFC 9113
            # 8.2.3); other repeated fields are joined with "," (RFC 9110 5.3).
            separator = "; " if key == "HTTP_COOKIE" else ","
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


def _refuse(status: Any, headers: Any) -> None:
    """Raise the TypeError or ValueError that says what is wrong with a status line or
    headers that start_response's fast path could not take."""
    if not isinstance(status, str):
        raise TypeError(f"WSGI status must be str, not {type(status).__name__}: {status!r}")
    code = status.split(" ", 1)[0]
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"invalid WSGI status {status!r}: expected e.g. '200 OK'")
    for header in headers:
        if not isinstance(header, tuple) or len(header) != 2:
            raise TypeError(f"WSGI response headers must be (name, value) tuples, not {header!r}")
        _check_header_text(header[0], "header name")
        _check_header_text(header[1], "header value")


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333): the app returns ``FileWrapper(filelike,
    block_size)`` and the server sends the file with ``sendfile`` where the connection
    allows (a regular file with a ``fileno()``), from the file's current position up to the
    response's Content-Length or the end of the file. Anything else is iterated in
    ``block_size`` pieces, like any response iterable. ``close()`` closes the file.
    """

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while data := read(self.block_size):
            yield data

    def region(self, length: int | None) -> tuple[int, int] | None:
        """(offset, count) of what to send with sendfile, or None if the file is not
        one sendfile can read (no ``fileno()``, not a regular file)."""
        fileno = getattr(self.filelike, "fileno", None)
        if fileno is None:
            return None
        try:
            fd = fileno()
            info = os.fstat(fd)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        tell = getattr(self.filelike, "tell", None)
        try:
            # The Python-level position (a buffered file may have read ahead of the fd's).
            offset = tell() if tell is not None else os.lseek(fd, 0, os.SEEK_CUR)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None
        count = max(info.st_size - offset, 0)
        if length is not None:
            count = min(count, length)
        return offset, count


class _Failure:
    """An exception of the app, carried from its thread to the loop to be raised there."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


#: Put in the outbox when the thread is done with the request, whatever happened.
_DONE = object()
_BODY = "http.response.body"


def _take(out: collections.deque[Any]) -> Any:
    """The next message of ``out``; a streamed chunk directly followed by the empty last
    body becomes one last body, so the cycle frames it with a Content-Length."""
    message = out.popleft()
    if (
        out
        and type(message) is dict
        and message["type"] == _BODY
        and message["more_body"]
        and type(out[0]) is dict
        and out[0]["type"] == _BODY
        and not out[0]["body"]
        and not out[0]["more_body"]
    ):
        out.popleft()
        message = {"type": _BODY, "body": message["body"], "more_body": False}
    return message


class _Response:
    """One request's response: ``start_response``, ``write()``, the iterable, and the
    outbox its messages go through to the loop.

    The producing side (``start_response``, ``write``, :meth:`run`) runs in the app's
    thread, or on the loop with ``inline``; :meth:`relay` runs on the loop and sends what
    the thread produced. ``produced`` is written only by the producer and ``consumed`` only
    by the loop, so the two sides share no counter.
    """

    __slots__ = (
        "adapter",
        "blocked",
        "bridge",
        "consumed",
        "environ",
        "final",
        "headers",
        "length_left",
        "limit",
        "out",
        "produced",
        "room",
        "started",
        "status",
        "threaded",
        "waiter",
    )

    def __init__(self, adapter: WSGIAdapter, bridge: _LoopBridge, environ: Environ, threaded: bool) -> None:
        self.adapter = adapter
        self.bridge = bridge
        self.environ = environ
        self.threaded = threaded
        self.out: collections.deque[Any] = collections.deque()
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.length_left: int | None = None
        self.started = False  # http.response.start is in the outbox
        self.final = False  # the last body message is in the outbox
        self.produced = 0
        self.consumed = 0
        self.limit = 0
        self.blocked = False
        self.room: threading.Event | None = None
        self.waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ the producing side

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Write:
        if exc_info is not None:
            try:
                if self.started:
                    # PEP 3333: too late to change the status; re-raise the app's error so
                    # that it propagates and the server aborts the connection.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # break the frame <-> traceback reference cycle
        elif self.status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")

        code = status[:3] if type(status) is str else ""
        encoded: list[tuple[bytes, bytes]] = []
        length = None
        try:
            if len(code) != 3 or not code.isdigit() or status[3:4] not in ("", " "):
                raise ValueError
            status_code = int(code)
            for name, value in headers:
                # Checked as str: `bytes in bytes` first tries the needle as an int and
                # formats a TypeError on the way, several times slower.
                if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                    raise ValueError
                name = name.lower().encode("latin-1")
                value = value.encode("latin-1")
                if name == b"content-length" and value.isdigit():
                    length = int(value)
                encoded.append((name, value))
        except (AttributeError, TypeError, ValueError):
            _refuse(status, headers)  # raises the error that says what is wrong
            raise
        self.status = status_code
        self.headers = encoded
        self.length_left = length
        return self.write

    def write(self, data: bytes) -> None:
        """Send one body chunk (the iterable's chunks and the legacy write() alike)."""
        if self.status is None:
            raise RuntimeError("WSGI app sent body data before calling start_response()")
        if type(data) is not bytes:
            if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
            data = bytes(data)  # the app may reuse its buffer
        if not data:
            # PEP 3333: an empty chunk must not cause the headers to be sent.
            return
        if self.final:
            raise RuntimeError("WSGI response body longer than its Content-Length")
        if not self.started:
            self._emit_start()
        more = True
        if self.length_left is not None:
            self.length_left -= len(data)
            more = self.length_left > 0
        self._emit({"type": _BODY, "body": data, "more_body": more}, len(data))
        if not more:
            self.final = True

    def _emit_start(self) -> None:
        if self.bridge.closed:
            raise _ClientGone
        self.started = True
        # A body message (or a file) always follows at once: that one wakes the loop.
        self.out.append({"type": "http.response.start", "status": self.status, "headers": self.headers})

    def _finish(self) -> None:
        if self.status is None:
            raise RuntimeError("WSGI app returned without calling start_response()")
        if not self.started:
            self._emit_start()
        if not self.final:
            self._emit({"type": _BODY, "body": b"", "more_body": False}, 0)
            self.final = True

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a wsgi.file_wrapper's file with sendfile; False if it is not a file that
        sendfile can read (the caller then iterates it)."""
        region = wrapper.region(self.length_left)
        if region is None:
            return False
        offset, count = region
        if not self.started:
            self._emit_start()
        if self.length_left is not None:
            self.length_left -= count
        message = {
            "type": "http.response.zerocopysend",
            "file": wrapper.filelike,
            "offset": offset,
            "count": count,
            "more_body": False,
        }
        self._emit(message, count)
        self.final = True
        if self.threaded:
            self._wait(0)  # the file must stay open until it is sent
        return True

    def _emit(self, message: Any, size: int) -> None:
        if self.bridge.closed:
            raise _ClientGone
        self.out.append(message)
        if self.threaded:
            self.produced += size + MESSAGE_COST
            self.adapter._notify(self)
            if self.produced - self.consumed > AHEAD:
                # Woken only once most of it is written: then it produces several
                # pieces per wake-up, not one piece per context switch.
                self._wait(AHEAD // 4)

    def _wait(self, limit: int) -> None:
        """Block the thread until at most ``limit`` bytes are still to be written."""
        room = self.room
        if room is None:
            room = self.room = threading.Event()
        room.clear()
        self.limit = limit
        self.blocked = True
        # Checked again after `blocked` is set: the loop may have caught up meanwhile.
        if self.produced - self.consumed > limit and not self.bridge.closed:
            room.wait()
        self.blocked = False
        if self.bridge.closed:
            raise _ClientGone

    def run(self, app: WSGIApp) -> None:
        """Call the app and produce its response; the body of a thread's job."""
        try:
            if self.bridge.closed:
                raise _ClientGone  # the client left while the request waited for a thread
            iterable = app(self.environ, self.start_response)
            try:
                if not (type(iterable) is FileWrapper and self._send_file(iterable)):
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
            pass  # nothing left to say to a gone client, and nothing to log
        except BaseException as exc:
            if self.final:
                # The response is complete (close() failed): the loop is not listening.
                logger.error("Exception in WSGI application after its response\n", exc_info=exc)
            else:
                self.out.append(_Failure(exc))
        finally:
            if not self.final:
                # The loop waits for more (an error, a gone client): tell it to stop.
                # After the last body message it waits for nothing: no wake-up.
                self.out.append(_DONE)
                self.adapter._notify(self)

    # ------------------------------------------------------------------- the loop side

    async def relay(self, send: Send) -> None:
        """Send what the thread produces until the response is complete or the thread is
        done; raise the app's exception if it failed before completing the response."""
        out = self.out
        loop = self.adapter._loop
        try:
            while True:
                if not out:
                    self.waiter = loop.create_future()
                    await self.waiter
                    continue
                message = _take(out)
                if message is _DONE:
                    return
                if type(message) is _Failure:
                    raise message.exc
                await send(message)
                if message["type"] == _BODY:
                    self.consumed += len(message["body"]) + MESSAGE_COST
                    final = not message["more_body"]
                elif message["type"] == "http.response.zerocopysend":
                    self.consumed += message["count"] + MESSAGE_COST
                    final = True
                else:
                    final = False
                if self.blocked and self.produced - self.consumed <= self.limit:
                    self.room.set()  # type: ignore[union-attr]
                if final:
                    return  # the iterable's close() follows in the thread
        except BaseException as exc:
            # The client is gone, the send failed, or the request was cancelled: the
            # thread stops at its next message, or now if it waits for room.
            self.bridge.abort()
            if self.room is not None:
                self.room.set()
            if isinstance(exc, OSError):
                return  # send's way to say the client went away (ASGI 2.4): not an error
            raise

    async def run_inline(self, app: WSGIApp, send: Send) -> None:
        """Call the app and send its response on the loop (``inline``): the app and each
        step of its iterable block the loop; sending waits for the client as usual."""
        out = self.out
        iterable = app(self.environ, self.start_response)
        try:
            if not (type(iterable) is FileWrapper and self._send_file(iterable)):
                for chunk in iterable:
                    self.write(chunk)
                    # The last chunk is held back: if it turns out to be the last one, it
                    # goes with the end of the body (a Content-Length, one write).
                    while len(out) > 1:
                        await send(out.popleft())
                self._finish()
            while out:
                await send(_take(out))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()


# ---------------------------------------------------------------------------- adapter


async def _service_unavailable(send: Send) -> None:
    body = b"Service Unavailable: every thread is busy and the queue is full\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": _BODY, "body": body, "more_body": False})


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
        self._outbox: collections.deque[_Response] = collections.deque()
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
        bridge = _LoopBridge(self._loop)
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
                await _Response(self, bridge, environ, False).run_inline(self.app, send)
                return
        if self._in_flight >= self.threads + self.queue_size:
            # Every thread is busy and queue_size requests already wait for one.
            await _service_unavailable(send)
            return
        response = _Response(self, bridge, environ, True)
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

    def _notify(self, response: _Response) -> None:
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
