"""The master's control socket: ``asgictl status|reload|scale|stop`` talk to it.

The protocol (version, commands, arguments, where sockets live) is defined in
``asgictl/control/protocol.py``, which the client reads too; this module is the master's
side of it: binding the socket, a handler per command, and the operations that answer
once the master has acted (reload, scale, stop).

A Unix stream socket, mode 0600 (only the server's user may connect), served from the
master's select loop (``endpoints.py``): bounded buffers, deadlines, at most
``MAX_CLIENTS`` connections, so no client can block or exhaust the master. Every master
has its own: ``<runtime>/<pid>.ctl`` by default, else the path the user gave, with a
link to it at ``<runtime>/<pid>.ctl`` so that ``asgictl status`` finds every master.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from asgictl import __version__
from asgictl.config import ConfigError
from asgictl.control.protocol import (
    LINE_DEADLINE,
    MAX_LINE,
    MAX_PATH,
    PROGRESS_SECONDS,
    PROTOCOL_VERSION,
    ProtocolError,
    check_request,
    decode,
    encode,
    live_entries,
    master_socket_path,
    private_dir_problem,
    registry_path,
    runtime_dir,
)
from asgictl.supervisor.endpoints import Channel, Endpoint
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.observe import Sampler, status_report, working_directory
from asgictl.supervisor.workers import ReloadOutcome, RollingReload

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master

logger = logging.getLogger("asgictl.error")

MAX_CLIENTS = 32
#: A connection with nothing in flight and nothing received for this long is closed.
IDLE_DEADLINE = 120.0


# ------------------------------------------------------------------------------ paths


def _in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_control_socket(path: str, take_over: bool = False, what: str = "--control-socket") -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 from the first instant.

    A stale socket file (nobody listening) is replaced; a live one is taken over only by
    a master started by USR2 (``take_over``), else ConfigError (its message starts with
    ``what``, the option or rule that chose the path).
    """
    if len(os.fsencode(path)) > MAX_PATH:
        raise ConfigError(f"{what}: {path!r} is longer than a Unix socket path may be ({MAX_PATH})")
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{what}: {path} exists and is not a socket")
        if _in_use(path) and not take_over:
            raise ConfigError(f"{what}: {path} is in use by another running master")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask, not a chmod after bind: there is no instant at which others could connect.
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{what}: cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.set_inheritable(False)
    return sock


