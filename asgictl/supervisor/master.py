"""The master: fork workers, watch them, act on signals. No asyncio, no app code.

Every decision is taken in the master's loop (:mod:`~asgictl.supervisor.loop`), in one
thread, from state that cannot change under it. Each pass (:meth:`Master.step`):

1. handles the signals queued since the last pass and calls handed over by threads;
2. reaps exited children (never blocks);
3. reads every worker's shared-memory cell: booting -> ready transitions, heartbeats;
4. applies the policy: respawn (with back-off), recycle, kill hung workers, enforce
   every deadline (boot, graceful stop, stack dump), advance a rolling reload;
5. tells its subscribers (:class:`~asgictl.supervisor.hooks.MasterHooks`) the pass ended.

Worker ids (1..N, the "slots" people see) are distinct from processes: during a
replacement a slot briefly has two processes, the old one serving until the new one is
ready. The rule that makes every replacement graceful is one line: *when a worker becomes
ready, the other live workers of its slot are told to stop*.

Processes are forked, signalled and reaped through :class:`Processes`, and time is read
from ``clock``: a test hands in its own of both and drives :meth:`Master.step`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgictl.config import Config
from asgictl.logs import RESTATED, ROUTINE, SERVING, plural, reopen_log_files
from asgictl.supervisor import policy, upgrade
from asgictl.supervisor.child import DUMP_SIGNAL, WorkerContext, child_config
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.listeners import Listeners
from asgictl.supervisor.loop import Loop
from asgictl.supervisor.processes import Processes, describe_exit
from asgictl.supervisor.slots import StatsTable, WorkerState
from asgictl.supervisor.workers import ReloadOutcome, RollingReload, Slot, Worker, WorkerTable

if TYPE_CHECKING:
    from asgictl.supervisor.broker import Broker
    from asgictl.supervisor.metrics import MetricsTable

logger = logging.getLogger("asgictl.error")

#: How often the loop wakes when nothing happens (heartbeat and deadline resolution).
POLL_INTERVAL = 0.25
#: Beyond --timeout-graceful-shutdown, what a worker gets to cancel what is left and run
#: lifespan shutdown (the Server's own post-deadline steps take up to ~3 s).
GRACEFUL_MARGIN = 5.0
#: A SIGKILLed process not reaped after this long is forgotten (stuck in the kernel).
REAP_DEADLINE = 10.0
#: --balance reuseport: a worker whose event loop has not beaten for this long gets no
#: new connections until it beats again (or is replaced); workers beat once a second.
STEER_SILENCE = 3.0
#: Shared-memory cells (processes, not slots: a replacement needs a second cell).
CELLS = 1024
MAX_WORKERS = CELLS // 4

#: The signals the master acts on (CHLD and WINCH only wake it up).
SIGNALS = (
    *(signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU),
    *(signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH),
)


class Master:
    """The supervisor of one ``asgictl start``: owns the worker table, the shared-memory
    cells, the listeners (binding is done before; closing is its), the reload generation
    and the stop; forks, signals and reaps the workers and takes every decision.

    ``config`` is the master's Config (workers get :func:`child_config`'s); ``listeners``
    are bound already; ``preloaded`` is the app object imported by ``--preload``, or
    None. ``loop``, ``broker`` (``--pubsub master``), ``metrics`` (``--metrics-bind``)
    are made by :func:`~asgictl.supervisor.wiring.run_master`; ``processes`` and
    ``clock`` are for tests. :meth:`run` returns the exit code: 0, 1 when a worker had to
    be killed past its stop deadline, 3 when the app does not boot.
    """

    def __init__(
        self,
        config: Config,
        listeners: Listeners,
        preloaded: Any = None,
        *,
        loop: Loop | None = None,
        broker: Broker | None = None,
        metrics: MetricsTable | None = None,
        processes: Processes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.app_label = config.app if isinstance(config.app, str) else getattr(config.app, "__name__", "app")
        self.child_config = child_config(config, preloaded)
        self.preloaded = preloaded is not None
        self.target = min(config.workers, MAX_WORKERS)
        self.stats = StatsTable(CELLS)
        self.workers = WorkerTable()
        self.generation = 1
        self.exit_code = 0
        self.clock = clock
        self.processes = processes or Processes(SIGNALS)
        self.started = clock()
        self.all_ready_once = False
        self.was_full = False
        self.boot_failures = 0  # consecutive, across slots
        self.stopping = False
        self.fast = False
        self.reloading: RollingReload | None = None
        #: --reload: an app that fails to boot on first start waits for a change (held)
        #: instead of stopping the master; :meth:`resume` tries again.
        self.wait_for_fix = config.reload
        self.held = False
        #: USR2: the master that re-executed this one, the one this one started.
        self.upgrade = upgrade.Upgrade(upgrade.predecessor())
        self.loop = loop or Loop()
        #: --pubsub master: the relay a socket pair per worker joins (else None).
        self.broker = broker
        #: --metrics-bind: the per-response counters handed to workers (else None).
        self.metrics = metrics
        self._scheme = "https" if config.is_ssl else "http"
        self._subscribers: list[MasterHooks] = []

    # ------------------------------------------------------------------ public seams

    def subscribe(self, hooks: MasterHooks) -> None:
        """Have ``hooks`` told of the master's life (after those subscribed before)."""
        self._subscribers.append(hooks)

    def _notify(self, call: Callable[[MasterHooks], None]) -> None:
        for hooks in self._subscribers:
            try:
                call(hooks)
            except Exception:
                logger.exception("Error in a master hook of %s", type(hooks).__name__)

    def resume(self) -> None:
        """After a held first-start failure (--reload): boot the workers again."""
        self.held = False

    def reload(self) -> RollingReload | None:
        """Rolling restart: one slot after another, each gated on its new worker's READY.

        Returns the reload begun (None while stopping); one already running is superseded.
        """
        if self.stopping:
            return None
        if self.preloaded:
            logger.warning("--preload: new workers reuse the app imported at start; USR2 loads new code")
        self.generation += 1
        ids = sorted(self._slot_ids())
        workers = plural(len(ids), "worker")
        logger.info("Reloading %s one by one (generation %d)", workers, self.generation, extra=ROUTINE)
        previous = self.reloading
        self.reloading = RollingReload(self.generation, ids, self.clock())
        if previous is not None:
            previous.successor = self.reloading
            previous.end(ReloadOutcome.SUPERSEDED)
        self._notify(lambda hooks: hooks.reloading(self))
        return self.reloading

    def scale(self, count: int) -> None:
        """Run ``count`` workers (clamped to 1..MAX_WORKERS): new slots boot, slots past
        the count drain."""
        count = max(1, min(count, MAX_WORKERS))
        if count != self.target:
            logger.info("Scaling from %d to %s", self.target, plural(count, "worker"))
            self.target = count
            self.was_full = False

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Catch the master's signals and step until stopped and every worker is gone;
        then :meth:`close`. Returns the exit code."""
        self.loop.catch_signals(SIGNALS)
        try:
            logger.info("Started master process [%d] for %s", os.getpid(), self.app_label)
            while not (self.stopping and not self.workers):
                self.step()
                self.loop.wait(POLL_INTERVAL)
        finally:
            self.close()
        return self.exit_code

    def step(self) -> None:
        """One pass of the loop (see the module's docstring); :meth:`run` repeats it."""
        for sig in self.loop.pending_signals():
            self._handle_signal(sig)
        self.loop.run_calls()
        self._reap()
        now = self.clock()
        self._observe(now)
        self._enforce_deadlines(now)
        if not self.stopping:
            self._recycle(now)
            self._maintain(now)
            self._advance_reload(now)
            self._report_full()
            self._steer(now)
        tick = self.clock()
        self._notify(lambda hooks: hooks.tick(self, tick))

    # ------------------------------------------------------------------ signals

    def _handle_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stop(fast=self.stopping)  # a second TERM escalates
        elif sig == signal.SIGQUIT:
            self.stop(fast=True)
        elif sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGTTIN:
            self.scale(self.target + 1)
        elif sig == signal.SIGTTOU:
            self.scale(self.target - 1)
        elif sig == signal.SIGUSR1:
            logger.info("Reopening log files")
            reopen_log_files()
            self._signal_all(signal.SIGUSR1, only_ready=True)
        elif sig == signal.SIGUSR2 and not self.stopping:
            self.upgrade.start(self.listeners)

    def _signal_all(self, sig: int, only_ready: bool = False) -> None:
        for w in self.workers:
            if not only_ready or w.state is WorkerState.READY:
                self.processes.kill(w.pid, sig)

    # ------------------------------------------------------------------ forking

    def _slot_ids(self) -> list[int]:
        return list(range(1, self.target + 1))

    def _spawn(self, worker_id: int, reason: str) -> Worker:
        cell = self.stats.allocate()
        # asgictl.pubsub (master backend): a fresh socket pair per worker process, made
        # before forking; the child keeps one end, the broker the other.
        pair = self.broker.prepare() if self.broker is not None else None
        sockets = self.listeners.for_slot(worker_id)
        ctx = WorkerContext(
            worker_id=worker_id,
            cell=cell,
            stats=self.stats,
            sockets=sockets,
            config=self.child_config,
            app_label=self.app_label,
            close_fds=[
                *self.loop.private_fds(),
                *([pair[0].fileno()] if pair else []),
                # Other slots' sockets: a copy held here would keep them open (and
                # queueing) after the master closed its own.
                *(sock.fileno() for sock in self.listeners.all_sockets() if sock not in sockets),
            ],
            pubsub_socket=pair[1] if pair else None,
            metrics=self.metrics,
            master_pid=os.getpid(),
        )
        try:
            pid = self.processes.fork_worker(ctx)
        except OSError:
            self.stats.release(cell)
            for end in pair or ():
                end.close()
            raise
        if pair is not None and self.broker is not None:
            pair[1].close()  # the worker's end lives in the worker only: its exit is our EOF
            self.broker.attach(pair[0], pid)
        self.stats.set_pid(cell, pid)
        limits = policy.Limits.draw(self.config)
        worker = Worker(worker_id, pid, cell, self.generation, self.clock(), limits, reason=reason)
        self.workers.add(worker)
        why = f" ({reason})" if reason else ""
        logger.info("Booting worker %d with pid %d%s", worker_id, pid, why, extra=ROUTINE)
        return worker

    # ------------------------------------------------------------------ reaping

    def _reap(self) -> None:
        for pid, status in self.processes.exits():
            if self.upgrade.reaped(pid, status):
                continue
            worker = self.workers.remove(pid)
            if worker is not None:
                worker.requests = self.stats.read(worker.cell).requests
                self._notify(lambda hooks, w=worker: hooks.worker_exited(self, w))
                self.stats.release(worker.cell)
                self._on_exit(worker, status)

    def _on_exit(self, w: Worker, status: int) -> None:
        now = self.clock()
        slot = self.workers.slot(w.worker_id)
        how = describe_exit(status)
        if w.ready_at:
            how += f" after serving {plural(w.requests, 'request')}"
        if w.state in (WorkerState.STOPPING, WorkerState.KILLING):
            logger.info("%s %s [%s]", w, how, w.reason or "stopped", extra=ROUTINE)
            if w.reason == policy.BOOT_TIMEOUT:
                self._boot_failed(w, slot, now)
            return
        if w.state is WorkerState.BOOTING:
            logger.error("%s failed to boot: %s", w, how)
            self._boot_failed(w, slot, now)
            return
        # A ready worker died on its own: a crash (segfault, os._exit, OOM killer...).
        delay = slot.crashed(now, now - w.ready_at if w.ready_at else 0.0)
        respawn = f"respawning in {delay:.1f} s" if delay else "respawning"
        logger.warning("%s %s unexpectedly; %s", w, how, respawn)

    def _boot_failed(self, w: Worker, slot: Slot, now: float) -> None:
        self.boot_failures += 1
        if not self.all_ready_once and not self.stopping and self.wait_for_fix:
            self.held = True
            logger.error("The app failed to boot: waiting for a change to try again (--reload)")
            return
        if not self.all_ready_once and not self.stopping:
            # First start: the app is broken. Stop, do not loop; the worker printed why.
            logger.error("A worker failed to boot on first start: the master stops")
            self.exit_code = 3
            self.stop(fast=True)
            return
        reload = self.reloading
        if reload is not None and reload.booting is w:
            logger.error(
                "Reload aborted: the new worker failed to boot; the previous workers keep serving",
                extra=RESTATED,
            )
            reload.end(ReloadOutcome.ABORTED)
            self.reloading = None
            self._notify(lambda hooks: hooks.reloaded(self))
            return
        slot.boot_failed(now)
        if self.boot_failures >= policy.MAX_BOOT_FAILURES and not self.ready_workers():
            logger.error(
                "%d workers in a row failed to boot and none is serving: the master stops", self.boot_failures
            )
            self.exit_code = 3
            self.stop(fast=True)

    # ------------------------------------------------------------------ observing

    def ready_workers(self, within_target: bool = False) -> list[Worker]:
        """The workers that serve; with ``within_target``, only those of slots 1..target
        (not those of a scale-down on their way out)."""
        return self.workers.ready(self.target if within_target else None)

    def _observe(self, now: float) -> None:
        for w in self.workers:
            cell = self.stats.read(w.cell)
            if w.state is WorkerState.BOOTING and cell.state is WorkerState.READY:
                self._became_ready(w, now)
            elif w.state is WorkerState.READY and policy.is_hung(now, cell.heartbeat, self.config.timeout):
                logger.error(
                    "%s is hung: its event loop has not run for %.1f s (--timeout %g);"
                    " dumping its stacks and killing it",
                    w,
                    now - cell.heartbeat,
                    self.config.timeout,
                )
                self.workers.slot(w.worker_id).restarted(policy.HUNG)
                self._dump_and_kill(w, policy.HUNG, now)

    def _became_ready(self, w: Worker, now: float) -> None:
        w.state = WorkerState.READY
        w.ready_at = now
        self.boot_failures = 0
        self.workers.slot(w.worker_id)
        logger.info("%s ready in %.2f s", w, now - w.started, extra=ROUTINE)
        # The one rule behind every graceful replacement: the newcomer serves, so the
        # others of its slot may now drain.
        for other in self.workers.live(w.worker_id):
            if other is not w:
                self._stop_worker(other, other.reason or w.reason or "replaced", now)
        if self.reloading is not None and self.reloading.booting is w:
            self.reloading.done.append(w.worker_id)
            self.reloading.booting = None

    # ------------------------------------------------------------------ stopping workers

    def _stop_worker(self, w: Worker, reason: str, now: float, fast: bool = False) -> None:
        grace = self.config.timeout_graceful_shutdown + GRACEFUL_MARGIN
        sig = w.stop(reason, now, grace, fast)
        if sig is not None:
            self.processes.kill(w.pid, sig)

    def _dump_and_kill(self, w: Worker, reason: str, now: float) -> None:
        w.kill(reason, now)
        self.processes.kill(w.pid, DUMP_SIGNAL)

    def _enforce_deadlines(self, now: float) -> None:
        for w in self.workers:
            if w.state is WorkerState.BOOTING and now - w.started > self.config.timeout_worker_boot:
                logger.error(
                    "%s did not boot within %g s (--timeout-worker-boot)", w, self.config.timeout_worker_boot
                )
                self._dump_and_kill(w, policy.BOOT_TIMEOUT, now)
            elif w.state is WorkerState.STOPPING and now > w.stop_deadline:
                logger.warning("%s still running past its stop deadline; killing it", w)
                if self.exit_code == 0 and self.stopping:
                    self.exit_code = 1
                self._dump_and_kill(w, w.reason, now)
            elif w.state is WorkerState.KILLING:
                if not w.killed_at and now >= w.kill_at:
                    w.killed_at = now
                    self.processes.kill(w.pid, signal.SIGKILL)
                elif w.killed_at and now - w.killed_at > REAP_DEADLINE:
                    logger.error("Worker pid %d did not die after SIGKILL; forgetting it", w.pid)
                    self.workers.remove(w.pid)
                    self.stats.release(w.cell)

    def stop(self, fast: bool = False) -> None:
        """Stop: refuse new connections, tell every worker (TERM; QUIT when ``fast``),
        end once they are gone. A second call with ``fast`` hurries a graceful stop."""
        now = self.clock()
        if not self.stopping:
            self.stopping = True
            if self.reloading is not None:
                self.reloading.end(ReloadOutcome.INTERRUPTED)
                self.reloading = None
            logger.info(
                "Stopping %s (%s)", "fast" if fast else "gracefully", plural(len(self.workers), "worker")
            )
            # New connections are refused from now on, so that a load balancer fails over
            # at once: the workers close their copies of the listeners as their stop
            # begins, and ours go now, not when the last worker has exited. Exceptions:
            # after a USR2 handover the new master holds its own copies (and the Unix
            # socket files are its); with socket activation systemd holds the socket and
            # connections queue for the next instance.
            self.listeners.close(unlink=self.upgrade.successor is None)
            self._notify(lambda hooks: hooks.stopping(self))
        elif fast and not self.fast:
            logger.info("Stop escalated: fast")
        self.fast = self.fast or fast
        for w in self.workers:
            self._stop_worker(w, policy.SHUTDOWN, now, fast=self.fast)

    # ------------------------------------------------------------------ policy

    def _recycle(self, now: float) -> None:
        need_rss = self.config.max_worker_memory is not None
        for w in self.workers:
            if w.state is not WorkerState.READY:
                continue
            if need_rss and now >= w.next_rss_sample:
                w.next_rss_sample = now + policy.MEMORY_SAMPLE_SECONDS
                w.rss = self.processes.rss(w.pid)
            cell = self.stats.read(w.cell)
            reason = policy.recycle_reason(w.limits, cell.requests, w.rss, now - w.ready_at)
            if reason is None:
                continue
            slot = self.workers.slot(w.worker_id)
            if now < slot.replace_after or self.workers.booting_in(w.worker_id):
                continue
            logger.info(
                "%s recycles: %s (requests %d, age %.0f s%s)",
                w,
                reason,
                cell.requests,
                now - w.started,
                f", rss {w.rss / 1048576:.0f} MB" if w.rss else "",
            )
            w.reason = reason  # the replacement's READY will stop it with this reason
            slot.restarted(reason)
            self._spawn(w.worker_id, reason)

    def _steer(self, now: float) -> None:
        """--balance reuseport: new connections go to the slots whose worker serves and
        beats; a slot above the worker count loses its socket once nobody serves it."""
        if not self.listeners.groups or self.upgrade.handing_over:
            # During a USR2 handover both masters' workers serve the same sockets: the old
            # master's last steering stands until the new one's workers are all ready.
            return
        busy = {w.worker_id for w in self.workers}
        serving = {
            w.worker_id
            for w in self.ready_workers(within_target=True)
            if now - self.stats.read(w.cell).heartbeat < STEER_SILENCE
        }
        self.listeners.steer(serving, self.target, busy)

    def _maintain(self, now: float) -> None:
        if self.held:
            return  # the app did not boot: nothing to start until resume()
        ids = self._slot_ids()
        if not self.all_ready_once:
            # First start: one worker boots alone, so a broken app fails once, printing
            # its error once, instead of N times at once.
            if not self.ready_workers():
                ids = ids[:1]
        for worker_id in ids:
            if self.workers.live(worker_id):
                continue
            slot = self.workers.slot(worker_id)
            if now >= slot.respawn_at:
                self._spawn(worker_id, f"respawn after {slot.last_reason}" if slot.last_reason else "")
        # Scaled down: slots past the target drain.
        for w in self.workers:
            if w.worker_id > self.target and w.live:
                self._stop_worker(w, policy.SCALE, now)
        # A slot whose workers stayed ready long enough is healthy again.
        for w in self.workers:
            if w.state is WorkerState.READY and now - w.ready_at > policy.STABLE_AFTER:
                self.workers.slot(w.worker_id).failures = 0

    def _advance_reload(self, now: float) -> None:
        reload = self.reloading
        if reload is None or reload.booting is not None:
            return
        worker_id = reload.next_to_replace(self.workers, self.target)
        if worker_id is not None:
            for w in self.workers.live(worker_id):
                w.reason = policy.RELOAD  # the new worker's READY stops them with it
            reload.booting = self._spawn(worker_id, policy.RELOAD)
            self.workers.slot(worker_id).restarted(policy.RELOAD)
            return
        if reload.pending:
            return  # a replacement of another kind boots there: wait for it
        logger.info(
            "Reload complete in %.2f s: %s ready (generation %d)",
            now - reload.started,
            plural(len(self.ready_workers()), "worker"),
            reload.generation,
            extra=ROUTINE,
        )
        reload.end(ReloadOutcome.COMPLETE)
        self.reloading = None
        self._notify(lambda hooks: hooks.reloaded(self))

    def _report_full(self) -> None:
        ready_ids = {w.worker_id for w in self.ready_workers(within_target=True)}
        full = len(ready_ids) >= self.target
        if full and not self.was_full:
            logger.info("%s ready", plural(self.target, "worker"), extra=ROUTINE)
            if not self.all_ready_once:
                self.all_ready_once = True
                for url in self.listeners.urls(self._scheme):
                    logger.info("Asgictl running on %s (Press CTRL+C to quit)", url, extra=SERVING)
                self._notify(lambda hooks: hooks.ready(self))
                self.upgrade.retire_predecessor(self.processes.kill)
        self.was_full = full

    # ------------------------------------------------------------------ exit

    def close(self) -> None:
        """Release everything the master holds; the end of :meth:`run`. Workers still
        there (an exception in the loop) are killed and reaped for up to 5 s."""
        for w in self.workers:
            self.processes.kill(w.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.workers and time.monotonic() < deadline:
            self._reap()
            if self.workers:
                time.sleep(0.05)
        self.loop.close()
        # After a USR2 handover the listeners (and UDS files) belong to the new master.
        self.listeners.close(unlink=self.upgrade.successor is None)
        self.stats.close()
        logger.info("Master process [%d] exits (%d)", os.getpid(), self.exit_code)
