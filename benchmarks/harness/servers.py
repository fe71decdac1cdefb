"""Server definitions and process lifecycle.

Every server runs from ``benchmarks/.venv``, listens on 127.0.0.1 on a free port, is
pinned to CPU 1 with ``taskset -c 1`` (taskset execs the server, so the PID we hold is the
server's; its children inherit the pinning), and imports the apps from ``benchmarks/``.

Readiness is detected by polling the port (with a deadline) and then checking one real
response; there is no fixed sleep. A server is stopped by its PID: SIGTERM, wait with a
timeout, then SIGKILL; descendants that outlive it (checked by PID and start time) are
killed by PID too. Nothing is ever killed by name.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harness import bootstrap, procstat
from harness.bootstrap import BENCH_DIR
from harness.net import free_port

HOST = "127.0.0.1"
SERVER_CPU = 1
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
IGNORED_ENV_PREFIXES = ("ASGICTL_", "UVICORN_", "GRANIAN_", "GUNICORN_")
IGNORED_ENV = frozenset({"GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PYTHONDONTWRITEBYTECODE"})


class ServerError(RuntimeError):
    """A server failed to start, answered wrongly, or died."""


class Target(Protocol):
    """What a server is started for: a wrk ``Scenario`` or a ``metrics.MetricScenario``."""

    @property
    def name(self) -> str: ...

    @property
    def app(self) -> str: ...

    @property
    def path(self) -> str: ...

    def verify(self, host: str, port: int, timeout_s: float) -> str | None:
        """Check one real answer; an error message, or None if it is right."""
        ...


ArgsFn = Callable[[str, int | str], list[str]]  # (app, port) -> arguments after the executable


def venv_bin() -> Path:
    """The bin/ of the benchmark venv in use (``--python`` chooses it)."""
    return bootstrap.VENV_DIR / "bin"


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server configuration."""

    name: str
    group: str  # scenario group it takes part in: "main", "h11", or a non-wrk scenario's name
    executable: str  # name of the console script in the venv's bin/
    args: ArgsFn
    #: (scenario, why) for scenarios the server cannot run correctly: skipped with a note
    unsupported: tuple[tuple[str, str], ...] = ()

    def unsupported_reason(self, scenario: str) -> str | None:
        return dict(self.unsupported).get(scenario)

    def command(self, app: str, port: int | str) -> list[str]:
        """The full command line, pinned to the server CPU."""
        exe = str(venv_bin() / self.executable)
        return ["taskset", "-c", str(SERVER_CPU), exe, *self.args(app, port)]

    def available(self) -> bool:
        return (venv_bin() / self.executable).exists()


def asgictl_args(*extra: str, command: str = "serve") -> ArgsFn:
    """``asgictl serve|start APP --host --port --no-access-log EXTRA``."""

    def args(app: str, port: int | str) -> list[str]:
        return [command, app, "--host", HOST, "--port", str(port), "--no-access-log", *extra]

    return args


def uvicorn_args(*extra: str, http: str = "httptools") -> ArgsFn:
    """``uvicorn APP --host --port --loop uvloop --http HTTP --no-access-log EXTRA``."""

    def args(app: str, port: int | str) -> list[str]:
        return [
            app,
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            http,
            "--no-access-log",
            *extra,
        ]

    return args


def granian_args(*extra: str, workers: int = 1) -> ArgsFn:
    """``granian --interface asgi --host --port --workers N --no-log EXTRA APP``."""

    def args(app: str, port: int | str) -> list[str]:
        return [
            "--interface",
            "asgi",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-log",
            *extra,
            app,
        ]

    return args


def gunicorn_args(
    *extra: str, workers: int = 1, worker_class: str = "uvicorn_worker.UvicornWorker"
) -> ArgsFn:
    """``gunicorn APP --bind --workers N --worker-class WORKER_CLASS EXTRA`` (by default
    uvicorn_worker.UvicornWorker).

    UvicornWorker picks uvloop + httptools when installed; gunicorn has no access log
    unless --access-logfile is given.
    """

    def args(app: str, port: int | str) -> list[str]:
        return [
            app,
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            *extra,
        ]

    return args


