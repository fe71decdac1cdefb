"""Idle keep-alive connections (scenario ``idle-rss``): memory per connection, and who closes them.

Per server and round, on a freshly started server (``apps:hello``, one worker, backlog
8192, a 5 s deadline for idle connections where the server has one):

1. its resident memory (RSS of the process tree, from ``/proc``) is read once it is steady;
2. this process opens N connections that send nothing (non-blocking connects, bounded by
   count and by 3 s, so that none reaches the 5 s deadline before the measurement);
3. it polls until the server holds them (the count of sockets in the server's
   ``/proc/PID/fd``) and its RSS is steady again: (RSS after - RSS before) / connections
   held is the memory per idle connection;
4. 20 normal GETs on fresh connections must still be answered;
5. it polls its idle sockets for the server's close until 5 s + 5 s after the flood:
   how many the server closed, and when the last one went.
"""

from __future__ import annotations

import errno
import resource
import socket
import time
from typing import Any

import apps

from harness import net, procstat
from harness.metrics import Metric, MetricConfig, MetricOutcome, MetricScenario, on_fresh_servers, settle
from harness.scenarios import SCENARIOS_BY_NAME
from harness.servers import (
    HOST,
    RunningServer,
    ServerSpec,
    asgictl_args,
    granian_args,
    uvicorn_args,
)

IDLE_TIMEOUT_S = 5
OPEN_BUDGET_S = IDLE_TIMEOUT_S - 2
HOLD_TIMEOUT_S = 4.0  # from the flood's start: all must be held before the deadline hits
CLOSE_GRACE_S = 5
NORMAL_REQUESTS = 20
RSS_TOLERANCE = 64 * 1024
CLOSE_POLL_S = 0.25
FD_RESERVE = 512  # descriptors left for everything else in the harness


class Flood:
    """N client sockets that connect and then send nothing."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.closed: set[int] = set()  # indexes of sockets the server closed
        self.started = time.monotonic()
        self.stop_reason = ""

    def open(self, port: int, count: int, budget_s: float) -> None:
        deadline = self.started + budget_s
        for _ in range(count):
            if time.monotonic() > deadline:
                self.stop_reason = f"stopped at the {budget_s:.0f} s budget"
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((HOST, port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self.stop_reason = f"connect failed: {errno.errorcode.get(code, code)}"
                break
            self.sockets.append(sock)

    def poll_closed(self) -> int:
        """Check every still-open socket once for the server's close (EOF, reset or an answer)."""
        for index, sock in enumerate(self.sockets):
            if index in self.closed:
                continue
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue  # open, nothing to read
            except OSError:
                pass  # reset
            self.closed.add(index)  # EOF, reset, or the server said something before closing
        return len(self.closed)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def wait_held(server: RunningServer, baseline: int, count: int, deadline: float) -> int:
    """Poll until the server holds ``count`` more sockets than at baseline (or the deadline)."""
    held = 0
    while time.monotonic() < deadline:
        server.check_alive()
        held = procstat.tree_socket_count(server.pid) - baseline
        if held >= count:
            return held
        time.sleep(0.05)
    return held


def normal_requests(port: int) -> dict[str, int]:
    statuses: dict[str, int] = {"ok": 0, "503": 0, "failed": 0}
    for _ in range(NORMAL_REQUESTS):
        try:
            status, body = net.http_get(port, "/", 5.0)
        except (OSError, ValueError):
            statuses["failed"] += 1
            continue
        if status == 200 and body == apps.HELLO_BODY:
            statuses["ok"] += 1
        elif status == 503:
            statuses["503"] += 1
        else:
            statuses["failed"] += 1
    return statuses


