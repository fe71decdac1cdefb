"""End to end: the real ``asgictl start`` master, real forked workers, real signals.

Every wait polls with a deadline (no fixed sleeps); every process a test starts is ended
by PID (``run_asgictl`` ends the master and kills its process group in teardown).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import support
from support import ServerProcess, count, run_asgictl, short_uds_path, wait_count, wait_until

#: Generous: a noisy shared 2-core machine.
DEADLINE = 30.0


# ----------------------------------------------------------------------------- helpers


def worker_pids(master: int) -> set[int]:
    pids = set()
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(master).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.cmdline() and child.cmdline()[0].startswith("asgictl: worker"):
                    pids.add(child.pid)
    return pids


def http_get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection (Connection: close); returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP response: {raw[:80]!r}")
    return int(head[9:12]), body


def quietly(port: int, path: str) -> None:
    """A request whose outcome does not matter (its worker is about to be killed)."""
    with contextlib.suppress(OSError):
        http_get(port, path, timeout=DEADLINE)


class Load:
    """A bounded load of short connections from a few threads, counting failures."""

    def __init__(self, port: int, threads: int = 6, path: str = "/", limit: int = 500_000) -> None:
        self.port = port
        self.path = path
        self.limit = limit
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + 90
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.ok + len(self.failures) >= self.limit:
                    return
            try:
                status, _ = http_get(self.port, self.path)
                error = None if status == 200 else f"status {status}"
            except OSError as exc:
                error = repr(exc)
            with self._lock:
                if error is None:
                    self.ok += 1
                else:
                    self.failures.append(error)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.ok > 20, what="the load to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@contextlib.contextmanager
def start(
    *args: str, workers: int = 2, cwd: Path | None = None, ready: bool = True
) -> Iterator[ServerProcess]:
    argv = ["start", *args, "--workers", str(workers), "--no-access-log"]
    if not any(a in args for a in ("--bind", "--uds")):
        argv += ["--port", "0"]
    with run_asgictl(argv, cwd=cwd, ready=False) as server:
        if ready:
            server.wait_for_line(rf"^INFO:\s+{workers} workers? ready")
            server.wait_ready()
        yield server


# ----------------------------------------------------------------------------- basics


def test_start_forks_workers_with_titles_and_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "asgictl.pid"
    with start("svapp:app", "--pid-file", str(pid_file), workers=3) as server:
        assert pid_file.read_text().strip() == str(server.pid)
        assert psutil.Process(server.pid).cmdline()[0] == "asgictl: master svapp:app"
        pids = worker_pids(server.pid)
        assert len(pids) == 3
        titles = sorted(psutil.Process(p).cmdline()[0] for p in pids)
        assert titles == [f"asgictl: worker {k} svapp:app" for k in (1, 2, 3)]
        seen = {int(http_get(server.port, "/pid")[1]) for _ in range(60)}
        assert seen <= pids and seen
        # Worker log lines carry the worker id and pid.
        assert re.search(r"^\[worker 2 pid \d+\] INFO:\s+Started server process", server.output, re.M)
        # One "running on" line, from the master, once every worker is ready.
        assert count(server, r"running on") == 1
        server.signal(signal.SIGTERM)
        assert server.wait_exit(DEADLINE) == 0
        assert not pid_file.exists()
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_bind_tcp_and_unix_together() -> None:
    path = short_uds_path()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with start("svapp:app", "--bind", f"tcp://127.0.0.1:{port}", "--bind", f"unix://{path}") as server:
        assert http_get(port)[0] == 200
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(DEADLINE) == 0
    assert not os.path.exists(path)


# ----------------------------------------------------------------------------- crashes


def test_sigkilled_worker_is_replaced_and_others_keep_serving() -> None:
    with start("svapp:app", workers=2) as server:
        before = worker_pids(server.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        # The survivor answers while the slot is refilled.
        assert http_get(server.port)[0] == 200
        wait_count(server, r"^INFO:\s+2 workers ready", 2)
        after = worker_pids(server.pid)
        assert victim not in after and len(after) == 2 and (before - {victim}) <= after
        assert re.search(rf"pid {victim}\) was killed by SIGKILL.* unexpectedly; respawning", server.output)
        with Load(server.port, threads=4, limit=200) as load:
            pass
        assert not load.failures


def test_hung_worker_dumps_stacks_is_killed_and_replaced() -> None:
    with start("svapp:app", "--timeout", "2", workers=2) as server:
        before = worker_pids(server.pid)
        hung = threading.Thread(target=lambda: quietly(server.port, "/hang?60"))
        sent = time.monotonic()
        hung.start()
        # Which worker took it: the one whose heartbeat stops; wait for the kill.
        line = server.wait_for_line(r"Worker \d+ \(pid (\d+)\) is hung", DEADLINE)
        victim = int(line.group(1))
        wait_until(lambda: not psutil.pid_exists(victim) or victim not in worker_pids(server.pid))
        elapsed = time.monotonic() - sent
        # --timeout 2, plus the heartbeat period, polling and the dump grace; generous slack
        # for a loaded machine but far below the 60 s the handler sleeps.
        assert elapsed < 2 + 2 + 3, elapsed
        wait_count(server, r"was killed by SIGKILL.*\[hung\]", 1)
        out = server.output
        # faulthandler's dump names the sleeping line of the app.
        assert 'svapp.py", line' in out and "in app" in out, out
        assert re.search(r"File \".*svapp\.py\", line \d+ in app", out)
        wait_count(server, r"^INFO:\s+2 workers ready", 2)
        after = worker_pids(server.pid)
        assert len(after) == 2 and victim not in after and victim in before
        assert all(http_get(server.port)[0] == 200 for _ in range(10))
        hung.join(15)


def test_boot_failure_exits_nonzero_printing_the_error_once() -> None:
    with start("svbroken:app", workers=3, ready=False) as server:
        started = time.monotonic()
        code = server.wait_exit(DEADLINE)
        assert code != 0
        assert time.monotonic() - started < 15
        out = server.output
        assert out.count("RuntimeError: svbroken: the database URL is not configured") == 1, out
        assert "failed to boot" in out


def test_lifespan_startup_failure_exits_nonzero() -> None:
    with start("basic:failing_startup", workers=2, ready=False) as server:
        assert server.wait_exit(DEADLINE) == 3
        assert server.output.count("database unreachable") == 1, server.output


# ----------------------------------------------------------------------------- recycling


def test_max_requests_recycles_every_worker_under_load_with_zero_failures() -> None:
    with start("svapp:app", "--limit-max-requests", "60", "--max-requests-jitter", "20", workers=2) as server:
        first = worker_pids(server.pid)
        with Load(server.port, threads=6, limit=100000) as load:
            wait_count(server, r"recycles: max-requests", 6, timeout=60)
        assert not load.failures, load.failures[:5]
        assert load.ok > 300
        wait_count(server, r"^INFO:\s+2 workers ready", 1)
        assert not (first & worker_pids(server.pid))
        assert count(server, r"exited with code 0.*\[max-requests\]") >= 4


def test_max_worker_lifetime_recycles() -> None:
    with start("svapp:app", "--max-worker-lifetime", "1", workers=1) as server:
        wait_count(server, r"recycles: lifetime", 2)
        wait_count(server, r"exited with code 0.*\[lifetime\]", 1)
        assert http_get(server.port)[0] == 200


def test_max_worker_memory_recycles_a_leaking_worker() -> None:
    with start("svapp:app", "--max-worker-memory", "150", workers=1) as server:
        before = worker_pids(server.pid)
        assert http_get(server.port, "/grow?200")[1] == b"grown"
        wait_count(server, r"recycles: memory", 1)
        wait_count(server, r"exited with code 0.*\[memory\]", 1)
        after = worker_pids(server.pid)
        assert len(after) == 1 and not (before & after)
        assert http_get(server.port)[0] == 200


def test_a_crashing_worker_is_respawned_with_backoff() -> None:
    with start("svapp:app", workers=1) as server:
        for n in range(3):
            wait_count(server, r"^INFO:\s+1 worker ready", n + 1)
            with contextlib.suppress(OSError):
                http_get(server.port, "/crash")
            wait_count(server, r"exited with code 7.* unexpectedly", n + 1)
        # First death: at once; then 0.5 s, 1 s...
        assert re.search(r"code 7 after serving \d+ requests? unexpectedly; respawning$", server.output, re.M)
        assert "respawning in 0.5 s" in server.output and "respawning in 1.0 s" in server.output
        wait_count(server, r"^INFO:\s+1 worker ready", 4)
        assert http_get(server.port)[0] == 200


def test_usr1_reopens_log_files(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    config = tmp_path / "log.json"
    config.write_text(
        '{"version": 1, "formatters": {"f": {"()": "asgictl.logs.DefaultFormatter", "fmt": "%(message)s"}},'
        ' "handlers": {"file": {"class": "logging.FileHandler", "filename": "%s", "formatter": "f"}},'
        ' "loggers": {"asgictl": {"handlers": ["file"], "level": "INFO", "propagate": false},'
        ' "asgictl.access": {"handlers": ["file"], "level": "INFO", "propagate": false}}}'.replace(
            "%s", str(log)
        )
    )
    with run_asgictl(
        ["start", "svapp:app", "--port", "0", "--workers", "2", "--log-config", str(config)], ready=False
    ) as server:
        wait_until(lambda: log.exists() and "running on" in log.read_text(), what="ready in the log file")
        server.url = re.search(r"running on (\S+)", log.read_text()).group(1)  # type: ignore[union-attr]
        log.rename(tmp_path / "server.log.1")
        server.signal(signal.SIGUSR1)
        wait_until(lambda: log.exists(), what="the master to reopen its log")

        def reopened_by_workers() -> bool:
            http_get(server.port, "/pid")
            return "GET /pid" in log.read_text()

        wait_until(reopened_by_workers, what="worker access lines in the new file")


# ----------------------------------------------------------------------------- signals

APP_V1 = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"VERSION"})
"""


