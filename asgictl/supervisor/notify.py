"""sd_notify for the master: its life as the sequence a ``Type=notify`` unit expects.

``READY=1`` once every worker serves; ``RELOADING=1`` + ``MONOTONIC_USEC=`` when a rolling
reload begins and ``READY=1`` when it ends; ``STOPPING=1``; ``MAINPID=`` across a USR2
re-exec; ``STATUS=`` lines for ``systemctl status``; ``WATCHDOG=1`` at half of
``WATCHDOG_USEC`` while a worker beats. The datagrams themselves are
:class:`asgictl.systemd.Notifier`'s (the protocol, standard library only); this module
decides what to say and when, from the master's state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from asgictl.logs import plural
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.slots import WorkerState
from asgictl.systemd import Notifier, monotonic_usec, watchdog_seconds

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master

#: A worker counts as healthy for the watchdog when its event loop beat within this many
#: seconds at least (workers beat every second; a margin keeps a busy machine from
#: skipping pings), and at most within --timeout / the watchdog period.
MIN_HEARTBEAT_AGE = 3.0
#: How often STATUS= is refreshed while nothing else happens (request counts move).
STATUS_REFRESH = 5.0


class SystemdHooks(MasterHooks):
    """The master's hooks speaking sd_notify. Called from the master's loop only: no
    locking."""

    def __init__(self, notifier: Notifier, watchdog: float | None = None, now: float | None = None) -> None:
        self.notifier = notifier
        #: Seconds between WATCHDOG=1 pings: half the period systemd asked for.
        self.watchdog = watchdog
        self.interval = watchdog / 2 if watchdog else None
        self.announced = False  # READY=1 sent once
        self.upgrading = False
        self._next_ping = now if now is not None else time.monotonic()
        self._next_status = self._next_ping + STATUS_REFRESH
        self._last_status = ""

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, old_master: int | None = None
    ) -> SystemdHooks | None:
        """The hooks when ``NOTIFY_SOCKET`` is set (systemd ``Type=notify``), else None."""
        notifier = Notifier.from_environ(environ)
        if notifier is None:
            return None
        pids = (old_master,) if old_master else ()
        return cls(notifier, watchdog_seconds(environ, pids))

    # -------------------------------------------------------------- master hooks

    def ready(self, master: Master) -> None:
        fields: dict[str, Any] = {}
        if master.upgrade.predecessor:
            # A master started by USR2: once the old one hands over (see stopping), we are
            # the service's main process; say so ourselves too (NotifyAccess=all units).
            fields["MAINPID"] = os.getpid()
        fields["READY"] = 1
        fields["STATUS"] = self._status(master, "Ready")
        self.announced = True
        self.notifier.send(**fields)

    def reloading(self, master: Master) -> None:
        if not self.announced:
            return  # still starting: READY=1 will come when every worker serves
        self.notifier.send(
            RELOADING=1,
            MONOTONIC_USEC=monotonic_usec(),
            STATUS=f"Reloading: rolling restart to generation {master.generation}",
        )

    def reloaded(self, master: Master) -> None:
        if not self.announced:
            return
        self.notifier.send(READY=1, STATUS=self._status(master, "Reloaded"))

    def stopping(self, master: Master) -> None:
        new = master.upgrade.successor
        if new is not None:
            # The new master of a USR2 re-exec told us to go: it is the service now.
            # Not STOPPING=1 (that would stop the unit): hand the main pid over.
            self.notifier.send(MAINPID=new, STATUS=f"Handing over to the new master (pid {new})")
            self.upgrading = True
            return
        self.notifier.send(
            STOPPING=1,
            STATUS=f"Stopping: draining {plural(len(master.workers), 'worker')}",
        )

    def tick(self, master: Master, now: float) -> None:
        if self.interval and now >= self._next_ping and not self.upgrading:
            if self.healthy(master, now):
                self.notifier.send(WATCHDOG=1)
                self._next_ping = now + self.interval
        if self.announced and not master.stopping and master.reloading is None and now >= self._next_status:
            self._next_status = now + STATUS_REFRESH
            previous = self._last_status
            status = self._status(master, "Ready")
            if status != previous:
                self.notifier.send(STATUS=status)

    # ------------------------------------------------------------------ helpers

    def healthy(self, master: Master, now: float) -> bool:
        """The loop runs (we are in it); at least one worker beat recently.

        While a stop drains, the master's loop alone is enough: systemd's TimeoutStopSec
        bounds the drain, and a missed ping would only turn a clean stop into a kill.
        """
        if master.stopping:
            return True
        limit = max(MIN_HEARTBEAT_AGE, min(master.config.timeout, self.watchdog or master.config.timeout))
        for w in master.workers:
            if w.state is WorkerState.READY and now - master.stats.read(w.cell).heartbeat <= limit:
                return True
        return False

    def _status(self, master: Master, what: str) -> str:
        ready = 0
        requests = 0
        for w in master.workers:
            if w.state is WorkerState.READY:
                ready += 1
            requests += master.stats.read(w.cell).requests
        served = plural(requests, "request")
        status = f"{what}: {ready}/{master.target} workers serving, {served} by current workers"
        self._last_status = status
        return status
