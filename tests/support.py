"""Helpers for end-to-end tests: start the real ``asgictl`` as a subprocess, wait for it by
polling its log (never by a fixed sleep), and end it by PID.

    with run_asgictl(["serve", "app:app", "--port", "0"], cwd=tmp_path) as server:
        httpx.get(server.url)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
#: The raw-request corpus (gunicorn's MIT-licensed test data; see its README and LICENSE).
CORPUS = Path(__file__).resolve().parent / "data" / "http"

#: Generous: this is a shared 2-core machine.
START_TIMEOUT = 30.0

_URL = re.compile(r"running on (\S+)")


class ServerProcess:
    """A running asgictl process whose combined output is collected by a thread."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "asgictl", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Poll the output until a line matches ``pattern`` (a regex); fail on exit or deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output}")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(
                        f"asgictl exited ({self.proc.returncode}) before {pattern!r}:\n{''.join(self._lines)}"
                    )
                self._cond.wait(min(remaining, 0.2))

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        self.url = self.wait_for_line(r"running on (\S+)", timeout).group(1)
        return self.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """End the process (and any children in its session) by PID: TERM, then KILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Children the process may have forked live in its session: none may outlive a test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_until(predicate: Callable[[], Any], timeout: float = START_TIMEOUT, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def count(server: ServerProcess, pattern: str) -> int:
    """How many lines of the server's output match ``pattern``."""
    return len(re.findall(pattern, server.output, re.MULTILINE))


def wait_count(server: ServerProcess, pattern: str, n: int, timeout: float = START_TIMEOUT) -> None:
    """Poll until at least ``n`` lines of output match ``pattern``."""
    try:
        wait_until(lambda: count(server, pattern) >= n, timeout, f"{n} x {pattern!r}")
    except AssertionError:
        raise AssertionError(f"fewer than {n} lines matching {pattern!r}:\n{server.output}") from None


_session_runtime_dir: str | None = None


def session_runtime_dir() -> str:
    """This test session's own XDG_RUNTIME_DIR (removed at exit): the masters the tests
    start keep their control sockets there, out of the developer's runtime directory and
    out of sight of other sessions' masters. A test that counts masters uses its own."""
    global _session_runtime_dir
    if _session_runtime_dir is None:
        _session_runtime_dir = tempfile.mkdtemp(prefix="asgictl-rt-")
        atexit.register(shutil.rmtree, _session_runtime_dir, True)
    return _session_runtime_dir


def test_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGICTL_")}
    env.pop("WEB_CONCURRENCY", None)
    env.pop("FORWARDED_ALLOW_IPS", None)
    env["XDG_RUNTIME_DIR"] = session_runtime_dir()
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def run_asgictl(
    args: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
    pass_fds: tuple[int, ...] = (),
) -> Iterator[ServerProcess]:
    """Start ``python -m asgictl ARGS``; wait for its "running on" line unless ready=False.

    ``pass_fds``: descriptors the process inherits (for ``--fd``), as subprocess.Popen's.
    """
    server = ServerProcess(args, cwd or APPS, env or test_env(), pass_fds)
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        server.stop()


class Collect(logging.Handler):
    """A logging handler that keeps every record it is given (unit tests of log lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def short_uds_path() -> str:
    """A Unix socket path short enough for sun_path (108 bytes), in a fresh temp dir."""
    return os.path.join(tempfile.mkdtemp(prefix="asgictl-"), "s.sock")


def raw_request(host: str, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, half-close, and read until the server closes (bounded by timeout)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock, timeout)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