def write_app(directory: Path, body: str) -> None:
    path = directory / "hupapp.py"
    path.write_text(body)
    # A new mtime even on a coarse clock, so no stale bytecode is reused.
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


def test_hup_rolls_workers_under_load_and_serves_new_code(tmp_path: Path) -> None:
    write_app(tmp_path, APP_V1.replace("VERSION", "v1"))
    with start("hupapp:app", "--app-dir", str(tmp_path), workers=2, cwd=tmp_path) as server:
        old = worker_pids(server.pid)
        assert http_get(server.port)[1] == b"v1"
        with Load(server.port, threads=6) as load:
            write_app(tmp_path, APP_V1.replace("VERSION", "v2"))
            server.signal(signal.SIGHUP)
            wait_count(server, r"Reload complete", 1)
            wait_until(lambda: not (old & worker_pids(server.pid)), what="old workers to exit")
        assert not load.failures, load.failures[:5]
        assert {http_get(server.port)[1] for _ in range(20)} == {b"v2"}


def test_hup_with_a_broken_app_keeps_the_old_workers(tmp_path: Path) -> None:
    write_app(tmp_path, APP_V1.replace("VERSION", "v1"))
    with start("hupapp:app", "--app-dir", str(tmp_path), workers=2, cwd=tmp_path) as server:
        old = worker_pids(server.pid)
        write_app(tmp_path, "raise ImportError('hupapp is broken now')\n")
        server.signal(signal.SIGHUP)
        server.wait_for_line(r"Reload aborted")
        assert "hupapp is broken now" in server.output
        assert worker_pids(server.pid) == old
        assert {http_get(server.port)[1] for _ in range(10)} == {b"v1"}
        # Fixed again: the next HUP goes through.
        write_app(tmp_path, APP_V1.replace("VERSION", "v3"))
        server.signal(signal.SIGHUP)
        wait_count(server, r"Reload complete", 1)
        wait_until(lambda: {http_get(server.port)[1] for _ in range(10)} == {b"v3"}, what="v3")


