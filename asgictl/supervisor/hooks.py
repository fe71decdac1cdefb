"""How the rest of the supervisor follows the master's life: :class:`MasterHooks`.

A part that needs to know when the master is ready, reloads, stops, turns its loop or
reaps a worker subclasses :class:`MasterHooks`, overrides the methods it needs (the
others are no-ops) and is subscribed with :meth:`Master.subscribe
<asgictl.supervisor.master.Master.subscribe>`. The subscriptions are made in one place,
:func:`asgictl.supervisor.wiring.run_master`: sd_notify, the file watcher, the
samplers, the control socket, the metrics listener and the Pub/Sub broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master
    from asgictl.supervisor.workers import Worker


class MasterHooks:
    """Notifications of the master's life; every one is a no-op here.

    Called from the master's loop (one thread: no locking), subscribers in the order they
    subscribed. An exception in a hook is logged and the master goes on.
    """

    def ready(self, master: Master) -> None:
        """Every worker of the target serves, for the first time since the start."""

    def reloading(self, master: Master) -> None:
        """A rolling reload begins (HUP, ``asgictl reload``, a change under ``--reload``)."""

    def reloaded(self, master: Master) -> None:
        """The rolling reload ended, complete or aborted (a stop ends it silently)."""

    def stopping(self, master: Master) -> None:
        """A stop begins (TERM, INT, QUIT, ``asgictl stop``, or the master gives up)."""

    def tick(self, master: Master, now: float) -> None:
        """The end of a pass of the loop (at least every ``POLL_INTERVAL`` seconds);
        ``now`` is ``time.monotonic()``."""

    def worker_exited(self, master: Master, worker: Worker) -> None:
        """``worker`` was reaped; its shared-memory cells are released after every
        subscriber has heard of it."""
