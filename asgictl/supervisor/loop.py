"""The master's event loop: one selector, a wake-up pipe, queued signals and calls.

The master runs no asyncio (it forks: nothing of a running event loop may leak into a
worker, and there is nothing to cancel). This is the plain loop it runs instead:

* descriptors watched for reading and writing (the control socket and its clients, the
  metrics listener, the Pub/Sub broker's socket pairs), through ``selectors``: epoll
  where there is one, so any descriptor number works (``select.select`` stops at 1024);
* a self-pipe: ``signal.set_wakeup_fd`` writes to it when a signal arrives, and
  :meth:`Loop.call_soon_threadsafe` when another thread (the file watcher) hands work
  over, so a wait ends at once instead of at its timeout;
* signal handlers that only queue the signal number: the master acts on it between two
  passes (:meth:`Loop.pending_signals`), in one thread, from state that cannot change
  under it.

A forked worker closes the loop's descriptors (:meth:`Loop.private_fds`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger("asgictl.error")


class Loop:
    """Readers, writers, queued signals and thread-safe calls, for one thread."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._signals: collections.deque[int] = collections.deque()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._caught: tuple[int, ...] = ()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    # ------------------------------------------------------------------ descriptors

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the loop when ``fd`` is readable."""
        self._readers[fd] = callback
        self._watch(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._watch(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the loop when ``fd`` is writable."""
        self._writers[fd] = callback
        self._watch(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._watch(fd)

    def _watch(self, fd: int) -> None:
        """Tell the selector what ``fd`` is watched for now (read, write, both, nothing).

        Registered afresh each time: a descriptor number closed and reused since it was
        last registered must not be taken for the one the selector knew."""
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)
        events = (selectors.EVENT_READ if fd in self._readers else 0) | (
            selectors.EVENT_WRITE if fd in self._writers else 0
        )
        if events:
            self._selector.register(fd, events)

    def private_fds(self) -> list[int]:
        """The descriptors a forked child must close: the wake-up pipe, the selector's own
        (epoll) and every watched one."""
        fileno = getattr(self._selector, "fileno", None)
        return [self._wake_r, self._wake_w, *([fileno()] if fileno is not None else []), *self._readers]

    # ------------------------------------------------------------------ signals and calls

    def catch_signals(self, signals: Iterable[int]) -> None:
        """Queue these signals for :meth:`pending_signals`; each one wakes the loop.
        :meth:`close` gives them their default disposition back."""
        self._caught = tuple(signals)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in self._caught:
            signal.signal(sig, self._queue_signal)

    def _queue_signal(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the loop: only queue; the loop acts.
        self._signals.append(signum)

    def pending_signals(self) -> Iterator[int]:
        """The signals received since the last call, oldest first (those arriving while
        the caller acts on one are yielded too)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        while self._signals:
            yield self._signals.popleft()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the loop's thread at its next pass (from a watcher thread)."""
        self._calls.append(callback)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def run_calls(self) -> None:
        """Run the callbacks :meth:`call_soon_threadsafe` queued; an error is logged."""
        while self._calls:
            try:
                self._calls.popleft()()
            except Exception:
                logger.exception("Error in a master callback")

    # ------------------------------------------------------------------ waiting

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a descriptor, a signal or a call; run the
        callbacks of the ready descriptors (an error in one is logged)."""
        ready = self._selector.select(timeout)
        # Writers first: a writer callback may drop a peer whose reader is also ready.
        for key, events in ready:
            wcallback = self._writers.get(key.fd) if events & selectors.EVENT_WRITE else None
            if wcallback is not None:
                try:
                    wcallback()
                except Exception:
                    logger.exception("Error in a writer callback")
        for key, events in ready:
            callback = self._readers.get(key.fd) if events & selectors.EVENT_READ else None
            if callback is not None:
                try:
                    callback()
                except Exception:
                    logger.exception("Error in a reader callback")

    def close(self) -> None:
        if self._caught:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)
            for sig in self._caught:
                signal.signal(sig, signal.SIG_DFL)
            self._caught = ()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
