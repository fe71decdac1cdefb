"""The master's worker table: processes, worker ids, rolling reloads.

* :class:`WorkerTable` holds every worker process by pid and every worker id's
  :class:`Slot`, and answers the questions the master, status, metrics and sd_notify ask
  of it (who serves, who boots in a slot, who is live);
* :class:`Worker` is one worker *process*;
* :class:`Slot` is the history of one worker *id* (1..N, what people see), across the
  processes that held it: consecutive failures, back-off, restarts by reason;
* :class:`RollingReload` is one rolling reload in progress or just ended: which worker
  id it replaces next, and how it ended (the control socket answers ``asgictl reload``
  from it).

A worker's state is :class:`~asgictl.supervisor.slots.WorkerState`, the vocabulary its
shared-memory cell speaks too. The decisions over these rows are the master's.
"""

from __future__ import annotations

import collections
import enum
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from asgictl.supervisor import policy
from asgictl.supervisor.slots import WorkerState

#: A fast stop (QUIT, a second TERM) gives a worker this long before SIGKILL.
FAST_STOP_SECONDS = 3.0
#: Between asking a worker for its stacks and SIGKILLing it (faulthandler writes at once).
DUMP_GRACE = 0.5


@dataclass
class Worker:
    """One worker process as the master tracks it (times are ``time.monotonic()``)."""

    worker_id: int
    pid: int
    #: Its shared-memory cell (stats and, with --metrics-bind, response counters).
    cell: int
    #: The reload generation it was forked in: a rolling reload replaces older ones.
    generation: int
    started: float
    limits: policy.Limits
    state: WorkerState = WorkerState.BOOTING
    #: Why it was started, then why it is being stopped (a policy reason or "shutdown").
    reason: str = ""
    ready_at: float = 0.0
    stop_deadline: float = 0.0
    kill_at: float = 0.0
    killed_at: float = 0.0
    #: Resident memory in bytes, sampled for --max-worker-memory (None: not sampled).
    rss: int | None = None
    #: The last request count read from its cell (kept after it exits).
    requests: int = 0
    next_rss_sample: float = 0.0

    def __str__(self) -> str:
        """How log lines name it: "Worker 2 (pid 4242)"."""
        return f"Worker {self.worker_id} (pid {self.pid})"

    @property
    def live(self) -> bool:
        """Booting or serving, not on its way out."""
        return self.state.live

    def stop(self, reason: str, now: float, grace: float, fast: bool = False) -> int | None:
        """Begin its stop (or hurry one up): the signal to send it, or None when it is
        stopping already (and ``fast`` adds nothing) or being killed.

        Fast: QUIT, FAST_STOP_SECONDS to go. Else ``grace`` seconds, and TERM; HUP for a
        worker that served and is replaced (reload, recycle): its WebSockets then close
        with 1012 "service restart" rather than 1001 "going away" (RFC 6455 7.4.1).
        """
        if self.state is WorkerState.KILLING or (self.state is WorkerState.STOPPING and not fast):
            return None
        self.state = WorkerState.STOPPING
        self.reason = reason
        if fast:
            self.stop_deadline = min(self.stop_deadline or now + FAST_STOP_SECONDS, now + FAST_STOP_SECONDS)
            return signal.SIGQUIT
        self.stop_deadline = now + grace
        replaced = reason not in (policy.SHUTDOWN, policy.SCALE) and self.ready_at > 0
        return signal.SIGHUP if replaced else signal.SIGTERM

    def kill(self, reason: str, now: float) -> None:
        """Mark it for SIGKILL in DUMP_GRACE seconds (its stacks are asked for first)."""
        self.state = WorkerState.KILLING
        self.reason = reason
        self.kill_at = now + DUMP_GRACE


