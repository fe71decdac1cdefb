"""One WSGI response: ``start_response``, ``write()``, ``wsgi.file_wrapper`` and the
iterable, carried from the app's thread to the loop.

The thread appends the response's ASGI messages to the request's outbox and wakes the
loop (:meth:`Response.run`); the loop sends them (:meth:`Response.relay`). The thread
waits only when more than ``AHEAD`` bytes are not written yet, or for a file to be
sent before it closes it. With ``inline`` both sides run on the loop
(:meth:`Response.run_inline`).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from asgictl.worker.wsgi.bridge import ClientGone, Environ, ExcInfo, LoopBridge, Send, Write, WSGIApp

logger = logging.getLogger("asgictl.error")

#: Response bytes a thread may produce ahead of what the loop has written; each message
#: also counts MESSAGE_COST, so that an app yielding tiny chunks cannot queue millions.
AHEAD = 1024 * 1024
MESSAGE_COST = 256


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
#: The ASGI type of a body message.
BODY = "http.response.body"


def _take(out: collections.deque[Any]) -> Any:
    """The next message of ``out``; a streamed chunk directly followed by the empty last
    body becomes one last body, so the cycle frames it with a Content-Length."""
    message = out.popleft()
    if (
        out
        and type(message) is dict
        and message["type"] == BODY
        and message["more_body"]
        and type(out[0]) is dict
        and out[0]["type"] == BODY
        and not out[0]["body"]
        and not out[0]["more_body"]
    ):
        out.popleft()
        message = {"type": BODY, "body": message["body"], "more_body": False}
    return message


class Response:
    """One request's response: ``start_response``, ``write()``, the iterable, and the
    outbox its messages go through to the loop.

    The producing side (``start_response``, ``write``, :meth:`run`) runs in the app's
    thread, or on the loop with ``inline``; :meth:`relay` runs on the loop and sends what
    the thread produced. ``produced`` is written only by the producer and ``consumed`` only
    by the loop, so the two sides share no counter.
    """

    __slots__ = (
        "blocked",
        "bridge",
        "consumed",
        "environ",
        "final",
        "headers",
        "length_left",
        "limit",
        "loop",
        "notify",
        "out",
        "produced",
        "room",
        "started",
        "status",
        "threaded",
        "waiter",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        notify: Callable[[Response], None],
        bridge: LoopBridge,
        environ: Environ,
        threaded: bool,
    ) -> None:
        """``notify(response)``: wakes the loop for this response's news, from any
        thread; ``threaded``: produced in a thread (else inline, on ``loop``)."""
        self.loop = loop
        self.notify = notify
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
        self._emit({"type": BODY, "body": data, "more_body": more}, len(data))
        if not more:
            self.final = True

    def _emit_start(self) -> None:
        if self.bridge.closed:
            raise ClientGone
        self.started = True
        # A body message (or a file) always follows at once: that one wakes the loop.
        self.out.append({"type": "http.response.start", "status": self.status, "headers": self.headers})

    def _finish(self) -> None:
        if self.status is None:
            raise RuntimeError("WSGI app returned without calling start_response()")
        if not self.started:
            self._emit_start()
        if not self.final:
            self._emit({"type": BODY, "body": b"", "more_body": False}, 0)
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
            raise ClientGone
        self.out.append(message)
        if self.threaded:
            self.produced += size + MESSAGE_COST
            self.notify(self)
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
            raise ClientGone

    def run(self, app: WSGIApp) -> None:
        """Call the app and produce its response; the body of a thread's job."""
        try:
            if self.bridge.closed:
                raise ClientGone  # the client left while the request waited for a thread
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
        except ClientGone:
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
                self.notify(self)

    # ------------------------------------------------------------------- the loop side

    async def relay(self, send: Send) -> None:
        """Send what the thread produces until the response is complete or the thread is
        done; raise the app's exception if it failed before completing the response."""
        out = self.out
        loop = self.loop
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
                if message["type"] == BODY:
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
