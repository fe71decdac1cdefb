"""End to end: the control socket, ``asgictl status|reload|scale|stop``, metrics, JSON logs.

A real ``asgictl start --workers 3`` master; the control commands run as real ``python -m
asgictl`` subprocesses; metrics are scraped over HTTP and parsed by prometheus_client.
Every wait polls with a deadline; every process is ended by PID (``run_asgictl``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import support
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess, run_asgictl, wait_until

DEADLINE = 30.0


def ctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgictl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or support.test_env(),
        cwd=support.APPS,
        stdin=subprocess.DEVNULL,
    )


def http_get(port: int, path: str = "/") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while data := sock.recv(65536):
            raw += data
    if not raw.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP response: {raw[:60]!r}")
    return int(raw[9:12])


class Control:
    """A running master with its control socket and metrics endpoint."""

    def __init__(self, server: ServerProcess, path: str) -> None:
        self.server = server
        self.path = path
        match = re.search(r"Metrics: (http://\S+)", server.output)
        self.metrics_url = match.group(1) if match else ""

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ctl(*args, "--control-socket", self.path)

    def status(self) -> dict[str, Any]:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def ready(self, n: int) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            workers = self.status()["workers"]
            ready = [w for w in workers if w["state"] == "ready"]
            return ready if len(ready) == n and len(workers) == n else None

        return wait_until(check, what=f"{n} ready workers and no other")

    def metrics(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    path = str(tmp_path_factory.mktemp("ctl") / "c.ctl")
    args = ["start", "svapp:app", "--workers", "3", "--port", "0", "--no-access-log"]
    args += ["--control-socket", path, "--metrics-bind", "127.0.0.1:0"]
    with run_asgictl(args, ready=False) as server:
        server.wait_for_line(r"3 workers ready")
        server.wait_ready()
        yield Control(server, path)


# ------------------------------------------------------------------------------ status


def test_socket_is_private_to_the_user(control: Control) -> None:
    info = os.stat(control.path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    assert f"Control socket: {control.path}" in control.server.output


def test_status_shows_three_ready_workers_counting_requests(control: Control) -> None:
    before = {w["id"]: w["requests"] for w in control.ready(3)}
    base = control.status()["master"]["requests"]
    for _ in range(60):
        assert http_get(control.server.port) == 200

    # The counters are shared memory written once a second by each worker: poll.
    def counted() -> dict[str, Any] | None:
        status = control.status()
        return status if status["master"]["requests"] >= base + 60 else None

    status = wait_until(counted, what="60 more requests counted")
    workers = status["workers"]
    assert [w["state"] for w in workers] == ["ready"] * 3
    assert sum(w["requests"] - before.get(w["id"], 0) for w in workers) >= 60
    assert all(w["rss"] and w["rss"] > 1_000_000 for w in wait_until(lambda: _sampled(control)))
    master = status["master"]
    assert master["pid"] == control.server.pid and master["state"] == "ready" and master["target"] == 3

    table = control.run("status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("WORKER"))
    for column in ("PID", "STATE", "AGE", "REQUESTS", "CONNS", "REQ/S", "RSS", "CPU%", "RESTARTS", "LAST"):
        assert column in lines[header]
    rows = lines[header + 1 :]
    assert rows[0].split()[:2] == ["master", str(control.server.pid)]
    assert [r.split()[2] for r in rows[1:]] == ["ready"] * 3


def _sampled(control: Control) -> list[dict[str, Any]] | None:
    workers = control.status()["workers"]
    return workers if all(w["rss"] and w["cpu_percent"] is not None for w in workers) else None


def test_protocol_refuses_what_it_does_not_understand(control: Control) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(control.path)
        reader = sock.makefile("rb")

        def ask(line: bytes) -> dict[str, Any]:
            sock.sendall(line + b"\n")
            return json.loads(reader.readline())

        assert "not a JSON object" in ask(b"hello there")["error"]
        assert "not a JSON object" in ask(b"[1, 2]")["error"]
        assert "protocol version 2" in ask(b'{"v": 2, "cmd": "status"}')["error"]
        assert "unknown command 'dance'" in ask(b'{"v": 1, "cmd": "dance"}')["error"]
        assert "unknown argument" in ask(b'{"v": 1, "cmd": "status", "verbose": true}')["error"]
        assert "exactly one of" in ask(b'{"v": 1, "cmd": "scale"}')["error"]
        # The connection is still usable, and ids are echoed.
        reply = ask(b'{"v": 1, "cmd": "hello", "id": 7}')
        assert reply["ok"] and reply["pid"] == control.server.pid and reply["id"] == 7
        # A line past the 64 KiB bound: an error, then the master hangs up.
        sock.sendall(b"x" * (70 * 1024))
        assert "longer than 64 KiB" in json.loads(reader.readline())["error"]
        assert reader.readline() == b""


def test_a_silent_client_does_not_block_the_master(control: Control) -> None:
    # A client that connects and never sends (or sends half a line) costs nothing.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(control.path)
        idle.sendall(b'{"v": 1, "cmd"')
        assert control.status()["master"]["state"] == "ready"
        assert http_get(control.server.port) == 200


# ----------------------------------------------------------------------------- metrics


def test_metrics_are_prometheus_text_per_worker(control: Control) -> None:
    # Workers publish their counts once a second: first let earlier requests settle.
    base, base_sum = _settled(control)[1:]
    for path in ("/", "/", "/missing-is-still-200", "/slow?0.03"):
        assert http_get(control.server.port, path) == 200

    def scraped() -> dict[str, Any] | None:
        families = control.metrics()
        total, duration = _totals(families)
        done = total >= base + 4 and duration - base_sum >= 0.025  # ms timers may wake early
        return families if done and "asgictl_worker_rss_bytes" in families else None

    families = wait_until(scraped, what="the requests in the metrics")
    requests = [s for s in families["asgictl_requests"].samples if s.name == "asgictl_requests_total"]
    assert {s.labels["worker"] for s in requests} >= {"1", "2", "3"}
    histogram = families["asgictl_request_duration_seconds"]
    assert histogram.type == "histogram"
    for worker in ("1", "2", "3"):
        buckets = [
            s for s in histogram.samples if s.name.endswith("_bucket") and s.labels["worker"] == worker
        ]
        values = [s.value for s in buckets]
        assert values == sorted(values) and buckets[-1].labels["le"] == "+Inf"
        (count,) = [
            s.value for s in histogram.samples if s.name.endswith("_count") and s.labels["worker"] == worker
        ]
        total = sum(s.value for s in requests if s.labels["worker"] == worker)
        assert count == buckets[-1].value == total
    # The slow request (30 ms) is beyond the 25 ms bucket of some worker.
    above = [
        s for s in histogram.samples if s.name.endswith("_bucket") and s.labels["le"] in ("0.025", "0.05")
    ]
    by_worker: dict[str, list[float]] = {}
    for sample in above:
        by_worker.setdefault(sample.labels["worker"], []).append(sample.value)
    assert any(le_05 > le_025 for le_025, le_05 in by_worker.values())
    assert families["asgictl_open_connections"].type == "gauge"
    assert {s.labels["worker"] for s in families["asgictl_open_connections"].samples} == {"1", "2", "3"}
    assert all(s.value > 1_000_000 for s in families["asgictl_worker_rss_bytes"].samples)

    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(control.metrics_url.replace("/metrics", "/nope"), timeout=10)
    assert info.value.code == 404


def _totals(families: dict[str, Any]) -> tuple[float, float]:
    requests = families["asgictl_requests"].samples
    total = sum(s.value for s in requests if s.name == "asgictl_requests_total")
    duration = families["asgictl_request_duration_seconds"].samples
    return total, sum(s.value for s in duration if s.name.endswith("_sum"))


def _settled(control: Control) -> tuple[dict[str, Any], float, float]:
    """Metrics that agree with the master's count of requests and stay the same across
    one publication period of the workers (1 s): nothing is still on its way."""
    seen: list[tuple[float, float, float]] = []

    def check() -> tuple[dict[str, Any], float, float] | None:
        families = control.metrics()
        total, duration = _totals(families)
        if total != control.status()["master"]["requests"] or total == 0:
            seen.clear()
            return None
        now = time.monotonic()
        if not seen or seen[0][1:] != (total, duration):
            seen[:] = [(now, total, duration)]
            return None
        return (families, total, duration) if now - seen[0][0] > 1.5 else None

    return wait_until(check, what="the metrics to settle")


# ------------------------------------------------------------------------ scale, reload


def test_scale_up_and_down(control: Control) -> None:
    control.ready(3)
    up = control.run("scale", "+1")
    assert up.returncode == 0, up.stderr
    assert "Scaled from 3 to 4 workers: 4 ready" in up.stdout
    assert len(control.ready(4)) == 4
    down = control.run("scale", "-1")
    assert down.returncode == 0, down.stderr
    assert "Scaled from 4 to 3 workers: 3 ready" in down.stdout
    assert [w["id"] for w in control.ready(3)] == [1, 2, 3]
    bad = control.run("scale", "zero")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_reload_replaces_every_worker_with_no_failed_request(control: Control) -> None:
    before = {w["pid"] for w in control.ready(3)}
    port = control.server.port
    stop = threading.Event()
    results: list[str] = []

    def load() -> None:
        deadline = time.monotonic() + 60  # bounded even if the test fails
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                results.append(str(http_get(port)))
            except OSError as exc:
                results.append(repr(exc))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(results) > 20, what="the load to start")
    result = control.run("reload")
    stop.set()
    for thread in threads:
        thread.join(15)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Reloaded 3/3 workers in [\d.]+ s \(generation \d+\)", result.stdout)
    assert "Reloading:" in result.stderr  # the progress line
    after = {w["pid"] for w in control.ready(3)}
    assert not before & after
    assert set(re.findall(r"\d+:(\d+)", result.stdout)) == {str(p) for p in after}
    failures = [r for r in results if r != "200"]
    assert not failures and len(results) > 20, failures[:5]
    statuses = control.status()["workers"]
    assert all(w["restarts"] >= 1 and w["last_reason"] == "reload" for w in statuses)

    restarts = control.metrics()["asgictl_worker_restarts"].samples
    by_worker = {s.labels["worker"]: s.value for s in restarts if s.labels["reason"] == "reload"}
    assert by_worker == {"1": 1.0, "2": 1.0, "3": 1.0} or all(v >= 1 for v in by_worker.values())
    # Counters survive the reload: the old workers' counts were folded into their ids,
    # so the metrics agree with the master's own count of every request since start.
    wait_until(lambda: _totals(control.metrics())[0] >= len(results), what="every request counted")
    _, total, _ = _settled(control)
    assert total >= len(results)


# ---------------------------------------------------------------------------------- stop


def test_stop_ends_the_master_and_frees_the_port(tmp_path: Path) -> None:
    path = str(tmp_path / "c.ctl")
    args = ["start", "svapp:app", "--workers", "2", "--port", "0", "--control-socket", path]
    with run_asgictl(args, ready=False) as server:
        server.wait_for_line(r"2 workers ready")
        server.wait_ready()
        result = ctl("stop", "--control-socket", path)
        assert result.returncode == 0, result.stderr
        assert f"Stopped master {server.pid}" in result.stdout
        assert server.wait_exit(DEADLINE) == 0
        assert not os.path.exists(path)
        with socket.socket() as probe:  # the port is free again
            probe.bind(("127.0.0.1", server.port))
        gone = ctl("status", "--control-socket", path)
        assert gone.returncode == 1
        assert gone.stdout == "" and gone.stderr.startswith("asgictl: no asgictl server is running")
        assert gone.stderr.count("\n") == 1


def test_default_socket_in_xdg_runtime_dir_and_json_logs(tmp_path: Path) -> None:
    env = support.test_env(XDG_RUNTIME_DIR=str(tmp_path))
    args = ["start", "svapp:app", "--workers", "2", "--port", "0", "--log-format", "json"]
    with run_asgictl(args, env=env, ready=False) as server:
        server.wait_for_line(r"2 workers ready")
        server.url = server.wait_for_line(r"running on (\S+)").group(1)
        # Each master has its own socket, named by its pid, in a directory private to the user.
        assert stat.S_IMODE(os.stat(tmp_path / "asgictl").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tmp_path / "asgictl" / f"{server.pid}.ctl").st_mode) == 0o600
        for _ in range(10):
            assert http_get(server.port, "/pid") == 200
        status = ctl("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        assert len(json.loads(status.stdout)["workers"]) == 2
        stopped = ctl("stop", "--fast", env=env)
        assert stopped.returncode == 0, stopped.stderr
        server.wait_exit(DEADLINE)
    records = [json.loads(line) for line in server.output.splitlines() if line.strip()]
    assert records, server.output
    for record in records:
        assert {"time", "level", "logger", "message", "pid"} <= record.keys()
    workers = [r for r in records if r["pid"] != server.pid]
    assert workers and all(r.get("worker") in (1, 2) for r in workers)
    access = [r for r in records if r["logger"] == "asgictl.access"]
    assert len(access) == 10 and all(r["path"] == "/pid" and r["status"] == 200 for r in access)
    assert all(isinstance(r["duration_ms"], float) for r in access)
