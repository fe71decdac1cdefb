"""``--pid-file``: the master's pid in a file, written last and removed only if still ours."""

from __future__ import annotations

import errno
import logging
import os

from asgictl.config import ConfigError

logger = logging.getLogger("asgictl.error")


class PidFile:
    """``--pid-file``: our pid, for ``kill``, systemd's ``PIDFile=`` and logrotate.

    A start that is refused must never harm the master already running: :meth:`check`
    (before anything is bound or written) refuses a file that names a running master;
    :meth:`write` comes last, once every resource (listeners, control socket, metrics) is
    held; :meth:`remove` removes the file only if this process wrote it and it is still
    that file with our pid (after a USR2 upgrade it is the new master's).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._written: tuple[int, int] | None = None  # (st_dev, st_ino) of our file

    def read(self) -> int | None:
        """The pid the file names, or None (absent, unreadable, not a number)."""
        try:
            with open(self.path, encoding="ascii") as fh:
                text = fh.read(32).strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def check(self, predecessor: int | None = None) -> None:
        """ConfigError if the file names a running master other than ``predecessor`` (the
        one that re-executed us with USR2). A stale file is left for :meth:`write`."""
        pid = self.read()
        if pid is None or pid in (os.getpid(), predecessor) or not running_master(pid):
            return
        raise ConfigError(
            f"--pid-file: {self.path} names a running master (pid {pid}); stop it first or use"
            " another pid file"
        )

    def write(self) -> None:
        """Write our pid atomically: a temporary file in the same directory, then rename."""
        directory = os.path.dirname(self.path)
        tmp = os.path.join(directory, f".{os.path.basename(self.path)}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
            info = os.fstat(fh.fileno())
        os.replace(tmp, self.path)
        self._written = (info.st_dev, info.st_ino)

    def remove(self) -> None:
        """Remove the file if it is still the one we wrote, naming us; else leave it."""
        if self._written is None:
            return
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._written and self.read() == os.getpid():
                os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                logger.warning("Could not remove the pid file %s: %s", self.path, exc)
        self._written = None


def running_master(pid: int) -> bool:
    """Whether ``pid`` is a live asgictl master (by its title or command line); a pid
    reused by another program is not. Another user's process counts (we cannot tell)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = process.cmdline()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return bool(argv) and (
        argv[0].startswith("asgictl: master") or ("asgictl" in " ".join(argv) and "start" in argv)
    )
