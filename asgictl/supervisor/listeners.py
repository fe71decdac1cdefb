"""The master's listeners: ``--bind`` URLs parsed, and every socket bound before any fork.

Binding in the master (not in each worker) is what lets a worker die, be replaced or be
recycled without a single refused connection: the listening socket, and the queue of
connections the kernel has accepted for it, outlive every worker.

Sources, in order: sockets inherited from a previous master over a USR2 re-exec (their
descriptor numbers come in :data:`INHERIT_ENV` and :data:`INHERIT_GROUPS_ENV`), else
``--bind`` URLs (plus ``--uds`` / ``--fd`` when given), else the ``--host/--port``/
``--uds``/``--fd`` of ``asgictl serve``. Sockets passed by systemd socket activation
(``LISTEN_FDS``) come first and stand in for the ``--host/--port`` default.

Shared sockets (Unix, ``--fd``, systemd's, and TCP under ``--balance shared``) are served
by every worker; a TCP address the master binds itself under ``--balance reuseport`` is a
:class:`~asgictl.supervisor.reuseport.PortGroup`, one socket per worker slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from asgictl import systemd
from asgictl.config import Config, ConfigError
from asgictl.supervisor.reuseport import PortGroup, supported
from asgictl.worker.sockets import bind_tcp, bind_unix, describe_address, from_fd

#: Environment variable through which a re-exec'd master learns its inherited listeners.
INHERIT_ENV = "_ASGICTL_INHERITED_FDS"
#: ... and its SO_REUSEPORT groups: a JSON list of lists of fds, in slot order.
INHERIT_GROUPS_ENV = "_ASGICTL_INHERITED_GROUPS"
#: Unix socket paths this master adopted but does not own (systemd's): a master re-exec'd
#: by USR2 must not unlink them on exit either (JSON list, inherited through os.environ).
FOREIGN_PATHS_ENV = "_ASGICTL_FOREIGN_PATHS"


@dataclass(frozen=True)
class BindSpec:
    """One parsed ``--bind`` URL."""

    kind: str  # "tcp", "unix" or "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(url: str) -> BindSpec:
    """``tcp://HOST:PORT`` (``[v6]:PORT``), ``unix:///PATH`` or ``fd://N``; else ConfigError."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        # A bare HOST:PORT is what gunicorn users type: accept it as TCP.
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    if scheme == "unix":
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(f"--bind: {url!r}: a Unix socket needs an absolute path (unix:///run/app.sock)")
        return BindSpec("unix", path=unquote(rest))
    if scheme == "fd":
        if not rest.isdigit():
            raise ConfigError(f"--bind: {url!r}: fd:// takes a descriptor number (fd://3)")
        return BindSpec("fd", fd=int(rest))
    if scheme == "tcp":
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise ConfigError(f"--bind: {url!r}: expected tcp://[IPV6]:PORT")
            port_text = tail[1:]
        else:
            host, colon, port_text = rest.rpartition(":")
            if not colon or ":" in host:
                raise ConfigError(f"--bind: {url!r}: expected tcp://HOST:PORT")
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"--bind: {url!r}: {port_text!r} is not a port number (0-65535)")
        return BindSpec("tcp", host=host or "0.0.0.0", port=int(port_text))
    raise ConfigError(f"--bind: {url!r}: unknown scheme {scheme!r} (use tcp://, unix:// or fd://)")


def specs_from_config(config: Config) -> list[BindSpec]:
    """The listeners the configuration asks for (at least one)."""
    specs = [parse_bind(url) for url in config.bind]
    if config.uds:
        specs.append(BindSpec("unix", path=config.uds))
    if config.fd is not None:
        specs.append(BindSpec("fd", fd=config.fd))
    if not specs:
        specs.append(BindSpec("tcp", host=config.host, port=config.port))
    return specs