def prepare_runtime_dir(directory: str) -> None:
    """Create the runtime directory (mode 0700) if needed; ConfigError unless it is a
    directory of this user closed to others (else a local user could pre-create it and
    swap our sockets for theirs)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    problem = private_dir_problem(directory)
    if problem is not None:
        raise ConfigError(f"control socket: {problem}; give one with --control-socket PATH")


# ------------------------------------------------------------------------- operations


class _Operation:
    """A request that is answered once the master has done something (reload...)."""

    def __init__(self, server: ControlServer, now: float) -> None:
        self.server = server
        self.master = server.master
        self.started = now
        self.last_progress = 0.0

    def poll(self, now: float) -> dict[str, Any] | None:
        """The final reply once done, else None."""
        raise NotImplementedError

    def progress(self, now: float) -> dict[str, Any] | None:
        return None


class _ReloadOp(_Operation):
    def __init__(self, server: ControlServer, now: float) -> None:
        super().__init__(server, now)
        master = self.master
        self.reload: RollingReload | None = master.reload()
        self.total = len(self.reload.pending) if self.reload else 0
        self.generation = master.generation

    def poll(self, now: float) -> dict[str, Any] | None:
        master = self.master
        reload = self.reload
        if reload is None:
            return {"ok": False, "error": "the server is stopping"}
        if reload.outcome is None:
            return None
        if reload.successor is not None:  # a newer reload replaced ours: wait for that one
            newer = reload.successor
            self.reload, self.generation = newer, newer.generation
            self.total = max(self.total, len(newer.pending) + len(newer.done))
            return self.poll(now)
        if reload.outcome is ReloadOutcome.INTERRUPTED:
            return {"ok": False, "error": "reload interrupted: the server is stopping"}
        if reload.outcome is ReloadOutcome.ABORTED:
            return {
                "ok": False,
                "error": "reload aborted: a new worker failed to boot; the previous workers keep serving",
                "done": len(reload.done),
                "total": self.total,
            }
        workers = [
            {"id": w.worker_id, "pid": w.pid}
            for w in sorted(master.workers, key=lambda w: w.worker_id)
            if w.live
        ]
        return {
            "ok": True,
            "generation": self.generation,
            "reloaded": len(reload.done),
            "total": self.total,
            "workers": workers,
            "elapsed": round(now - self.started, 3),
        }

    def progress(self, now: float) -> dict[str, Any] | None:
        r = self.reload
        if r is None:
            return None
        current = r.booting
        return {
            "done": len(r.done),
            "total": self.total,
            "booting": {"id": current.worker_id, "pid": current.pid} if current else None,
            "elapsed": round(now - self.started, 3),
        }


class _ScaleOp(_Operation):
    def __init__(self, server: ControlServer, now: float, target: int) -> None:
        super().__init__(server, now)
        master = self.master
        self.before = master.target
        master.scale(target)
        self.target = master.target  # clamped to 1..MAX_WORKERS
        config = master.config
        # A worker that cannot boot is retried with back-off forever: do not wait forever.
        self.deadline = now + config.timeout_worker_boot + config.timeout_graceful_shutdown + 30.0

    def _counts(self) -> tuple[int, int]:
        master = self.master
        ready = len({w.worker_id for w in master.ready_workers(within_target=True)})
        surplus = sum(1 for w in master.workers if w.worker_id > self.target)
        return ready, surplus

    def poll(self, now: float) -> dict[str, Any] | None:
        master = self.master
        if master.stopping:
            return {"ok": False, "error": "scale interrupted: the server is stopping"}
        ready, surplus = self._counts()
        elapsed = round(now - self.started, 3)
        result = {"from": self.before, "to": self.target, "ready": ready, "elapsed": elapsed}
        if master.target != self.target:
            return {"ok": False, "error": f"superseded: the target is now {master.target}", **result}
        if ready >= self.target and not surplus:
            return {"ok": True, **result}
        if now > self.deadline:
            return {"ok": False, "error": f"not done after {now - self.started:.0f} s", **result}
        return None

    def progress(self, now: float) -> dict[str, Any] | None:
        ready, surplus = self._counts()
        elapsed = round(now - self.started, 3)
        return {"to": self.target, "ready": ready, "draining": surplus, "elapsed": elapsed}


class _StopOp(_Operation):
    def __init__(self, server: ControlServer, now: float, fast: bool) -> None:
        super().__init__(server, now)
        self.master.stop(fast)

    def poll(self, now: float) -> dict[str, Any] | None:
        master = self.master
        if master.workers:
            return None
        return {
            "ok": True,
            "pid": os.getpid(),
            "exit_code": master.exit_code,
            "elapsed": round(now - self.started, 3),
        }

    def progress(self, now: float) -> dict[str, Any] | None:
        return {"workers": len(self.master.workers), "elapsed": round(now - self.started, 3)}


# ---------------------------------------------------------------------------- channel


class _Refused(Exception):
    """A request the master will not carry out; the message is the reply's error."""