def flood_once(server: RunningServer, connections: int) -> dict[str, Any]:
    """Steps 1-5 of the module doc against one running server."""
    pid = server.pid
    rss_before = settle(lambda: procstat.tree_rss_bytes(pid), RSS_TOLERANCE, 3.0)
    sockets_before = settle(lambda: procstat.tree_socket_count(pid), 0, 3.0)
    flood = Flood()
    try:
        flood.open(server.port, connections, OPEN_BUDGET_S)
        opened = len(flood.sockets)
        held = wait_held(server, sockets_before, opened, flood.started + HOLD_TIMEOUT_S)
        rss_after = settle(lambda: procstat.tree_rss_bytes(pid), RSS_TOLERANCE, 1.0)
        held_at = time.monotonic() - flood.started
        answers = normal_requests(server.port)
        deadline = flood.started + IDLE_TIMEOUT_S + CLOSE_GRACE_S
        last_close = None
        while time.monotonic() < deadline:
            closed_before = len(flood.closed)
            if flood.poll_closed() > closed_before:
                last_close = time.monotonic() - flood.started
            if len(flood.closed) == opened:
                break
            time.sleep(CLOSE_POLL_S)
        server.check_alive()
    finally:
        flood.close()
    return {
        "opened": opened,
        "open_note": flood.stop_reason,
        "held": held,
        "held_after_s": held_at,
        "rss_before_mb": rss_before / 1e6,
        "rss_after_mb": rss_after / 1e6,
        "rss_growth_mb": (rss_after - rss_before) / 1e6,
        "kib_per_conn": (rss_after - rss_before) / held / 1024 if held > 0 else None,
        "ok_requests": answers["ok"],
        "status_503": answers["503"],
        "failed_requests": answers["failed"],
        "closed": len(flood.closed),
        "last_close_s": last_close,
        "watched_s": IDLE_TIMEOUT_S + CLOSE_GRACE_S,
    }


def flood_size(wanted: int) -> int:
    """The flood size the descriptor limit allows (the harness raised it at start)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, min(wanted, soft - FD_RESERVE))


def run(scenario: MetricScenario, specs: list[ServerSpec], config: MetricConfig) -> MetricOutcome:
    connections = flood_size(config.idle_connections)
    if connections < config.idle_connections:
        print(f"  note: the descriptor limit allows {connections} idle connections", flush=True)
    parameters = {
        "rounds": config.rounds,
        "connections": connections,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "watched_s": IDLE_TIMEOUT_S + CLOSE_GRACE_S,
        "normal_requests": NORMAL_REQUESTS,
    }
    outcome = MetricOutcome.empty(scenario, specs, parameters)

    def report(round_no: int, spec: ServerSpec, sample: dict[str, Any]) -> None:
        per_conn = sample["kib_per_conn"]
        print(
            f"  round {round_no} {spec.name:<9} {sample['held']:>6,} held of {sample['opened']:,}"
            f"  {'n/a' if per_conn is None else f'{per_conn:.2f}'} KiB/conn"
            f"  {sample['ok_requests']}/{NORMAL_REQUESTS} answered"
            f"  {sample['closed']:,} closed by the server within {sample['watched_s']} s"
            + (f"  ({sample['open_note']})" if sample["open_note"] else ""),
            flush=True,
        )

    on_fresh_servers(
        scenario, specs, config, outcome, config.rounds, "round", lambda s: flood_once(s, connections), report
    )
    return outcome


_IDLE = str(IDLE_TIMEOUT_S)
IDLE_RSS = MetricScenario(
    name="idle-rss",
    description="idle keep-alive connections (connect, send nothing): server memory per connection",
    method=(
        "KiB/conn = growth of the server tree's RSS / connections it holds (lower is better)",
        f"ok/{NORMAL_REQUESTS} = normal GETs answered meanwhile; closed = idle connections the server "
        f"closed within {IDLE_TIMEOUT_S + CLOSE_GRACE_S} s ({IDLE_TIMEOUT_S} s deadline where it has one)",
    ),
    app="apps:hello",
    specs=(
        ServerSpec(
            "asgictl",
            "idle-rss",
            "asgictl",
            asgictl_args(
                "--log-level",
                "warning",
                "--backlog",
                "8192",
                "--timeout-keep-alive",
                _IDLE,
                "--timeout-header-read",
                _IDLE,
            ),
        ),
        ServerSpec(
            "uvicorn",
            "idle-rss",
            "uvicorn",
            uvicorn_args("--log-level", "warning", "--backlog", "8192", "--timeout-keep-alive", _IDLE),
        ),
        ServerSpec(
            "granian",
            "idle-rss",
            "granian",
            granian_args("--backlog", "8192", "--http1-header-read-timeout", str(IDLE_TIMEOUT_S * 1000)),
        ),
    ),
    metrics=(
        Metric("kib_per_conn", "KiB/conn", ".2f", "lower"),
        Metric("rss_growth_mb", "RSS+ MB", ".1f"),
        Metric("held", "held", ",.0f", aggregate="min"),
        Metric("ok_requests", f"ok/{NORMAL_REQUESTS}", ".0f", aggregate="min"),
        Metric("closed", "closed", ",.0f", aggregate="min"),
        Metric("last_close_s", "last close s", ".1f", aggregate="max"),
    ),
    run=run,
    check=SCENARIOS_BY_NAME["hello"].verify,
)
