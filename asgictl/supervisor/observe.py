"""What the master measures about its processes beyond the shared-memory cells.

The cells (``slots.py``) carry what only a worker knows (requests, open connections,
heartbeat). This module adds what the master can measure from outside, once a second:
RSS and CPU% of the master and of every worker (psutil), and each worker's request rate
over the last few seconds, from successive readings of its request counter. The control
socket's ``status`` and the metrics responder both read these samples; nothing here
talks to a worker.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master

#: Sampling period: the "last interval" of CPU% and the resolution of req/s.
SAMPLE_SECONDS = 1.0
#: req/s is measured over up to this many samples (about 5 s).
RATE_WINDOW = 6


@dataclass
class ProcessSample:
    """The latest psutil reading of one process, and the history req/s is computed from."""

    rss: int | None = None
    cpu_percent: float | None = None
    requests_per_second: float = 0.0
    process: Any = None  # psutil.Process, kept so successive readings are cheap
    cpu_seconds: float | None = None
    cpu_at: float = 0.0
    requests: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=RATE_WINDOW)
    )


class Sampler:
    """Once-a-second psutil and request-rate samples of the master and its workers."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.samples: dict[int, ProcessSample] = {}
        self._next: float | None = None
        self._psutil: Any = None

    def tick(self, now: float) -> None:
        if self._next is None:
            # The first sample waits a period: psutil is imported then (about 10 ms,
            # which would otherwise delay the first workers' boot).
            self._next = now + SAMPLE_SECONDS
            return
        if now < self._next:
            return
        self._next = now + SAMPLE_SECONDS
        if self._psutil is None:
            try:
                import psutil
            except ImportError:  # pragma: no cover - a dependency; the figures stay blank
                psutil = False
            self._psutil = psutil
        master = self.master
        pids = {os.getpid()}
        for w in master.workers.values():
            pids.add(w.pid)
            sample = self.samples.setdefault(w.pid, ProcessSample())
            cell = master.stats.read(w.cell)
            sample.requests.append((now, cell.requests))
            first_at, first = sample.requests[0]
            if now > first_at:
                sample.requests_per_second = (cell.requests - first) / (now - first_at)
        for pid in pids:
            self._measure(pid, self.samples.setdefault(pid, ProcessSample()), now)
        for pid in list(self.samples):
            if pid not in pids:
                del self.samples[pid]

    def _measure(self, pid: int, sample: ProcessSample, now: float) -> None:
        psutil = self._psutil
        if not psutil:
            return
        with contextlib.suppress(Exception):  # gone between two readings: keep the last
            if sample.process is None:
                sample.process = psutil.Process(pid)
            with sample.process.oneshot():
                sample.rss = int(sample.process.memory_info().rss)
                times = sample.process.cpu_times()
            cpu = float(times.user + times.system)
            if sample.cpu_seconds is not None and now > sample.cpu_at:
                sample.cpu_percent = max(0.0, (cpu - sample.cpu_seconds) / (now - sample.cpu_at) * 100.0)
            sample.cpu_seconds, sample.cpu_at = cpu, now

    def get(self, pid: int) -> ProcessSample:
        return self.samples.get(pid) or ProcessSample()
