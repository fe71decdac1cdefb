"""Loopback helpers shared by the benchmark scripts: a free port, waiting for a
listener (polled with a deadline), one-shot HTTP GETs on fresh connections, a server
process whose output is collected, stopping a server by its PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout:.0f} s")


MAX_RESPONSE = 1 << 20


def send_get(sock: socket.socket, path: str = "/") -> None:
    """Write one ``GET path`` that asks the server to close the connection after answering."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes]:
    """Read an answer to EOF (bounded by ``timeout`` and 1 MiB): its status and its raw body.

    The body is what follows the head, not de-chunked: the apps this is used with send a
    Content-Length. Raises OSError on a socket error or timeout, ValueError on no HTTP answer.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete answer within {timeout:.1f}s")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        size += len(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {head[:80]!r}")
    return int(parts[1]), body


def http_get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port on a fresh connection: the status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        send_get(sock, path)
        return read_response(sock, timeout)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL: never by name."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class OutputProcess:
    """A process in its own session whose combined output a thread collects."""

    def __init__(self, argv: list[str], cwd: Path | str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the output for ``pattern`` until the deadline or the process's exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"no {pattern!r} within {timeout}s:\n{''.join(self.lines[-30:])}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, a bounded wait, then SIGKILL to the whole session: by PID, never by name."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.reader.join(5)