class _ControlChannel(Channel):
    max_input = MAX_LINE

    def __init__(self, endpoint: Endpoint, sock: socket.socket, now: float) -> None:
        super().__init__(endpoint, sock, now)
        self.server: ControlServer = endpoint.owner  # type: ignore[attr-defined]
        self.operation: _Operation | None = None
        self.request_id: Any = None
        self.last_activity = now
        self.partial_since = 0.0

    def busy(self) -> bool:
        return self.operation is not None

    def send(self, message: dict[str, Any]) -> None:
        body = {"v": PROTOCOL_VERSION, **message}
        if self.request_id is not None and "id" not in body:
            body["id"] = self.request_id
        self.write(encode(body))

    def too_large(self) -> None:
        self.inbuf.clear()
        self.send({"ok": False, "error": f"request line longer than {MAX_LINE // 1024} KiB"})
        self.close_when_flushed = True
        self.flush(time.monotonic())

    def refuse(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(
                encode({"v": PROTOCOL_VERSION, "ok": False, "error": "too many control connections"})
            )

    def received(self) -> None:
        now = time.monotonic()
        self.last_activity = now
        while self.operation is None and not self.closed:
            end = self.inbuf.find(b"\n")
            if end < 0:
                self.partial_since = (self.partial_since or now) if self.inbuf else 0.0
                return
            line = bytes(self.inbuf[:end])
            del self.inbuf[: end + 1]
            self.partial_since = 0.0
            if line.strip():
                self.request_id = None
                self.handle(line, now)

    def handle(self, line: bytes, now: float) -> None:
        try:
            message = decode(line)
            self.request_id = message.get("id")
            reply = self.server.dispatch(message, now)
        except (ProtocolError, _Refused) as exc:
            self.send({"ok": False, "error": str(exc)})
            return
        if isinstance(reply, _Operation):
            self.operation = reply
            self.tick(now)
        else:
            self.send(reply)

    def tick(self, now: float) -> None:
        op = self.operation
        if op is not None:
            result = op.poll(now)
            if result is not None:
                self.operation = None
                self.last_activity = now
                self.send(result)
                self.received()  # the next queued request, if any
            elif now - op.last_progress >= PROGRESS_SECONDS:
                op.last_progress = now
                progress = op.progress(now)
                if progress is not None:
                    self.send({"event": "progress", **progress})
            return
        if self.partial_since and now - self.partial_since > LINE_DEADLINE:
            self.send(
                {"ok": False, "error": f"incomplete request line (no newline within {LINE_DEADLINE:.0f} s)"}
            )
            self.close_when_flushed = True
            self.flush(now)
        elif not self.outbuf and now - self.last_activity > IDLE_DEADLINE:
            self.close()


# ---------------------------------------------------------------------------- handlers

#: A handler answers at once (a reply) or later (an operation the channel polls).
Handler = Callable[["ControlServer", dict[str, Any], float], "dict[str, Any] | _Operation"]
#: One handler per command of ``protocol.COMMANDS`` (a test checks both lists agree).
HANDLERS: dict[str, Handler] = {}


def _handles(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        HANDLERS[name] = handler
        return handler

    return register


@_handles("hello")
def _hello(server: ControlServer, arguments: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "ok": True,
        "server": "asgictl",
        "version": __version__,
        "pid": os.getpid(),
        "app": server.master.app_label,
        "directory": working_directory(),
    }


@_handles("status")
def _status(server: ControlServer, arguments: dict[str, Any], now: float) -> dict[str, Any]:
    report = status_report(server.master, server.sampler, now)
    report["master"].update(control_socket=server.path, metrics=server.metrics_url)
    return {"ok": True, **report}


def _not_stopping(server: ControlServer) -> None:
    if server.master.stopping:
        raise _Refused("the server is stopping")


@_handles("reload")
def _reload(server: ControlServer, arguments: dict[str, Any], now: float) -> _Operation:
    _not_stopping(server)
    return _ReloadOp(server, now)


@_handles("scale")
def _scale(server: ControlServer, arguments: dict[str, Any], now: float) -> _Operation:
    _not_stopping(server)
    count, delta = arguments.get("count"), arguments.get("delta")
    if (count is None) == (delta is None):
        raise _Refused('scale: give exactly one of "count" (N) or "delta" (+K or -K)')
    target = count if count is not None else server.master.target + delta
    if target < 1:
        raise _Refused(f"scale: {target} workers; at least 1 is needed")
    return _ScaleOp(server, now, target)


@_handles("stop")
def _stop(server: ControlServer, arguments: dict[str, Any], now: float) -> _Operation:
    return _StopOp(server, now, arguments.get("fast", False))


# ----------------------------------------------------------------------------- server


class ControlServer(MasterHooks):
    """The control socket of one master: ``path`` (listening on ``sock``) and, when the
    socket lives elsewhere, ``link`` (its entry in the runtime directory)."""

    def __init__(
        self,
        master: Master,
        sampler: Sampler,
        path: str,
        sock: socket.socket,
        link: str | None = None,
        discoverable: bool = True,
    ) -> None:
        self.master = master
        self.sampler = sampler
        self.path = path
        self.link = link
        #: ``asgictl status PID`` finds this master: its socket or a link to it is in the
        #: runtime directory.
        self.discoverable = discoverable
        self._inode = os.stat(path).st_ino
        self.endpoint = Endpoint(master.loop, sock, _ControlChannel, MAX_CLIENTS)
        self.endpoint.owner = self  # type: ignore[attr-defined]
        #: The metrics listener's URL, for ``status`` (set by ``run_master``).
        self.metrics_url: str | None = None

    @classmethod
    def open(cls, master: Master, sampler: Sampler) -> ControlServer:
        """Bind this master's socket where ``protocol.master_socket_path`` says.

        ConfigError (one line) if it cannot: a master never runs without one.
        """
        config = master.config
        pid = os.getpid()
        directory = runtime_dir()
        own_entry = registry_path(pid, directory)
        path = master_socket_path(pid, config.control_socket, config.pid_file)
        if config.control_socket:
            what = "--control-socket"
        elif config.pid_file:
            what = "control socket beside --pid-file"
        else:
            what = "control socket"
            prepare_runtime_dir(directory)
        sock = bind_control_socket(path, take_over=master.upgrade.predecessor is not None, what=what)
        link = None
        if path != own_entry:
            link = _link(path, own_entry)
        with contextlib.suppress(OSError):
            live_entries(directory)  # removes the entries of dead masters
        return cls(master, sampler, path, sock, link, discoverable=link is not None or path == own_entry)

    # -- requests ----------------------------------------------------------------------

    def dispatch(self, message: dict[str, Any], now: float) -> dict[str, Any] | _Operation:
        """Check a request against the protocol and run its handler.

        ProtocolError or _Refused: refused, with a one-line reason.
        """
        command, arguments = check_request(message)
        return HANDLERS[command.name](self, arguments, now)

    # -- lifetime ----------------------------------------------------------------------

    def tick(self, master: Master, now: float) -> None:
        self.endpoint.tick(now)

    def close(self) -> None:
        # A stop request's reply was queued in the last pass: give it a moment to leave.
        self.endpoint.close(flush_seconds=1.0)
        # Unlink only our own socket: after a USR2 upgrade the path is the new master's.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        if self.link is not None:
            with contextlib.suppress(OSError):
                if os.path.islink(self.link):
                    os.unlink(self.link)


def _link(path: str, entry: str) -> str | None:
    """Point our runtime-directory entry at a socket that lives elsewhere, so that
    ``asgictl status`` lists this master too. Best effort: the socket works without it."""
    try:
        prepare_runtime_dir(os.path.dirname(entry))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)  # a stale entry of a dead process that had our pid
        os.symlink(path, entry)
    except (OSError, ConfigError) as exc:
        logger.debug("No entry for this master in the runtime directory: %s", exc)
        return None
    return entry


@contextlib.contextmanager
def serving_control(master: Master, sampler: Sampler) -> Iterator[ControlServer]:
    """The master's control socket, open (and ticked each pass) while the master runs."""
    control = ControlServer.open(master, sampler)
    select = str(os.getpid()) if control.discoverable else f"--control-socket {control.path}"
    logger.info("Control socket: %s (asgictl status %s)", control.path, select)
    try:
        yield control
    finally:
        control.close()
