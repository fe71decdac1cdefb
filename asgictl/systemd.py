"""systemd integration, standard library only: ``sd_notify`` and socket activation.

Two halves, both implemented from the documented protocols (sd_notify(3),
sd_listen_fds(3)) rather than by linking libsystemd, so the master needs nothing beyond
Python:

* **Notifications.** systemd passes ``NOTIFY_SOCKET``, the path of a datagram Unix socket
  (a leading ``@`` means the Linux abstract namespace). Each message is one datagram of
  ``KEY=VALUE`` lines. :class:`Notifier` sends them; :func:`watchdog_seconds` reads the
  watchdog period. What the master says when is ``asgictl/supervisor/notify.py``.
* **Socket activation.** systemd (or ``systemd-socket-activate``) passes listening sockets
  as descriptors 3, 4, ... with ``LISTEN_FDS=N``, ``LISTEN_PID=<our pid>`` and optionally
  ``LISTEN_FDNAMES=a:b``. :func:`listen_fds` validates and claims them.

This module imports nothing of the server (the worker's socket code reads
:func:`listen_fds` too): the supervisor imports it, never the reverse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("asgictl.error")

#: The first descriptor systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
LISTEN_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


# ------------------------------------------------------------------------------ notify


def _address(value: str) -> str | bytes | None:
    """The ``connect()`` address of a NOTIFY_SOCKET value; None when unsupported."""
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte, the rest of the name as given.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock:CID:PORT (systemd 253+, for VMs) is not something a master on a host meets.
    return None


class Notifier:
    """A connected datagram socket to ``NOTIFY_SOCKET``; :meth:`send` never raises.

    A notification that cannot be delivered (systemd gone, socket removed) is logged once
    and dropped: the service must keep serving whatever happens to its manager.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier | None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        if not path:
            return None
        if _address(path) is None:
            logger.warning("NOTIFY_SOCKET=%s: unsupported address; no sd_notify", path)
            return None
        return cls(path)

    def send(self, **fields: Any) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram (keyword order is kept)."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        return self.send_raw(message)

    def send_raw(self, message: str) -> bool:
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    sock.connect(_address(self.path))  # type: ignore[arg-type]
                except OSError:
                    sock.close()
                    raise
                self._sock = sock
            self._sock.send(message.encode("utf-8", "replace"))
            return True
        except OSError as exc:
            # Reconnect next time: the manager may have re-created its socket.
            self.close()
            if not self._warned:
                self._warned = True
                logger.warning("sd_notify to %s failed: %s", self.path, exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """One-shot ``sd_notify(0, message)``; False when there is no NOTIFY_SOCKET or it failed."""
    notifier = Notifier.from_environ(environ)
    if notifier is None:
        return False
    try:
        return notifier.send_raw(message)
    finally:
        notifier.close()


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what ``MONOTONIC_USEC=`` carries with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_seconds(environ: Mapping[str, str] | None = None, pids: tuple[int, ...] = ()) -> float | None:
    """The watchdog period ``WATCHDOG_USEC`` asks for, or None when there is none for us.

    As sd_watchdog_enabled(3): ``WATCHDOG_PID``, when set, must name this process (or,
    after a USR2 re-exec, the master we replace: listed in ``pids``).
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) not in (os.getpid(), *pids)):
        return None
    return int(usec) / 1_000_000


# ------------------------------------------------------------------------------ listening


@dataclass(frozen=True)
class PassedSocket:
    """One descriptor passed by socket activation and its LISTEN_FDNAMES name."""

    fd: int
    name: str


def listen_fds(environ: MutableMapping[str, str] | None = None, unset: bool = True) -> list[PassedSocket]:
    """The sockets systemd passed to *this* process (``sd_listen_fds_with_names``).

    Empty unless ``LISTEN_PID`` is our pid (a variable inherited by a child is not for the
    child). With ``unset`` the variables are removed, so workers, re-exec'd masters and
    the app never mistake them for their own. The descriptors are made close-on-exec:
    they belong to the master, and forked workers share them anyway.
    """
    environ = os.environ if environ is None else environ
    count, pid, names = (environ.get(k, "") for k in LISTEN_ENV)
    if unset:
        for key in LISTEN_ENV:
            environ.pop(key, None)
    if not count.isdigit() or int(count) == 0 or not pid.isdigit() or int(pid) != os.getpid():
        return []
    labels = names.split(":") if names else []
    passed = []
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
        passed.append(PassedSocket(fd, labels[i] if i < len(labels) and labels[i] else "unknown"))
    return passed
