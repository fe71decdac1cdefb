"""Process lifecycle: start to first answer (``startup``), worker SIGKILL to replacement (``respawn``).

``startup``: per repeat and server (interleaved; one unmeasured start of each first, so
that every server finds its files in the page cache), the time from launching the
command to the first correct answer of ``GET /`` (``apps:hello``). The poller tries a
fresh connection every 2 ms; "listening" is when a connection was first accepted (a
master may bind before its worker is ready). The server is then stopped by PID.

``respawn``: every server runs ``apps:pid`` (the body is the answering process's PID)
with 2 workers. Per repeat and server (interleaved), on a freshly started server:

1. GETs in bursts of 3 connections until both workers have answered (their PIDs must be
   descendants of the server's PID);
2. SIGKILL, by PID, to the older of the two;
3. every 10 ms a burst of 3 GETs, until one is answered by a PID that was not a worker
   before (bounded by 30 s). "spawned" is when a new descendant process first appeared;
4. the server is stopped by PID.

A fresh server per repeat makes every kill the first crash in that server's life:
back-to-back kills would measure crash-loop back-off instead (asgictl delays refilling a
slot whose worker died twice within 10 s: 0.5 s, then doubling). The surviving worker
answers meanwhile; the replacement must win one of the burst's connections once it is
ready, which adds at most a few 10 ms polls. Any failure drops the server from the later
repeats.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import apps

from harness import net, procstat
from harness.metrics import Metric, MetricConfig, MetricOutcome, MetricScenario, on_fresh_servers
from harness.scenarios import SCENARIOS_BY_NAME
from harness.servers import (
    HOST,
    READY_TIMEOUT_S,
    RunningServer,
    ServerError,
    ServerSpec,
    asgictl_args,
    granian_args,
    gunicorn_args,
    start_server,
    uvicorn_args,
)

STARTUP_POLL_S = 0.002
RESPAWN_POLL_S = 0.01
RESPAWN_TIMEOUT_S = 30.0
DISCOVER_TIMEOUT_S = 15.0
BURST = 3
WORKERS = 2
REQUEST_TIMEOUT_S = 5.0


# ----------------------------------------------------------------------------- startup


def first_answer(server: RunningServer, deadline: float) -> tuple[float, float]:
    """Poll until ``GET /`` is answered right: (first accepted connection, first answer), monotonic."""
    listening = None
    for _ in range(int(READY_TIMEOUT_S / STARTUP_POLL_S) + 1):
        server.check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((HOST, server.port), timeout=remaining) as sock:
                listening = listening or time.monotonic()
                net.send_get(sock)
                status, body = net.read_response(sock, min(remaining, REQUEST_TIMEOUT_S))
            if status == 200 and body == apps.HELLO_BODY:
                return listening, time.monotonic()
        except (OSError, ValueError):
            pass  # not listening yet, or reset while starting
        time.sleep(STARTUP_POLL_S)
    raise server.fail(f"no right answer within {READY_TIMEOUT_S:.0f}s")


def time_startup(
    spec: ServerSpec, scenario: MetricScenario, config: MetricConfig, tag: str
) -> dict[str, Any]:
    """Launch, wait for the first answer, stop; the times in ms from the launch."""
    started = time.monotonic()
    server = start_server(spec, scenario, config.work_dir, tag)
    try:
        listening, answered = first_answer(server, started + READY_TIMEOUT_S)
    finally:
        stopping = time.monotonic()
        server.stop()
        stopped = time.monotonic()
    return {
        "command": server.command,
        "listening_ms": (listening - started) * 1e3,
        "first_answer_ms": (answered - started) * 1e3,
        "stop_ms": (stopped - stopping) * 1e3,
    }


def run_startup(scenario: MetricScenario, specs: list[ServerSpec], config: MetricConfig) -> MetricOutcome:
    outcome = MetricOutcome.empty(scenario, specs, {"repeats": config.repeats, "unmeasured_starts": 1})
    active = list(specs)
    for spec in list(active):  # one unmeasured start each: page cache, bytecode
        try:
            time_startup(spec, scenario, config, "-warmup")
        except ServerError as exc:
            outcome.servers[spec.name].fail("start", exc)
            active.remove(spec)
    for repeat in range(1, config.repeats + 1):
        for spec in list(active):
            record = outcome.servers[spec.name]
            try:
                sample = time_startup(spec, scenario, config, f"-{repeat}")
            except ServerError as exc:
                record.fail(f"repeat {repeat}", exc)
                active.remove(spec)
                continue
            record.command = sample.pop("command")
            sample["repeat"] = repeat
            record.samples.append(sample)
            print(
                f"  repeat {repeat} {spec.name:<9} first answer after {sample['first_answer_ms']:7.1f} ms"
                f" (listening after {sample['listening_ms']:7.1f} ms)",
                flush=True,
            )
    return outcome


STARTUP = MetricScenario(
    name="startup",
    description="time from launching the server to its first answered request (1 worker)",
    method=(
        "ms = from the launch of the command (taskset included) to the first right answer to GET /",
        "listen ms = first accepted connection (lower is better for both)",
    ),
    app="apps:hello",
    specs=(
        ServerSpec("asgictl", "startup", "asgictl", asgictl_args(command="start")),
        ServerSpec("uvicorn", "startup", "uvicorn", uvicorn_args()),
        ServerSpec("granian", "startup", "granian", granian_args()),
        ServerSpec("gunicorn", "startup", "gunicorn", gunicorn_args()),
    ),
    metrics=(
        Metric("first_answer_ms", "answer ms", ".0f", "lower"),
        Metric("first_answer_max_ms", "max ms", ".0f", "lower", aggregate="max", source="first_answer_ms"),
        Metric("listening_ms", "listen ms", ".0f"),
    ),
    run=run_startup,
    check=SCENARIOS_BY_NAME["hello"].verify,
)


# ----------------------------------------------------------------------------- respawn


def burst_pids(port: int) -> list[int | None]:
    """A burst of GETs on BURST concurrent connections: the answering PIDs (None = failed)."""
    socks: list[socket.socket | None] = []
    try:
        for _ in range(BURST):
            try:
                sock = socket.create_connection((HOST, port), timeout=REQUEST_TIMEOUT_S)
                net.send_get(sock)
                socks.append(sock)
            except OSError:
                socks.append(None)
        pids: list[int | None] = []
        for sock in socks:
            try:
                status, body = net.read_response(sock, REQUEST_TIMEOUT_S) if sock else (0, b"")
            except (OSError, ValueError):
                status, body = 0, b""
            pids.append(int(body) if status == 200 and body.isdigit() else None)
        return pids
    finally:
        for sock in socks:
            if sock:
                sock.close()


def answering_workers(server: RunningServer) -> dict[int, procstat.ProcStat]:
    """Poll until WORKERS distinct descendants of the server have answered (bounded)."""
    seen: set[int] = set()
    deadline = time.monotonic() + DISCOVER_TIMEOUT_S
    for _ in range(int(DISCOVER_TIMEOUT_S / RESPAWN_POLL_S) + 1):
        server.check_alive()
        seen.update(pid for pid in burst_pids(server.port) if pid is not None)
        if len(seen) >= WORKERS:
            tree = procstat.process_tree(server.pid)
            workers = {pid: tree[pid] for pid in seen if pid in tree and pid != server.pid}
            if len(workers) >= WORKERS:
                return workers
            seen = set(workers)  # forget answers from processes that are gone
        if time.monotonic() > deadline:
            break
        time.sleep(RESPAWN_POLL_S)
    raise server.fail(f"only {len(seen)} worker(s) answered within {DISCOVER_TIMEOUT_S:.0f}s")


def time_respawn(server: RunningServer) -> dict[str, Any]:
    """Steps 1-3 of the module doc; the times in ms from the SIGKILL."""
    workers = answering_workers(server)
    victim = min(workers.values(), key=lambda stat: stat.starttime)
    before = set(procstat.process_tree(server.pid))
    if not procstat.same_process_alive(victim):
        raise server.fail(f"worker {victim.pid} exited before the kill")
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)  # by PID: a checked descendant of the server
    spawned = None
    failed = polls = 0
    deadline = killed + RESPAWN_TIMEOUT_S
    while polls < int(RESPAWN_TIMEOUT_S / RESPAWN_POLL_S) + 1 and time.monotonic() < deadline:
        polls += 1
        server.check_alive()
        if spawned is None and set(procstat.process_tree(server.pid)) - before:
            spawned = time.monotonic()
        for pid in burst_pids(server.port):
            if pid is None:
                failed += 1
            elif pid not in workers:
                answered = time.monotonic()
                return {
                    "victim_pid": victim.pid,
                    "replacement_pid": pid,
                    "spawned_ms": None if spawned is None else (spawned - killed) * 1e3,
                    "answer_ms": (answered - killed) * 1e3,
                    "failed_requests": failed,
                    "polls": polls,
                }
        time.sleep(RESPAWN_POLL_S)
    raise server.fail(f"no new worker answered within {RESPAWN_TIMEOUT_S:.0f}s of killing {victim.pid}")


def run_respawn(scenario: MetricScenario, specs: list[ServerSpec], config: MetricConfig) -> MetricOutcome:
    parameters = {
        "repeats": config.repeats,
        "workers": WORKERS,
        "burst": BURST,
        "poll_ms": RESPAWN_POLL_S * 1e3,
        "fresh_server_per_repeat": True,
    }
    outcome = MetricOutcome.empty(scenario, specs, parameters)

    def report(repeat: int, spec: ServerSpec, sample: dict[str, Any]) -> None:
        spawned = sample["spawned_ms"]
        print(
            f"  repeat {repeat} {spec.name:<9} killed {sample['victim_pid']}, "
            f"new worker {sample['replacement_pid']} answered after {sample['answer_ms']:7.1f} ms"
            f" (spawned after {'n/a' if spawned is None else f'{spawned:.1f}'} ms)",
            flush=True,
        )

    on_fresh_servers(scenario, specs, config, outcome, config.repeats, "repeat", time_respawn, report)
    return outcome


def check_pid(host: str, port: int, timeout_s: float) -> str | None:
    """One GET / answered 200 with a PID as the body."""
    try:
        status, body = net.http_get(port, "/", min(timeout_s, REQUEST_TIMEOUT_S))
    except (OSError, ValueError) as exc:
        return f"request failed: {exc!r}"
    return None if status == 200 and body.isdigit() else f"unexpected answer {status}: {body[:80]!r}"


RESPAWN = MetricScenario(
    name="respawn",
    description=f"SIGKILL one of {WORKERS} workers: time until a new worker answers",
    method=(
        "ms = from the SIGKILL to the first answer by a new worker PID (median and max; lower is better)",
        "spawn ms = a new process appeared under the server; failed = requests that failed meanwhile",
        "a fresh server per repeat: every kill is its first crash (no crash-loop back-off measured)",
        "granian respawns dead workers only with --respawn-failed-workers (off by default)",
    ),
    app="apps:pid",
    specs=(
        ServerSpec("asgictl", "respawn", "asgictl", asgictl_args("--workers", str(WORKERS), command="start")),
        ServerSpec("uvicorn", "respawn", "uvicorn", uvicorn_args("--workers", str(WORKERS))),
        ServerSpec("gunicorn", "respawn", "gunicorn", gunicorn_args(workers=WORKERS)),
        ServerSpec(
            "granian", "respawn", "granian", granian_args("--respawn-failed-workers", workers=WORKERS)
        ),
    ),
    metrics=(
        Metric("answer_ms", "answer ms", ".0f", "lower"),
        Metric("answer_max_ms", "max ms", ".0f", "lower", aggregate="max", source="answer_ms"),
        Metric("spawned_ms", "spawn ms", ".0f"),
        Metric("failed_requests", "failed", ".0f", aggregate="sum"),
    ),
    run=run_respawn,
    check=check_pid,
)
