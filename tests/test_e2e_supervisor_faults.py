"""End to end: the supervisor under kills, signals and odd environments (faults found in
the field), each against the real ``asgictl start`` master and its forked workers.

1. a stop refuses new connections at once while in-flight requests finish;
2. workers stop when their master dies (``kill -9``), releasing the port;
3. one Ctrl+C to the process group is one graceful stop;
4. a stop during a worker's boot cancels the boot;
5. a thread the app left behind (``--preload``) does not keep the master alive;
6. the master works with descriptor numbers above 1024;
7. a refused start never harms the running master's pid file;
8. an explicit ``--reload-include`` wins over a default exclude;
9. new connections are spread over the workers, and a worker's queue survives it.

Every wait polls with a deadline; every process a test starts is ended by PID (the
master by ``run_asgictl``, which also kills its process group; workers are checked gone
by PID).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import support
from support import count, run_asgictl, short_uds_path, wait_count, wait_until
from test_e2e_supervisor import http_get, start, worker_pids

DEADLINE = 30.0
#: What svapp prints when a /slow request has reached the app.
SLOW_BEGINS = r"svapp: slow request begins"


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by whoever adopted it counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: set[int], timeout: float = DEADLINE) -> None:
    wait_until(lambda: all(gone(p) for p in pids), timeout, f"workers {sorted(pids)} to exit")


def refused(port: int) -> bool:
    """A connect to the port is refused (a connection the kernel accepts is closed again)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def ctl_path() -> str:
    """A control socket of this test's own (the default path is shared by every server)."""
    return short_uds_path().replace("s.sock", "c.ctl")


def in_flight(port: int, path: str, n: int = 1) -> tuple[list[threading.Thread], list[tuple[int, bytes]]]:
    """``n`` requests on fresh connections in threads; their (status, body) in the list."""
    results: list[tuple[int, bytes]] = []

    def one() -> None:
        try:
            results.append(http_get(port, path, timeout=DEADLINE))
        except OSError as exc:
            results.append((0, repr(exc).encode()))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads, results


# ----------------------------------------------------------------------------- 1. stop refuses


