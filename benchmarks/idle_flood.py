"""A flood of idle connections against asgictl (and uvicorn, for comparison), loopback only.

    python3 benchmarks/idle_flood.py [--connections 5000] [--server asgictl|uvicorn|both]

Opens N connections that send nothing (bounded count, bounded time), then reports the
server's RSS growth per idle connection, whether normal requests are still answered
while they are open, and how long until the server has closed them all (the
keep-alive / header-read deadline at work). With --limit-concurrency it also reports
how many extra requests got 503.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from harness.net import free_port, stop, wait_port

ROOT = Path(__file__).resolve().parent.parent
KEEP_ALIVE = 5


def normal_request(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return int(sock.recv(64).split(b" ")[1])


def tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def command(server: str, port: int, limit: int | None) -> list[str]:
    if server == "asgictl":
        cmd = [
            sys.executable,
            "-m",
            "asgictl",
            "serve",
            "examples.hello:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            str(KEEP_ALIVE),
            "--timeout-header-read",
            str(KEEP_ALIVE),
            "--backlog",
            "8192",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.hello:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            str(KEEP_ALIVE),
            "--backlog",
            "8192",
        ]
    if limit:
        cmd += ["--limit-concurrency", str(limit)]
    return cmd


def flood(server: str, connections: int, limit: int | None) -> None:
    port = free_port()
    proc = subprocess.Popen(command(server, port, limit), cwd=ROOT, start_new_session=True)
    sockets: list[socket.socket] = []
    try:
        wait_port(port)
        assert normal_request(port) == 200
        before = tree_rss(proc.pid)
        start = time.monotonic()
        for _ in range(connections):
            if time.monotonic() - start > KEEP_ALIVE - 1:
                break  # open them all within the deadline, or the early ones are gone
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        opened = len(sockets)
        time.sleep(1.0)  # let the server accept the backlog before measuring
        after = tree_rss(proc.pid)
        statuses = [normal_request(port) for _ in range(20)]
        deadline = time.monotonic() + KEEP_ALIVE + 10
        open_now = opened
        while time.monotonic() < deadline:
            open_now = len(psutil.Process(proc.pid).net_connections(kind="tcp")) - 1
            if open_now <= 0:
                break
            time.sleep(0.5)
        print(
            f"{server:8} idle connections opened: {opened}  RSS growth: "
            f"{(after - before) / max(opened, 1):.0f} B/connection  "
            f"normal requests while flooded: {statuses.count(200)}/20 ok, {statuses.count(503)} got 503  "
            f"connections still open {KEEP_ALIVE + 10} s later: {max(open_now, 0)}"
        )
    finally:
        for sock in sockets:
            sock.close()
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--server", choices=["asgictl", "uvicorn", "both"], default="both")
    parser.add_argument("--limit-concurrency", type=int, default=None)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.connections + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    servers = ["asgictl", "uvicorn"] if args.server == "both" else [args.server]
    for server in servers:
        flood(server, min(args.connections, want - 512), args.limit_concurrency)


if __name__ == "__main__":
    main()