def h2corn_args(*extra: str) -> ArgsFn:
    """``h2corn APP --bind HOST:PORT --workers 1 --no-access-log EXTRA`` (HTTP/1.1 and h2c
    on one port; uvloop for the app when installed, its default)."""

    def args(app: str, port: int | str) -> list[str]:
        return [app, "--bind", f"{HOST}:{port}", "--workers", "1", "--no-access-log", *extra]

    return args


def fastpysgi_args(*extra: str) -> ArgsFn:
    """``fastpysgi --host HOST --port PORT EXTRA APP`` (one process; logs nothing per request)."""

    def args(app: str, port: int | str) -> list[str]:
        return ["--host", HOST, "--port", str(port), *extra, app]

    return args


SERVERS = [
    ServerSpec("asgictl", "main", "asgictl", asgictl_args()),
    # the parser --http auto preferred before gunicorn_h1c, beside it in the same run
    ServerSpec("asgictl-httptools", "main", "asgictl", asgictl_args("--http", "httptools")),
    ServerSpec("uvicorn", "main", "uvicorn", uvicorn_args()),
    ServerSpec("granian", "main", "granian", granian_args()),
    ServerSpec("h2corn", "main", "h2corn", h2corn_args()),
    ServerSpec(
        "fastpysgi",
        "main",
        "fastpysgi",
        fastpysgi_args(),
        # 0.6 sends the first chunk, logs "stream_write: [UB] client state cannot equ
        # CS_RESP_SEND" and never finishes the response.
        unsupported=(("stream64", "fastpysgi 0.6 stalls after the first chunk of a streamed body"),),
    ),
    ServerSpec("gunicorn", "main", "gunicorn", gunicorn_args()),
    ServerSpec("asgictl-h11", "h11", "asgictl", asgictl_args("--http", "h11")),
    ServerSpec("uvicorn-h11", "h11", "uvicorn", uvicorn_args(http="h11")),
]
SERVERS_BY_NAME = {spec.name: spec for spec in SERVERS}


def port_open(port: int) -> bool:
    """True if something accepts TCP connections on HOST:port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def server_env() -> dict[str, str]:
    """Environment for servers: the apps in benchmarks/ importable, no stray server settings.

    Variables the servers read as options (``ASGICTL_*``, ``UVICORN_*``, ``GRANIAN_*``,
    ``GUNICORN_CMD_ARGS``, ``WEB_CONCURRENCY``) are dropped so that the command line alone
    decides the configuration.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(IGNORED_ENV_PREFIXES) and key not in IGNORED_ENV
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")])
    return env


@dataclass
class RunningServer:
    """A launched server process for one scenario."""

    spec: ServerSpec
    scenario: Target
    port: int
    command: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    affinity: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.scenario.path}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def fail(self, message: str) -> ServerError:
        return ServerError(f"{self.spec.name}: {message}\n--- server log (tail) ---\n{self.log_tail()}")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise self.fail(f"exited with code {code}")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the port until it accepts connections, then verify one response."""
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            self.check_alive()
            if time.monotonic() > deadline:
                raise self.fail(f"port {self.port} not open after {timeout_s:.0f}s")
            time.sleep(POLL_INTERVAL_S)
        error = self.scenario.verify(HOST, self.port, timeout_s=max(1.0, deadline - time.monotonic()))
        if error:
            self.check_alive()
            raise self.fail(error)
        self.affinity = sorted(os.sched_getaffinity(self.pid))
        if self.affinity != [SERVER_CPU]:
            raise self.fail(f"not pinned to CPU {SERVER_CPU}: affinity {self.affinity}")

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL; then kill any descendant that outlived the server."""
        leftovers = procstat.descendants(self.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"  {self.spec.name} (pid {self.pid}) ignored SIGTERM; killing it", flush=True)
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        for stat in leftovers:
            if procstat.same_process_alive(stat):
                print(f"  killing leftover child pid {stat.pid} of {self.spec.name}", flush=True)
                os.kill(stat.pid, signal.SIGKILL)


def start_server(spec: ServerSpec, scenario: Target, log_dir: Path, tag: str = "") -> RunningServer:
    """Launch a server for a scenario (not waiting for readiness); ``tag`` names its log."""
    port = free_port()
    command = spec.command(scenario.app, port)
    log_path = log_dir / f"{scenario.name}-{spec.name}{tag}.log"
    with log_path.open("wb") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            cwd=BENCH_DIR,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches only the harness
        )
    return RunningServer(spec, scenario, port, command, log_path, proc)