@pytest.mark.parametrize("how", ["TERM", "INT", "asgictl stop"])
def test_a_stop_refuses_new_connections_within_a_second_and_in_flight_requests_finish(how: str) -> None:
    control = ctl_path()
    with start("svapp:app", "--control-socket", control, workers=2) as server:
        pids = worker_pids(server.pid)
        threads, results = in_flight(server.port, "/slow?3", n=4)
        wait_count(server, SLOW_BEGINS, 4)  # all 4 in the app
        assert not refused(server.port)
        stopper = None
        began = time.monotonic()
        if how == "asgictl stop":
            stopper = subprocess.Popen(
                [sys.executable, "-m", "asgictl", "stop", "--control-socket", control],
                env=support.test_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # The clock starts when the master has the command (the client's own start-up
            # is not the master's doing).
            server.wait_for_line(r"Stopping gracefully")
            began = time.monotonic()
        else:
            server.signal(signal.SIGTERM if how == "TERM" else signal.SIGINT)
        try:
            wait_until(lambda: refused(server.port), timeout=DEADLINE, what="connections refused")
            elapsed = time.monotonic() - began
            assert elapsed < 1.0, elapsed
            for thread in threads:
                thread.join(DEADLINE)
            assert results == [(200, b"slow done")] * 4
            assert server.wait_exit(DEADLINE) == 0
            wait_gone(pids)
        finally:
            if stopper is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    stopper.wait(DEADLINE)
                if stopper.poll() is None:
                    stopper.kill()
                    stopper.wait(10)
        if stopper is not None:
            assert stopper.returncode == 0


# ----------------------------------------------------------------------------- 2. master death


def test_workers_stop_gracefully_within_two_seconds_of_their_masters_death() -> None:
    with start("svapp:app", workers=2) as server:
        pids = worker_pids(server.pid)
        port = server.port
        try:
            threads, results = in_flight(port, "/slow?1")
            wait_count(server, SLOW_BEGINS, 1)
            killed = time.monotonic()
            os.kill(server.pid, signal.SIGKILL)
            wait_until(lambda: refused(port), timeout=DEADLINE, what="the port released")
            elapsed = time.monotonic() - killed
            assert elapsed < 2.0, elapsed
            threads[0].join(DEADLINE)
            assert results == [(200, b"slow done")]  # the in-flight request finished
            wait_gone(pids)
            wait_count(server, r"its master \(pid \d+\) is gone", 2)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # The port is free for a new master.
        with start("svapp:app", "--bind", f"tcp://127.0.0.1:{port}", workers=1) as again:
            assert http_get(port)[0] == 200
            again.signal(signal.SIGTERM)
            assert again.wait_exit(DEADLINE) == 0


# ----------------------------------------------------------------------------- 3. one Ctrl+C


def _ctrl_c_round() -> str:
    """One master, a 3 s request in flight, one SIGINT to the process group: '' if all went
    as it should, else what did not."""
    with start("svapp:app", "--control-socket", ctl_path(), workers=2) as server:
        pids = worker_pids(server.pid)
        threads, results = in_flight(server.port, "/slow?3")
        wait_count(server, SLOW_BEGINS, 1)
        os.killpg(server.pid, signal.SIGINT)  # what a terminal's Ctrl+C does
        threads[0].join(DEADLINE)
        code = server.wait_exit(DEADLINE)
        wait_gone(pids)
        out = server.output
        shutdowns = sorted(int(p) for p in re.findall(r"svapp: lifespan shutdown in (\d+)", out))
        problems = []
        if results != [(200, b"slow done")]:
            problems.append(f"request: {results}")
        if code != 0:
            problems.append(f"exit {code}")
        if shutdowns != sorted(pids):
            problems.append(f"lifespan shutdowns {shutdowns} for workers {sorted(pids)}")
        if "Stop escalated" in out or "CancelledError" in out:
            problems.append("escalated to a fast stop")
        return "; ".join(problems) + (f"\n{out}" if problems else "")


def test_one_ctrl_c_to_the_process_group_is_one_graceful_stop_in_15_of_15_rounds() -> None:
    failures: list[str] = []
    lock = threading.Lock()

    def round_() -> None:
        try:
            problem = _ctrl_c_round()
        except AssertionError as exc:
            problem = str(exc)
        if problem:
            with lock:
                failures.append(problem)

    # 3 batches of 5 concurrent rounds: 15 rounds in the time of 3.
    for _ in range(3):
        batch = [threading.Thread(target=round_) for _ in range(5)]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join(3 * DEADLINE)
    assert not failures, f"{len(failures)} of 15 rounds failed:\n" + "\n".join(failures[:2])


def test_a_second_ctrl_c_escalates_to_a_fast_stop() -> None:
    with start("svapp:app", workers=2) as server:
        pids = worker_pids(server.pid)
        threads, _ = in_flight(server.port, "/slow?60")
        wait_count(server, SLOW_BEGINS, 1)
        os.killpg(server.pid, signal.SIGINT)
        server.wait_for_line(r"Stopping gracefully")
        began = time.monotonic()
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait_exit(DEADLINE) == 0
        assert time.monotonic() - began < 10
        assert "Stop escalated: fast" in server.output
        wait_gone(pids)
        threads[0].join(DEADLINE)


# ----------------------------------------------------------------------------- 4. stop during boot


@pytest.mark.parametrize(
    "app, booting, how",
    [
        ("svapp:slow_startup", r"svapp: slow startup begins", "TERM"),
        ("svapp:slow_startup", r"svapp: slow startup begins", "Ctrl+C"),
        ("svslowimport:app", r"svslowimport: importing", "TERM"),
    ],
)
def test_a_stop_during_a_workers_boot_cancels_the_boot(app: str, booting: str, how: str) -> None:
    with start(app, workers=2, ready=False) as server:
        server.wait_for_line(booting)
        pids = worker_pids(server.pid)
        assert pids
        began = time.monotonic()
        if how == "TERM":
            server.signal(signal.SIGTERM)
        else:
            os.killpg(server.pid, signal.SIGINT)
        wait_gone(pids)
        assert time.monotonic() - began < 2.0
        assert server.wait_exit(DEADLINE) == 0
        out = server.output
        assert "past its stop deadline" not in out and "Traceback" not in out, out
        assert re.search(r"Stopped (during application startup|while importing the application)", out), out


# ----------------------------------------------------------------------------- 5. app threads


def test_a_preloaded_apps_non_daemon_thread_does_not_keep_the_master_alive() -> None:
    with start("svthread:app", "--preload", workers=2) as server:
        pids = worker_pids(server.pid)
        assert http_get(server.port)[1] == b"threaded"
        server.signal(signal.SIGTERM)
        assert server.wait_exit(DEADLINE) == 0
        assert re.search(rf"Master process \[{server.pid}\] exits \(0\)", server.output)
        wait_gone(pids)


# ----------------------------------------------------------------------------- 6. fds > 1024


@contextlib.contextmanager
def many_descriptors(n: int) -> Iterator[tuple[int, ...]]:
    """Every descriptor from 3 up, ``n`` more than we had: what a parent that leaks them
    all hands its child, with no free number below for the child's own descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < n + 200:
        pytest.skip(f"RLIMIT_NOFILE {soft}/{hard} is below {n + 200}")
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]  # the lowest free numbers

    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:
            return False
        return True

    try:
        yield tuple(fd for fd in range(3, max(opened) + 1) if is_open(fd))
    finally:
        for fd in opened:
            os.close(fd)


def test_the_master_works_with_descriptor_numbers_above_1024() -> None:
    control = ctl_path()
    with many_descriptors(1100) as fds:
        argv = ["start", "svapp:app", "--workers", "2", "--port", "0", "--control-socket", control]
        with run_asgictl(argv, pass_fds=fds, ready=False) as server:
            server.wait_for_line(r"^INFO:\s+2 workers ready")
            server.wait_ready()
            # The master's own descriptors (wakeup pipe, epoll, control socket, listeners)
            # all have numbers above 1024.
            own = [fd for fd in map(int, os.listdir(f"/proc/{server.pid}/fd")) if fd not in fds and fd > 2]
            assert own and min(own) > 1024, own
            assert http_get(server.port)[0] == 200
            status = subprocess.run(
                [sys.executable, "-m", "asgictl", "status", "--json", "--control-socket", control],
                capture_output=True,
                text=True,
                timeout=DEADLINE,
                env=support.test_env(),
            )
            assert status.returncode == 0, status.stderr
            assert '"state": "ready"' in status.stdout
            pids = worker_pids(server.pid)
            server.signal(signal.SIGTERM)
            assert server.wait_exit(DEADLINE) == 0
            assert "filedescriptor out of range" not in server.output
            wait_gone(pids)


# ----------------------------------------------------------------------------- 7. refused start


def test_a_refused_start_leaves_the_running_masters_pid_file_alone(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    with start("svapp:app", "--pid-file", str(pid_file), workers=1) as a:
        assert pid_file.read_text() == f"{a.pid}\n"
        # B: the same pid file, another port.
        with start("svapp:app", "--pid-file", str(pid_file), workers=1, ready=False) as b:
            assert b.wait_exit(DEADLINE) == 2
            assert f"names a running master (pid {a.pid})" in b.output
        assert pid_file.read_text() == f"{a.pid}\n"
        # A is still reachable through the file: its control socket sits beside it.
        status = subprocess.run(
            [sys.executable, "-m", "asgictl", "status", "--json", "--pid-file", str(pid_file)],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            env=support.test_env(),
        )
        assert status.returncode == 0 and f'"pid": {a.pid}' in status.stdout, status.stdout + status.stderr
        a.signal(signal.SIGTERM)
        assert a.wait_exit(DEADLINE) == 0
    assert not pid_file.exists()


def test_the_pid_file_is_written_only_once_every_resource_is_held(tmp_path: Path) -> None:
    """B is refused on a resource A holds (the control socket), after its --preload import
    started a thread: B writes no pid file, and exits (faults 7 and 5 together)."""
    control = ctl_path()
    with start("svapp:app", "--control-socket", control, workers=1) as a:
        b_pid_file = tmp_path / "b.pid"
        argv = ("--control-socket", control, "--pid-file", str(b_pid_file))
        with start("svthread:app", "--preload", *argv, workers=1, ready=False) as b:
            assert b.wait_exit(DEADLINE) == 2
            assert "in use by another running master" in b.output
        assert not b_pid_file.exists()
        assert http_get(a.port)[0] == 200


# ----------------------------------------------------------------------------- 8. --reload-include


RELOAD_APP = """
import os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = open(os.path.join(os.path.dirname(__file__), ".env")).read().encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_an_explicit_reload_include_wins_over_a_default_exclude(tmp_path: Path) -> None:
    pytest.importorskip("watchfiles")
    (tmp_path / "envapp.py").write_text(RELOAD_APP)
    (tmp_path / ".env").write_text("one")
    (tmp_path / ".other").write_text("x")
    argv = ["--app-dir", str(tmp_path), "--reload", "--reload-dir", str(tmp_path), "--reload-include", ".env"]
    with start("envapp:app", *argv, workers=1, cwd=tmp_path, ready=False) as server:
        server.wait_ready()  # dev mode keeps the routine lines (N workers ready) quiet
        assert http_get(server.port)[1] == b"one"
        (tmp_path / ".other").write_text("y")  # still excluded by the default .*
        (tmp_path / ".env").write_text("two")
        wait_count(server, r"Reloaded in [0-9.]+ s: \.env changed", 1)
        assert http_get(server.port)[1] == b"two"
        assert count(server, r"\.other") == 0


# ----------------------------------------------------------------------------- 9. the spread


def _listening_inodes(pid: int, port: int) -> set[int]:
    """The socket inodes ``pid`` listens on ``port`` with."""
    inodes = set()
    for conn in psutil.Process(pid).net_connections():
        if conn.status == "LISTEN" and conn.laddr and conn.laddr[1] == port and conn.fd >= 0:
            inodes.add(os.stat(f"/proc/{pid}/fd/{conn.fd}").st_ino)
    return inodes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT groups: Linux")
def test_concurrent_clients_on_fresh_connections_are_spread_evenly_over_the_workers() -> None:
    with start("svapp:app", workers=4) as server:
        pids = worker_pids(server.pid)
        # Each worker serves a socket of its own (SO_REUSEPORT group on the port).
        inodes = [_listening_inodes(pid, server.port) for pid in pids]
        assert all(len(i) == 1 for i in inodes) and len(set().union(*inodes)) == 4, inodes
        seen: dict[int, int] = {}
        lock = threading.Lock()

        def client() -> None:
            for _ in range(40):
                pid = int(http_get(server.port, "/pid")[1])
                with lock:
                    seen[pid] = seen.get(pid, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE * 2)
        assert set(seen) == pids and sum(seen.values()) == 640, seen
        # Random steering: about 160 each; 2.0 is more than 5 standard deviations away.
        assert max(seen.values()) / min(seen.values()) < 2.0, seen


def test_connections_queued_for_a_hung_worker_are_answered_when_it_is_replaced() -> None:
    with start("svapp:app", "--timeout", "2", workers=2) as server:
        pids = worker_pids(server.pid)
        hung_threads, _ = in_flight(server.port, "/hang?60")

        def hung_worker() -> int | None:
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    if any(c.status == "ESTABLISHED" for c in psutil.Process(pid).net_connections()):
                        return pid
            return None

        victim = wait_until(hung_worker, what="the hanging request accepted")
        threads, results = in_flight(server.port, "/pid", n=20)
        server.wait_for_line(rf"Worker \d+ \(pid {victim}\) is hung")
        for thread in threads:
            thread.join(DEADLINE)
        assert len(results) == 20 and all(status == 200 for status, _ in results), results
        assert victim not in {int(body) for _, body in results}
        for thread in hung_threads:
            thread.join(DEADLINE)
