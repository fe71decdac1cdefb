"""USR2: a new master on the same listeners, then the old one steps down.

The running master starts ``python -m asgictl`` with its own arguments and hands it its
listening sockets by descriptor number (:meth:`Listeners.inherit_environ`) and its own
pid in :data:`OLD_MASTER_ENV`. The new master adopts the sockets, boots its workers, and
once every one of them serves, sends its predecessor a TERM: no connection is refused
at any point. If the new master dies first, the old one logs it and keeps serving.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from asgictl.supervisor.listeners import Listeners
from asgictl.supervisor.processes import describe_exit

logger = logging.getLogger("asgictl.error")

#: Environment variable naming the master that re-exec'd us (USR2), to stop once ready.
OLD_MASTER_ENV = "_ASGICTL_OLD_MASTER"


class Upgrade:
    """A master's part in USR2 re-execs: the ``predecessor`` that started it (told to
    stop once this one serves), the ``successor`` it started (while that one runs)."""

    def __init__(self, predecessor: int | None) -> None:
        self.predecessor = predecessor
        self.successor: int | None = None

    @property
    def handing_over(self) -> bool:
        """Two masters' workers serve the same listeners now."""
        return self.predecessor is not None or self.successor is not None

    def start(self, listeners: Listeners) -> None:
        """USR2: start a successor on ``listeners``, unless one runs already."""
        if self.successor is not None:
            logger.warning("USR2: an upgrade is already in progress (pid %d)", self.successor)
            return
        self.successor = start_new_master(listeners)

    def reaped(self, pid: int, status: int) -> bool:
        """Whether ``pid`` was the successor: it died before it took over."""
        if pid != self.successor:
            return False
        self.successor = None
        logger.error("Upgrade failed: the new master %s; this one keeps serving", describe_exit(status))
        return True

    def retire_predecessor(self, kill: Callable[[int, int], None]) -> None:
        """This master serves: tell the one that started it to stop (once)."""
        old, self.predecessor = self.predecessor, None
        if old and os.getppid() == old:
            logger.info("Telling the previous master (pid %d) to stop", old)
            kill(old, signal.SIGTERM)


def predecessor(pop: bool = True) -> int | None:
    """The pid of the master that started this one with USR2, or None. With ``pop`` the
    variable is removed, so the workers and the app never see it."""
    value = os.environ.pop(OLD_MASTER_ENV, None) if pop else os.environ.get(OLD_MASTER_ENV)
    return int(value) if value and value.isdigit() else None


def start_new_master(listeners: Listeners) -> int | None:
    """Start a new master process on ``listeners``; its pid, or None (logged) if it could
    not be started."""
    env = {**os.environ, **listeners.inherit_environ(), OLD_MASTER_ENV: str(os.getpid())}
    argv = [sys.executable, "-m", "asgictl", *sys.argv[1:]]
    try:
        pid = os.posix_spawn(sys.executable, argv, env)
    except OSError as exc:
        logger.error("USR2: cannot start a new master: %s", exc)
        return None
    finally:
        listeners.uninherit()
    logger.info("USR2: started a new master (pid %d) on the same listeners", pid)
    return pid
