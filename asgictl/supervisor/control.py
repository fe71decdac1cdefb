"""The master's control socket: ``asgictl status|reload|scale|stop`` talk to it.

A Unix stream socket, mode 0600 (only the server's user may connect), served from the
master's select loop (``endpoints.py``): bounded buffers, deadlines, at most
``MAX_CLIENTS`` connections, so no client can block or exhaust the master.

Protocol (version 1): line-delimited JSON, UTF-8, one object per line each way.

* request: ``{"v": 1, "cmd": CMD, ...arguments, "id": any}`` (``id`` optional, echoed);
  CMD is ``hello``, ``status``, ``reload``, ``scale`` (``"count": N`` or ``"delta": K``)
  or ``stop`` (``"fast": bool``);
* reply: ``{"v": 1, "ok": true, ...}`` or ``{"v": 1, "ok": false, "error": TEXT}``.
  Commands that act (reload, scale, stop) answer once the action is finished, sending
  ``{"v": 1, "event": "progress", ...}`` lines meanwhile (at least once a second).
  Requests on one connection are answered in order, one at a time.
* anything else (not JSON, not an object, another version, an unknown command or
  argument) gets ``ok: false`` and a one-line error; the connection stays usable. A
  line longer than 64 KiB, or a partial line older than 10 s, closes the connection.

:func:`control_plane` wires this module, the samplers of ``observe.py`` and the metrics
responder of ``metrics.py`` into a :class:`Master` for the duration of its run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from asgictl import __version__
from asgictl.config import ConfigError
from asgictl.supervisor.endpoints import Channel, Endpoint
from asgictl.supervisor.observe import Sampler

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master, _Reload

logger = logging.getLogger("asgictl.error")

PROTOCOL_VERSION = 1
COMMANDS = ("hello", "status", "reload", "scale", "stop")
MAX_CLIENTS = 32
#: A request line must be complete within this long of its first byte.
LINE_DEADLINE = 10.0
#: A connection with nothing in flight and nothing received for this long is closed.
IDLE_DEADLINE = 120.0
#: Waiting operations report progress at least this often (the client's keep-alive).
PROGRESS_SECONDS = 1.0
#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_PATH = 107


# ------------------------------------------------------------------------------ paths


def default_socket_path(pid_file: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Where the control socket lives unless ``--control-socket`` says otherwise.

    Next to the pid file (``app.pid`` -> ``app.ctl``) when there is one, so each server
    with its own pid file has its own socket; else ``$XDG_RUNTIME_DIR/asgictl.ctl``;
    else ``/tmp/asgictl-UID/asgictl.ctl`` (the directory private to the user).
    """
    environ = os.environ if environ is None else environ
    if pid_file:
        stem = pid_file[:-4] if pid_file.endswith(".pid") else pid_file
        return os.path.abspath(stem + ".ctl")
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "asgictl.ctl")
    return os.path.join(tempfile.gettempdir(), f"asgictl-{os.getuid()}", "asgictl.ctl")