def test_ttin_and_ttou_change_the_worker_count() -> None:
    with start("svapp:app", workers=2) as server:
        server.signal(signal.SIGTTIN)
        wait_count(server, r"^INFO:\s+3 workers ready", 1)
        wait_until(lambda: len(worker_pids(server.pid)) == 3, what="3 workers")
        server.signal(signal.SIGTTOU)
        # Signals of one kind coalesce while pending: send the next once this one acted.
        server.wait_for_line(r"Scaling from 3 to 2")
        server.signal(signal.SIGTTOU)
        wait_count(server, r"exited with code 0.*\[scale\]", 2)
        wait_until(lambda: len(worker_pids(server.pid)) == 1, what="1 worker")
        assert http_get(server.port)[0] == 200


def test_term_lets_a_slow_in_flight_request_finish() -> None:
    with start("svapp:app", workers=2) as server:
        result: list[tuple[int, bytes]] = []
        client = threading.Thread(target=lambda: result.append(http_get(server.port, "/slow?2")))
        client.start()
        # The app prints as the request begins: only then is it surely in flight (an
        # ESTABLISHED socket may still be waiting to be read when the stop begins).
        server.wait_for_line(r"svapp: slow request begins")
        server.signal(signal.SIGTERM)
        client.join(DEADLINE)
        assert result == [(200, b"slow done")]
        assert server.wait_exit(DEADLINE) == 0