class Listeners:
    """The bound listening sockets and the Unix socket files this master must remove.

    ``sockets`` are served by every worker; each of ``groups`` gives every worker slot a
    socket of its own (``--balance reuseport``).
    """

    def __init__(
        self, sockets: list[socket.socket], owned_paths: list[str], groups: list[PortGroup] | None = None
    ) -> None:
        self.sockets = sockets
        self.owned_paths = owned_paths
        self.groups = groups or []
        # What they listen on, read once: still known once the sockets are closed (stop).
        self._addresses = [
            (s.family, s.getsockname()) for s in [*sockets, *(g.sockets[0] for g in self.groups)]
        ]

    def urls(self, scheme: str) -> list[str]:
        return [describe_address(family, address, scheme) for family, address in self._addresses]

    def for_slot(self, worker_id: int) -> list[socket.socket]:
        """What worker ``worker_id`` serves: the shared sockets and its slot's in each group."""
        return [*self.sockets, *(group.socket_for(worker_id) for group in self.groups)]

    def all_sockets(self) -> list[socket.socket]:
        return [*self.sockets, *(sock for group in self.groups for sock in group.sockets)]

    def steer(self, slots: set[int], keep: int, busy: set[int]) -> None:
        """New connections of every group go to ``slots`` only; sockets of slots above
        ``keep`` that no live process (``busy``) serves any more are closed."""
        for group in self.groups:
            group.shrink(keep, busy)
            group.steer(slots)

    def inherit_environ(self) -> dict[str, str]:
        """The environment that hands these listeners to a re-executed master (USR2)."""
        for sock in self.all_sockets():
            sock.set_inheritable(True)
        return {
            INHERIT_ENV: ",".join(str(sock.fileno()) for sock in self.sockets),
            INHERIT_GROUPS_ENV: json.dumps([[sock.fileno() for sock in g.sockets] for g in self.groups]),
        }

    def uninherit(self) -> None:
        for sock in self.all_sockets():
            sock.set_inheritable(False)

    def close(self, unlink: bool = True) -> None:
        """Close this process's copies (again: no harm); remove the Unix socket files we
        bound unless ``unlink`` is false (they belong to a new master after USR2)."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for group in self.groups:
            group.close()
        if unlink:
            for path in self.owned_paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def open_listeners(config: Config, environ: Mapping[str, str] | None = None) -> Listeners:
    """Bind (or adopt) every listener; raises ConfigError (BindError) with one line."""
    environ = os.environ if environ is None else environ
    inherited = environ.get(INHERIT_ENV)
    inherited_groups = json.loads(environ.get(INHERIT_GROUPS_ENV) or "[]")
    if inherited is not None and (inherited or inherited_groups):
        sockets = [from_fd(int(fd)) for fd in inherited.split(",") if fd.strip()]
        groups = [
            PortGroup([from_fd(int(fd)) for fd in fds], config.backlog) for fds in inherited_groups if fds
        ]
        paths = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX and s.getsockname()]
        foreign = json.loads(environ.get(FOREIGN_PATHS_ENV) or "[]")
        return Listeners(sockets, [p for p in paths if isinstance(p, str) and p not in foreign], groups)
    sockets: list[socket.socket] = []
    groups: list[PortGroup] = []
    paths: list[str] = []
    # --balance reuseport: each TCP address the master binds is a group, one socket per slot.
    per_slot = config.balance == "reuseport" and supported()
    # Socket activation (LISTEN_FDS): systemd's sockets replace the --host/--port default;
    # explicit --bind/--uds/--fd listeners are added to them.
    passed = systemd.listen_fds(environ if environ is os.environ else dict(environ))
    explicit = bool(config.bind or config.uds or config.fd is not None)
    try:
        for item in passed:
            sockets.append(from_fd(item.fd))  # family read from the socket itself
        if passed and environ is os.environ:
            foreign = [s.getsockname() for s in sockets if s.family == socket.AF_UNIX]
            os.environ[FOREIGN_PATHS_ENV] = json.dumps([p for p in foreign if isinstance(p, str) and p])
        for spec in specs_from_config(config) if explicit or not passed else []:
            if spec.kind == "tcp" and per_slot:
                groups.append(PortGroup.bind(spec.host, spec.port, config.backlog))
            elif spec.kind == "tcp":
                sockets.append(bind_tcp(spec.host, spec.port, config.backlog))
            elif spec.kind == "unix":
                sockets.append(bind_unix(spec.path, config.backlog, config.uds_mode))
                paths.append(spec.path)
            else:
                sock = from_fd(spec.fd)
                # An inherited descriptor (systemd, a wrapper) may not be listening yet.
                with contextlib.suppress(OSError):
                    sock.listen(config.backlog)
                sockets.append(sock)
    except BaseException:
        Listeners(sockets, paths, groups).close()
        raise
    return Listeners(sockets, paths, groups)