def _private_dir(directory: str) -> None:
    """The fallback directory in /tmp must be ours and closed to others (or a local user
    could pre-create it and swap our socket for theirs)."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"--control-socket: {directory} is not a private directory of this user; choose a path"
        )


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


def bind_control_socket(path: str, take_over: bool = False) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 from the first instant.

    A stale socket file (nobody listening) is replaced; a live one is taken over only by
    a master started by USR2 (``take_over``), else ConfigError.
    """
    if len(os.fsencode(path)) > MAX_PATH:
        raise ConfigError(f"--control-socket: {path!r} is longer than a Unix socket path may be (107)")
    directory = os.path.dirname(path) or "."
    if os.path.basename(directory).startswith("asgictl-") and directory.startswith(tempfile.gettempdir()):
        _private_dir(directory)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"--control-socket: {path} exists and is not a socket")
        if _in_use(path) and not take_over:
            raise ConfigError(f"--control-socket: {path} is in use by another running master")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # umask, not a chmod after bind: there is no instant at which others could connect.
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--control-socket: cannot bind {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.set_inheritable(False)
    return sock


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
        master.reload()
        self.reload: _Reload | None = master.reloading
        self.total = len(self.reload.queue) if self.reload else 0
        self.generation = master.generation

    def poll(self, now: float) -> dict[str, Any] | None:
        master = self.master
        if self.reload is None:
            return {"ok": False, "error": "the server is stopping"}
        current = master.reloading
        if current is self.reload:
            return None
        if current is not None:  # a newer reload replaced ours: wait for that one
            self.reload, self.generation = current, current.generation
            self.total = max(self.total, len(current.queue) + len(current.done))
            return None
        if master.stopping:
            return {"ok": False, "error": "reload interrupted: the server is stopping"}
        if self.reload.current is not None or self.reload.queue:
            return {
                "ok": False,
                "error": "reload aborted: a new worker failed to boot; the previous workers keep serving",
                "done": len(self.reload.done),
                "total": self.total,
            }
        workers = [
            {"id": w.worker_id, "pid": w.pid}
            for w in sorted(master.workers.values(), key=lambda w: w.worker_id)
            if w.live
        ]
        return {
            "ok": True,
            "generation": self.generation,
            "reloaded": len(self.reload.done),
            "total": self.total,
            "workers": workers,
            "elapsed": round(now - self.started, 3),
        }

    def progress(self, now: float) -> dict[str, Any] | None:
        r = self.reload
        if r is None:
            return None
        current = r.current
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
        workers = self.master.workers.values()
        ready = len({w.worker_id for w in workers if w.state == "ready" and w.worker_id <= self.target})
        surplus = sum(1 for w in workers if w.worker_id > self.target)
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


class _ControlChannel(Channel):
    max_input = 64 * 1024

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
        self.write(json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n")

    def too_large(self) -> None:
        self.inbuf.clear()
        self.send({"ok": False, "error": "request line longer than 64 KiB"})
        self.close_when_flushed = True
        self.flush(time.monotonic())

    def refuse(self) -> None:
        line = json.dumps({"v": PROTOCOL_VERSION, "ok": False, "error": "too many control connections"})
        try:
            self.sock.send(line.encode() + b"\n")
        except OSError:
            pass

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
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.send({"ok": False, "error": "not a JSON object (one per line)"})
            return
        if not isinstance(request, dict):
            self.send({"ok": False, "error": "not a JSON object (one per line)"})
            return
        self.request_id = request.get("id")
        version = request.get("v")
        if version != PROTOCOL_VERSION:
            self.send(
                {
                    "ok": False,
                    "error": f"unsupported protocol version {version!r}; this master speaks"
                    f" {PROTOCOL_VERSION}",
                }
            )
            return
        try:
            reply = self.server.dispatch(request, now)
        except _BadRequest as exc:
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
            self.send({"ok": False, "error": "incomplete request line (no newline within 10 s)"})
            self.close_when_flushed = True
            self.flush(now)
        elif not self.outbuf and now - self.last_activity > IDLE_DEADLINE:
            self.close()


class _BadRequest(Exception):
    pass


_ARGUMENTS = {
    "hello": set(),
    "status": set(),
    "reload": set(),
    "scale": {"count", "delta"},
    "stop": {"fast"},
}


# ----------------------------------------------------------------------------- server


class ControlServer:
    """The control socket of one master."""

    def __init__(self, master: Master, sampler: Sampler, path: str, sock: socket.socket) -> None:
        self.master = master
        self.sampler = sampler
        self.path = path
        self._inode = os.stat(path).st_ino
        self.endpoint = Endpoint(master, sock, _ControlChannel, MAX_CLIENTS)
        self.endpoint.owner = self  # type: ignore[attr-defined]
        self.metrics_url: str | None = None
        #: Requests served by workers that have exited (the master row counts since start).
        self.retired_requests = 0
        master.add_exit_callback(self._worker_exited)

    def _worker_exited(self, worker: Any) -> None:
        self.retired_requests += worker.requests

    # -- requests ----------------------------------------------------------------------

    def dispatch(self, request: dict[str, Any], now: float) -> dict[str, Any] | _Operation:
        cmd = request.get("cmd")
        if cmd not in _ARGUMENTS:
            raise _BadRequest(f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}")
        unknown = set(request) - {"v", "cmd", "id"} - _ARGUMENTS[cmd]
        if unknown:
            raise _BadRequest(f"{cmd}: unknown argument(s) {', '.join(sorted(map(str, unknown)))}")
        master = self.master
        if cmd == "hello":
            return {"ok": True, "server": "asgictl", "version": __version__, "pid": os.getpid()}
        if cmd == "status":
            return {"ok": True, **self.status(now)}
        if master.stopping and cmd != "stop":
            raise _BadRequest("the server is stopping")
        if cmd == "reload":
            return _ReloadOp(self, now)
        if cmd == "scale":
            count, delta = request.get("count"), request.get("delta")
            if (count is None) == (delta is None):
                raise _BadRequest('scale: give exactly one of "count" (N) or "delta" (+K or -K)')
            for value in (count, delta):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise _BadRequest("scale: count and delta are integers")
            target = count if count is not None else master.target + delta
            if target < 1:
                raise _BadRequest(f"scale: {target} workers; at least 1 is needed")
            return _ScaleOp(self, now, target)
        fast = request.get("fast", False)
        if not isinstance(fast, bool):
            raise _BadRequest("stop: fast is true or false")
        return _StopOp(self, now, fast)

    def status(self, now: float) -> dict[str, Any]:
        master = self.master
        sampler = self.sampler
        workers = []
        for row in master.snapshot():
            sample = sampler.get(row["pid"])
            state = row["state"]
            if state == "stopping" and not master.stopping:
                state = "draining"  # replaced or scaled away: finishing its requests
            workers.append(
                {
                    **row,
                    "state": state,
                    "requests_per_second": round(sample.requests_per_second, 2),
                    "rss": sample.rss if sample.rss is not None else row["rss"],
                    "cpu_percent": None if sample.cpu_percent is None else round(sample.cpu_percent, 1),
                }
            )
        own = sampler.get(os.getpid())
        if master.stopping:
            state = "stopping"
        elif master.reloading is not None:
            state = "reloading"
        elif not master.all_ready_once:
            state = "booting"
        else:
            state = "ready"
        return {
            "master": {
                "pid": os.getpid(),
                "state": state,
                "age": round(now - master.started, 3),
                "version": __version__,
                "app": master.app_label,
                "target": master.target,
                "generation": master.generation,
                "requests": self.retired_requests + sum(w["requests"] for w in workers),
                "connections": sum(w["connections"] for w in workers),
                "requests_per_second": round(sum(w["requests_per_second"] for w in workers), 2),
                "rss": own.rss,
                "cpu_percent": None if own.cpu_percent is None else round(own.cpu_percent, 1),
                "listeners": master.listeners.urls("https" if master.config.is_ssl else "http"),
                "control_socket": self.path,
                "metrics": self.metrics_url,
            },
            "workers": workers,
        }

    # -- lifetime ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.endpoint.tick(now)

    def close(self) -> None:
        # A stop request's reply was queued in the last pass: give it a moment to leave.
        self.endpoint.close(flush_seconds=1.0)
        # Unlink only our own socket: after a USR2 upgrade the path is the new master's.
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)


@contextlib.contextmanager
def control_plane(master: Master) -> Iterator[None]:
    """Serve the control socket (and ``--metrics-bind``) while the master runs."""
    config = master.config
    sampler = Sampler(master)
    explicit = bool(config.control_socket)
    path = os.path.abspath(config.control_socket or default_socket_path(config.pid_file))
    control: ControlServer | None = None
    try:
        sock = bind_control_socket(path, take_over=master.old_master is not None)
    except ConfigError as exc:
        if explicit:
            raise
        # Two servers sharing the default path: the second serves, without a control socket.
        logger.warning("Control socket disabled: %s (give each server its own --control-socket)", exc)
    else:
        control = ControlServer(master, sampler, path, sock)
        logger.info("Control socket: %s (asgictl status --control-socket %s)", path, path)
    metrics = None
    try:
        if config.metrics_bind:
            from asgictl.supervisor.metrics import MetricsServer, MetricsTable

            table = MetricsTable(master.stats.capacity)
            metrics = MetricsServer(master, table, sampler, config.metrics_bind)
            master.metrics = table
            master.add_exit_callback(metrics.worker_exited)
            if control is not None:
                control.metrics_url = metrics.url
            logger.info("Metrics: %s", metrics.url)

        def tick() -> None:
            now = time.monotonic()
            sampler.tick(now)
            if control is not None:
                control.tick(now)
            if metrics is not None:
                metrics.tick(now)

        master.add_tick_callback(tick)
        yield
    finally:
        if control is not None:
            control.close()
        if metrics is not None:
            metrics.close()
