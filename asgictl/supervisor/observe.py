"""What the master measures about its processes beyond the shared-memory cells.

The cells (``slots.py``) carry what only a worker knows (requests, open connections,
heartbeat). This module adds what the master can measure from outside, once a second:
RSS and CPU% of the master and of every worker (psutil), and each worker's request rate
over the last few seconds, from successive readings of its request counter.
:func:`status_report` assembles the cells, the worker table and these samples into the
report the control socket's ``status`` answers with; the metrics responder reads the
samples too. Nothing here talks to a worker.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgictl import __version__
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.slots import WorkerState

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master
    from asgictl.supervisor.workers import Worker

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


class Sampler(MasterHooks):
    """Once-a-second psutil and request-rate samples of the master and its workers."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.samples: dict[int, ProcessSample] = {}
        self._next: float | None = None
        self._psutil: Any = None
        #: Requests served by workers that have exited (the master's count is since start).
        self.retired_requests = 0

    def worker_exited(self, master: Master, worker: Worker) -> None:
        """Keep the requests of a reaped worker."""
        self.retired_requests += worker.requests

    def tick(self, master: Master, now: float) -> None:
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
        pids = {os.getpid()}
        for w in master.workers:
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


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def working_directory() -> str | None:
    """The master's working directory (None if it was removed under it)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _master_state(master: Master) -> str:
    """booting (first workers not all ready yet), ready, reloading or stopping."""
    if master.stopping:
        return "stopping"
    if master.reloading is not None:
        return "reloading"
    return "ready" if master.all_ready_once else "booting"


def worker_rows(master: Master, now: float) -> list[dict[str, Any]]:
    """Every worker process of the master, by worker id then age: its table row, the
    figures of its cell and its slot's restarts."""
    rows = []
    for w in sorted(master.workers, key=lambda w: (w.worker_id, w.started)):
        cell = master.stats.read(w.cell)
        slot = master.workers.slots.get(w.worker_id)
        rows.append(
            {
                "id": w.worker_id,
                "pid": w.pid,
                "state": str(w.state),
                "age": round(now - w.started, 3),
                "generation": w.generation,
                "requests": cell.requests,
                "connections": cell.connections,
                "heartbeat_age": round(now - cell.heartbeat, 3),
                "rss": w.rss,
                "restarts": slot.restarts if slot else 0,
                "last_reason": slot.last_reason if slot else "",
            }
        )
    return rows


def status_report(master: Master, sampler: Sampler, now: float) -> dict[str, Any]:
    """What ``asgictl status`` shows: ``{"master": {...}, "workers": [{...}, ...]}``.

    Each worker: its :func:`worker_rows` row plus requests/s, RSS (bytes) and CPU% of the
    last sample; a worker stopping while the master is not shows as ``draining``
    (replaced or scaled away, finishing its requests). The master: pid, state, age (s),
    version, app, working directory, target, generation, totals over its workers since
    start, its own RSS and CPU%, and its listeners as URLs.
    """
    workers = []
    for row in worker_rows(master, now):
        sample = sampler.get(row["pid"])
        state = row["state"]
        if state == str(WorkerState.STOPPING) and not master.stopping:
            state = "draining"
        workers.append(
            {
                **row,
                "state": state,
                "requests_per_second": round(sample.requests_per_second, 2),
                "rss": sample.rss if sample.rss is not None else row["rss"],
                "cpu_percent": _rounded(sample.cpu_percent, 1),
            }
        )
    own = sampler.get(os.getpid())
    return {
        "master": {
            "pid": os.getpid(),
            "state": _master_state(master),
            "age": round(now - master.started, 3),
            "version": __version__,
            "app": master.app_label,
            "directory": working_directory(),
            "target": master.target,
            "generation": master.generation,
            "requests": sampler.retired_requests + sum(w["requests"] for w in workers),
            "connections": sum(w["connections"] for w in workers),
            "requests_per_second": round(sum(w["requests_per_second"] for w in workers), 2),
            "rss": own.rss,
            "cpu_percent": _rounded(own.cpu_percent, 1),
            "listeners": master.listeners.urls("https" if master.config.is_ssl else "http"),
        },
        "workers": workers,
    }
