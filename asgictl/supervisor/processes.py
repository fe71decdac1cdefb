"""The master's hands on processes: fork a worker, signal a process, collect exits.

:class:`Processes` is everything the master does to the operating system's processes,
behind four methods, so that its decisions can be tested without any: a test hands
:class:`~asgictl.supervisor.master.Master` an object with the same methods that records
signals and makes exits up.

Forking is where the master's state must not leak into a worker: the master's signals
are blocked across ``fork()``, so that the child cannot run the master's handlers (which
would only queue the signal, swallowing a TERM) before it has reset them; the child
gives them their defaults back (SIGINT excepted: see :func:`child.ignore_interrupt`),
unblocks them and becomes the worker (:func:`child.run_worker`, which never returns).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from asgictl.supervisor.child import WorkerContext, ignore_interrupt, run_worker

logger = logging.getLogger("asgictl.error")


class Processes:
    """Fork, signal and reap real processes. ``signals``: the master's own (blocked
    across a fork, reset in the child)."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self._measured: dict[int, Any] = {}  # pid -> psutil.Process, kept between samples

    def fork_worker(self, ctx: WorkerContext) -> int:
        """Fork a worker that runs ``ctx``; its pid. OSError if the fork fails."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            raise
        if pid == 0:  # the worker
            try:
                self._reset_signals()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            run_worker(ctx)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid

    def _reset_signals(self) -> None:
        # Minimal, right after fork, while signals are still blocked: child.py does the rest.
        # SIGINT is the master's to act on from the first instant (a Ctrl+C to the group).
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sig in self.signals:
            signal.signal(sig, ignore_interrupt if sig == signal.SIGINT else signal.SIG_DFL)

    def kill(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid``; a process already gone (or not ours) is no error."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)

    def exits(self) -> Iterator[tuple[int, int]]:
        """``(pid, wait status)`` of every child that has exited; never blocks."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:  # pragma: no cover
                continue
            if pid == 0:
                return
            self._measured.pop(pid, None)
            yield pid, status

    def rss(self, pid: int) -> int | None:
        """Resident memory of ``pid`` in bytes; None when it cannot be read (gone)."""
        try:
            import psutil

            process = self._measured.get(pid)
            if process is None:
                process = self._measured[pid] = psutil.Process(pid)
            return int(process.memory_info().rss)
        except Exception:  # gone, or psutil missing: no sample this time
            return None


def describe_exit(status: int) -> str:
    """A wait status in words: "exited with code 3", "was killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
