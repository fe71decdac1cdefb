"""The rows of the master's worker table: processes, worker ids, rolling reloads.

* :class:`Worker` is one worker *process* (the master's table is keyed by pid);
* :class:`Slot` is the history of one worker *id* (1..N, what people see), across the
  processes that held it: consecutive failures, back-off, restarts by reason;
* :class:`RollingReload` is one rolling reload in progress or just ended, which the
  control socket follows to answer ``asgictl reload``.

A worker's state is :class:`~asgictl.supervisor.slots.WorkerState`, the vocabulary its
shared-memory cell speaks too. The decisions over these rows are the master's.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field

from asgictl.supervisor import policy
from asgictl.supervisor.slots import WorkerState


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

    @property
    def live(self) -> bool:
        """Booting or serving, not on its way out."""
        return self.state.live


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
