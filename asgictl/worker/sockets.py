"""Listening sockets: binding TCP and Unix sockets, adopting inherited descriptors.

Used by ``asgictl serve`` and, before it forks, by the supervisor, so a worker can be
started on sockets bound by its parent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import Any

from asgictl import systemd
from asgictl.config import Config, ConfigError


class BindError(ConfigError):
    """A listener could not be created: one line naming the address and the reason."""


def bind_tcp(host: str, port: int, backlog: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; BindError (one line) if the address cannot be had.

    ``reuse_port``: SO_REUSEPORT is set after the bind and before ``listen``: the bind
    itself stays exclusive (a port held by anyone, another SO_REUSEPORT group included,
    is refused), and sockets made by :func:`join_tcp` can then share the port with it.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"--host: cannot resolve {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise BindError(f"--host/--port: cannot bind {where}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def join_tcp(first: socket.socket, backlog: int) -> socket.socket:
    """One more listening socket on ``first``'s address, in its SO_REUSEPORT group (the
    kernel hands each new connection to one socket of the group). Raises OSError."""
    sock = socket.socket(first.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(first.getsockname())
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_unix(path: str, backlog: int, mode: int | None = None) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"--uds: cannot bind {path}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket file left by a server that is gone; refuse one still served."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"--uds: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise BindError(f"--uds: cannot probe {path}: {exc.strerror}") from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        raise BindError(f"--uds: {path} is in use by another server")
    finally:
        probe.close()


def from_fd(fd: int) -> socket.socket:
    """Adopt an inherited listening socket; its family comes from the socket itself."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"--fd: {fd} is not a socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        raise BindError(f"--fd: {fd} is not a stream socket")
    sock.setblocking(False)
    return sock


def bind_from_config(config: Config) -> list[socket.socket]:
    """The listeners of ``asgictl serve``: --fd, --uds, else sockets passed by systemd
    socket activation (LISTEN_FDS), else --host/--port."""
    if config.fd is not None:
        return [from_fd(config.fd)]
    if config.uds:
        return [bind_unix(config.uds, config.backlog, config.uds_mode)]
    passed = systemd.listen_fds()
    if passed:
        return [from_fd(item.fd) for item in passed]
    return [bind_tcp(config.host, config.port, config.backlog)]


def describe(sock: socket.socket, scheme: str) -> str:
    """The URL a person can open for a listener (the real port when 0 was asked)."""
    return describe_address(sock.family, sock.getsockname(), scheme)


def describe_address(family: int, address: Any, scheme: str) -> str:
    """:func:`describe` for a socket's family and ``getsockname()`` (kept after it closed)."""
    if family == socket.AF_UNIX:
        return f"{scheme}+unix://{address or '(unnamed)'}"
    host, port = address[:2]
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"