@dataclass
class Slot:
    """The history of one worker id, across the processes that held it."""

    #: Consecutive deaths that were not asked for (reset once a worker stays ready).
    failures: int = 0
    respawn_at: float = 0.0
    #: Back-off for recycle replacements that failed to boot.
    replace_after: float = 0.0
    restarts: int = 0
    last_reason: str = ""
    #: Restarts by reason (the ``asgictl_worker_restarts`` counter).
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def restarted(self, reason: str) -> None:
        """Count one replacement of this slot's worker, for status and metrics."""
        self.restarts += 1
        self.last_reason = reason
        self.reasons[reason] += 1

    def crashed(self, now: float, ready_for: float) -> float:
        """Its worker died unasked after serving ``ready_for`` seconds: the delay before
        the slot is refilled (none the first time; growing while it keeps dying)."""
        if ready_for > policy.STABLE_AFTER:
            self.failures = 0
        self.failures += 1
        self.restarted(policy.CRASH)
        delay = policy.backoff_delay(self.failures)
        self.respawn_at = now + delay
        return delay

    def boot_failed(self, now: float) -> None:
        """A worker failed to boot here: back off refilling the slot and replacing its
        worker (at least BACKOFF_BASE)."""
        self.failures += 1
        delay = max(policy.backoff_delay(self.failures), policy.BACKOFF_BASE)
        self.respawn_at = self.replace_after = now + delay


class ReloadOutcome(enum.Enum):
    """How a rolling reload ended."""

    #: Every slot runs a worker of the new generation.
    COMPLETE = "complete"
    #: A new worker failed to boot: the previous workers keep serving.
    ABORTED = "aborted"
    #: A stop began.
    INTERRUPTED = "interrupted"
    #: A newer reload took over (:attr:`RollingReload.successor`).
    SUPERSEDED = "superseded"


@dataclass
class RollingReload:
    """One rolling reload: the worker ids still to replace, the new worker being waited
    for, those done. The master moves it on; others read it."""

    generation: int
    #: Worker ids still to replace, in order.
    pending: list[int]
    started: float
    #: The new worker whose READY the reload waits for, if any.
    booting: Worker | None = None
    #: Worker ids replaced so far.
    done: list[int] = field(default_factory=list)
    #: None while it runs.
    outcome: ReloadOutcome | None = None
    #: The reload that superseded this one.
    successor: RollingReload | None = None

    def end(self, outcome: ReloadOutcome) -> None:
        self.outcome = outcome

    def next_to_replace(self, table: WorkerTable, target: int) -> int | None:
        """The worker id to fork a new worker for now, taken off :attr:`pending`; None
        when the reload must wait (a replacement of another kind boots there) or has no
        slot left (then :attr:`pending` is empty). Ids past the target, empty slots
        (respawn refills them) and slots already on this generation are skipped."""
        while self.pending:
            worker_id = self.pending[0]
            live = table.live(worker_id) if worker_id <= target else []
            if not live or all(w.generation >= self.generation for w in live):
                self.pending.pop(0)
                continue
            if any(w.state is WorkerState.BOOTING for w in live):
                return None
            return self.pending.pop(0)
        return None


class WorkerTable:
    """Every worker process (by pid) and every worker id's :class:`Slot`."""

    def __init__(self) -> None:
        self._by_pid: dict[int, Worker] = {}
        #: Each worker id's history, created on first use (:meth:`slot`).
        self.slots: dict[int, Slot] = {}

    def __iter__(self) -> Iterator[Worker]:
        """Every worker process, in the order they were forked. A snapshot: the caller
        may add and remove workers meanwhile."""
        return iter(list(self._by_pid.values()))

    def __len__(self) -> int:
        return len(self._by_pid)

    def add(self, worker: Worker) -> None:
        self._by_pid[worker.pid] = worker

    def remove(self, pid: int) -> Worker | None:
        """Forget the process ``pid``; the Worker it was, or None if unknown."""
        return self._by_pid.pop(pid, None)

    def slot(self, worker_id: int) -> Slot:
        """The history of ``worker_id`` (a fresh one the first time)."""
        return self.slots.setdefault(worker_id, Slot())

    def live(self, worker_id: int) -> list[Worker]:
        """The booting or serving processes of ``worker_id`` (two during a replacement)."""
        return [w for w in self._by_pid.values() if w.worker_id == worker_id and w.live]

    def booting_in(self, worker_id: int) -> bool:
        return any(w.worker_id == worker_id and w.state is WorkerState.BOOTING for w in self._by_pid.values())

    def ready(self, up_to: int | None = None) -> list[Worker]:
        """The workers that serve; with ``up_to``, only those of worker ids 1..up_to."""
        return [
            w
            for w in self._by_pid.values()
            if w.state is WorkerState.READY and (up_to is None or w.worker_id <= up_to)
        ]
