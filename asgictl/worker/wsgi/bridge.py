"""The ASGI and WSGI types of the WSGI adapter, and the worker thread's way to the loop.

:class:`LoopBridge` knows whether the client of one request is still there, and runs
``receive`` on the event loop for a thread that reads a streamed request body;
:class:`ClientGone` is what a thread meets once the client is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from types import TracebackType
from typing import Any, TypeVar

# ASGI types, kept local so that the adapter stands alone.
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


class ClientGone(Exception):
    """The client disconnected or the request was cancelled: stop sending the response.

    Raised in the worker thread once the bridge is closed; :meth:`Response.run` catches
    it after the response iterable has been closed.
    """


class LoopBridge:
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
        """Run ``func()`` on the loop and return its result; raise :class:`ClientGone`
        if the bridge is closed, or is aborted while waiting."""
        with self._lock:
            if self._closed:
                raise ClientGone
            # The coroutine is created only once we know it will be scheduled, so that an
            # aborted bridge leaves no "coroutine was never awaited" warnings behind.
            coro = func()
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
            except RuntimeError:  # the loop is closed
                coro.close()  # type: ignore[attr-defined]
                self._closed = True
                raise ClientGone from None
            self._pending = future
        try:
            return future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            raise ClientGone from None
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
