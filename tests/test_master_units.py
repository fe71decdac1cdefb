"""The master's decisions, without a process: a fake process table and a fake clock.

The Master is real (its worker table, shared-memory cells, policy, rolling reloads,
hooks); only its hands on the operating system (:class:`Processes`: fork, kill, reap)
and its clock are replaced. A test makes a worker ready by writing READY into its cell,
as a worker does, and makes it exit with a wait status, as the kernel does.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator

import pytest

from asgictl.config import Config
from asgictl.logs import MARK, RESTATED, ROUTINE
from asgictl.supervisor import policy
from asgictl.supervisor.child import WorkerContext
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.listeners import Listeners
from asgictl.supervisor.master import Master
from asgictl.supervisor.slots import WorkerState
from asgictl.supervisor.workers import ReloadOutcome


def exited(code: int) -> int:
    """The wait status of a process that exited with ``code``."""
    return code << 8


def killed(sig: int) -> int:
    """The wait status of a process killed by ``sig``."""
    return sig


class FakeProcesses:
    """Forks nothing: hands out pids, records signals, reaps the exits a test makes up.
    A SIGKILL is an exit at once, as in the kernel."""

    def __init__(self) -> None:
        self.next_pid = 1000
        self.alive: dict[int, WorkerContext] = {}
        self.sent: list[tuple[int, int]] = []
        self._exits: list[tuple[int, int]] = []

    def fork_worker(self, ctx: WorkerContext) -> int:
        self.next_pid += 1
        self.alive[self.next_pid] = ctx
        return self.next_pid

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))
        if sig == signal.SIGKILL and pid in self.alive:
            self.exit(pid, killed(signal.SIGKILL))

    def exits(self) -> Iterator[tuple[int, int]]:
        while self._exits:
            yield self._exits.pop(0)

    def rss(self, pid: int) -> int | None:
        return None

    # -- what a test makes happen ------------------------------------------------------

    def ready(self, pid: int) -> None:
        ctx = self.alive[pid]
        ctx.stats.writer(ctx.cell).ready()

    def serve(self, pid: int, requests: int) -> None:
        ctx = self.alive[pid]
        ctx.stats.writer(ctx.cell).beat(requests, 0)

    def exit(self, pid: int, status: int) -> None:
        del self.alive[pid]
        self._exits.append((pid, status))

    def signals_to(self, pid: int) -> list[int]:
        return [sig for p, sig in self.sent if p == pid]


class Clock:
    def __init__(self) -> None:
        # Near the real clock: the cells' heartbeats are stamped with time.monotonic().
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


class Heard(MasterHooks):
    def __init__(self) -> None:
        self.events: list[str] = []

    def ready(self, master: Master) -> None:
        self.events.append("ready")

    def reloading(self, master: Master) -> None:
        self.events.append("reloading")

    def reloaded(self, master: Master) -> None:
        self.events.append("reloaded")

    def stopping(self, master: Master) -> None:
        self.events.append("stopping")


class Harness:
    def __init__(self, **options: object) -> None:
        options.setdefault("timeout", 3600.0)  # heartbeats are real time: never "hung" here
        self.processes = FakeProcesses()
        self.clock = Clock()
        config = Config("app:app", **options)
        self.master = Master(config, Listeners([], []), processes=self.processes, clock=self.clock)
        self.heard = Heard()
        self.master.subscribe(self.heard)

    def step(self, seconds: float = 0.0) -> None:
        self.clock.now += seconds
        self.master.step()

    def pids(self, state: WorkerState | None = None) -> list[int]:
        return sorted(w.pid for w in self.master.workers if state is None or w.state is state)

    def boot_all(self) -> list[int]:
        """Step until every slot has a ready worker (first start: one boots alone)."""
        for _ in range(2 * self.master.target + 2):
            self.step()
            for pid in self.pids(WorkerState.BOOTING):
                self.processes.ready(pid)
        self.step()
        assert self.master.all_ready_once
        return self.pids(WorkerState.READY)

    def close(self) -> None:
        self.master.close()


@pytest.fixture
def harness() -> Iterator[type[Harness]]:
    made: list[Harness] = []

    def make(**options: object) -> Harness:
        h = Harness(**options)
        made.append(h)
        return h

    yield make  # type: ignore[misc]
    for h in made:
        h.close()


def test_a_worker_that_fails_to_boot_on_first_start_halts_the_master_with_exit_3(harness) -> None:
    h = harness(workers=3)
    h.step()
    (first,) = h.pids()  # one boots alone on first start: a broken app fails once
    h.processes.exit(first, exited(3))
    h.step()
    assert h.master.exit_code == 3 and h.master.stopping and h.master.fast
    assert h.pids() == [] and h.heard.events == ["stopping"]


def test_boot_failures_in_a_row_with_none_serving_halt_the_master_with_exit_3(harness) -> None:
    h = harness(workers=1)
    (pid,) = h.boot_all()
    h.processes.exit(pid, killed(signal.SIGSEGV))
    for failure in range(1, policy.MAX_BOOT_FAILURES + 1):
        h.step(policy.BACKOFF_MAX)  # past any back-off: the slot is refilled
        (booting,) = h.pids(WorkerState.BOOTING)
        assert not h.master.stopping
        h.processes.exit(booting, exited(3))
        h.step()
        assert h.master.boot_failures == failure
    assert h.master.exit_code == 3 and h.master.stopping


def test_a_reload_whose_new_worker_fails_keeps_the_old_ones(
    harness, error_log: list[logging.LogRecord]
) -> None:
    h = harness(workers=2)
    old = h.boot_all()
    reload = h.master.reload()
    assert reload is not None
    h.step()
    new = reload.booting
    assert new is not None and new.pid not in old and new.worker_id == 1
    h.processes.exit(new.pid, exited(3))  # SyntaxError in the new code
    h.step()
    assert reload.outcome is ReloadOutcome.ABORTED and h.master.reloading is None
    assert h.pids(WorkerState.READY) == old and h.pids() == old
    assert all(h.processes.signals_to(pid) == [] for pid in old)  # never told to stop
    assert h.heard.events[-2:] == ["reloading", "reloaded"]
    assert not h.master.stopping and h.master.exit_code == 0
    h.step(60.0)
    assert h.pids() == old  # and nothing retries the broken code on its own
    # Dev mode's console keeps the story short by these marks, set where the lines are logged.
    marks = {r.getMessage().split(" ")[0]: getattr(r, MARK, None) for r in error_log}
    assert marks["Booting"] == ROUTINE[MARK] and marks["Reloading"] == ROUTINE[MARK]
    assert marks["Reload"] == RESTATED[MARK]


def test_a_reload_replaces_each_worker_once_its_successor_is_ready(harness) -> None:
    h = harness(workers=2)
    old = h.boot_all()
    reload = h.master.reload()
    assert reload is not None
    for old_pid in old:
        h.step()
        new = reload.booting
        assert new is not None
        assert h.processes.signals_to(old_pid) == []  # still serving while its successor boots
        h.processes.ready(new.pid)
        h.step()
        assert h.processes.signals_to(old_pid) == [signal.SIGHUP]  # WebSockets close 1012
        h.processes.exit(old_pid, exited(0))
    h.step()
    assert reload.outcome is ReloadOutcome.COMPLETE and reload.done == [1, 2]
    assert all(w.generation == 2 for w in h.master.workers)


def test_recycling_waits_for_the_replacement_to_be_ready(harness) -> None:
    h = harness(workers=1, limit_max_requests=10)
    (old,) = h.boot_all()
    h.processes.serve(old, 10)
    h.step()
    (new,) = h.pids(WorkerState.BOOTING)
    assert h.pids(WorkerState.READY) == [old] and h.processes.signals_to(old) == []
    h.step(5.0)
    assert h.pids(WorkerState.BOOTING) == [new]  # one replacement, not one per pass
    assert h.processes.signals_to(old) == []
    h.processes.ready(new)
    h.step()
    assert h.processes.signals_to(old) == [signal.SIGHUP]
    h.processes.exit(old, exited(0))
    h.step()
    assert h.pids() == [new]
    slot = h.master.workers.slot(1)
    assert slot.reasons == {policy.MAX_REQUESTS: 1} and slot.failures == 0


def test_a_slot_that_keeps_dying_is_refilled_with_growing_back_off(harness) -> None:
    h = harness(workers=1)
    (pid,) = h.boot_all()
    for failures in range(1, 6):
        h.processes.exit(pid, killed(signal.SIGSEGV))
        h.step()
        delay = policy.backoff_delay(failures)
        assert h.master.workers.slot(1).failures == failures
        if delay:
            assert h.pids() == []  # not yet
            h.step(delay * 0.9)
            assert h.pids() == []
            h.step(delay * 0.1 + 0.001)
        (pid,) = h.pids(WorkerState.BOOTING)
        h.processes.ready(pid)
        h.step()
    assert policy.backoff_delay(5) == 4.0
    # A worker that stays ready long enough proves the slot healthy: the next crash
    # is refilled at once again.
    h.step(policy.STABLE_AFTER + 1)
    assert h.master.workers.slot(1).failures == 0
    h.processes.exit(pid, killed(signal.SIGSEGV))
    h.step()
    assert len(h.pids(WorkerState.BOOTING)) == 1


def test_a_stop_tells_the_workers_and_ends_when_they_are_gone(harness) -> None:
    h = harness(workers=2, timeout_graceful_shutdown=10.0)
    pids = h.boot_all()
    h.master.stop()
    assert h.heard.events[-1] == "stopping"
    assert all(h.processes.signals_to(pid) == [signal.SIGTERM] for pid in pids)
    h.master.stop(fast=True)  # a second TERM (or QUIT) escalates
    assert all(h.processes.signals_to(pid)[-1] == signal.SIGQUIT for pid in pids)
    for pid in pids:
        h.processes.exit(pid, exited(0))
    h.step()
    assert len(h.master.workers) == 0 and h.master.exit_code == 0