def _connections(server: ServerProcess) -> int:
    # The workers' open connections, as psutil sees them: the request has been accepted.
    total = 0
    for pid in worker_pids(server.pid):
        with contextlib.suppress(psutil.Error):
            total += sum(1 for c in psutil.Process(pid).net_connections() if c.status == "ESTABLISHED")
    return total


def test_term_past_the_graceful_deadline_sigkills() -> None:
    with start("svapp:app", "--timeout-graceful-shutdown", "1", workers=1) as server:
        client = threading.Thread(target=lambda: quietly(server.port, "/hang?60"))
        client.start()
        wait_until(lambda: _connections(server) > 0, what="request in flight")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        code = server.wait_exit(DEADLINE)
        elapsed = time.monotonic() - started
        assert code == 1
        # 1 s graceful + 5 s margin + the dump grace; well below the 60 s handler.
        assert elapsed < 12, elapsed
        assert "past its stop deadline; killing it" in server.output
        assert re.search(r"was killed by SIGKILL.*\[shutdown\]", server.output)
        client.join(15)


def test_second_term_escalates_to_fast_stop() -> None:
    with start("svapp:app", workers=1) as server:
        client = threading.Thread(target=lambda: quietly(server.port, "/slow?60"))
        client.start()
        wait_until(lambda: _connections(server) > 0, what="request in flight")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_for_line(r"Stopping gracefully")
        server.signal(signal.SIGTERM)
        server.wait_exit(DEADLINE)
        assert time.monotonic() - started < 10
        assert "Stop escalated: fast" in server.output
        client.join(15)


def test_usr2_reexecs_the_master_with_the_port_answering_throughout() -> None:
    with start("svapp:app", workers=2) as server:
        new_master = 0
        try:
            with Load(server.port, threads=4) as load:
                server.signal(signal.SIGUSR2)
                match = server.wait_for_line(r"started a new master \(pid (\d+)\)")
                new_master = int(match.group(1))
                assert server.wait_exit(DEADLINE) == 0  # the old master retires
                wait_until(lambda: len(worker_pids(new_master)) == 2, what="new workers")
                ok_before = load.ok
                wait_until(lambda: load.ok > ok_before + 50, what="requests served by the new master")
            assert not load.failures, load.failures[:5]
            assert http_get(server.port)[0] == 200
        finally:
            if new_master:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(new_master, signal.SIGTERM)
                with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                    psutil.Process(new_master).wait(DEADLINE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(new_master, signal.SIGKILL)


def test_quit_stops_fast() -> None:
    with start("svapp:app", workers=2) as server:
        server.signal(signal.SIGQUIT)
        assert server.wait_exit(DEADLINE) == 0
        assert "Stopping fast" in server.output


@pytest.mark.parametrize("env_name", ["WEB_CONCURRENCY", "ASGICTL_WORKERS"])
def test_worker_count_from_the_environment(env_name: str) -> None:
    env = support.test_env(**{env_name: "3"})
    with run_asgictl(["start", "svapp:app", "--port", "0"], env=env, ready=False) as server:
        server.wait_for_line(r"^INFO:\s+3 workers ready")
        assert len(worker_pids(server.pid)) == 3
