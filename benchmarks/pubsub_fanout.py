"""Pub/sub fan-out: messages delivered per second to 100 subscribers spread over the
workers of one ``asgictl start``, with ``--pubsub master`` against ``--pubsub redis://``
(a redis-server started here, on loopback, with a throw-away configuration).

    python benchmarks/pubsub_fanout.py [--messages 20000] [--workers 4] [--subscribers 100]
                                       [--size 64] [--rounds 3] [--backends master,redis]

This file is also the app it serves (``pubsub_fanout:app``, a plain ASGI app): each
worker's lifespan startup opens its share of the subscribers (``--subscribers`` divided
over ``--workers``) before the worker reports ready, so when asgictl prints "running on"
every subscription is live. ``GET /publish?count=N&size=S`` publishes N messages then an
END marker from whichever worker takes the request; each worker, once all its
subscribers saw END, publishes a report (count delivered, first and last receive times,
gaps) on a ``reports`` channel, which the driver reads over a WebSocket (``/reports``).

Throughput = messages delivered to subscribers (N x subscribers) / (last delivery -
first publish). Loopback only; each round is bounded by --round-timeout; every process
started is ended by PID (and its process group).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness.net import OutputProcess, free_port

# ----------------------------------------------------------------------------- the app

_state: dict[str, Any] = {}


async def _subscriber(sub: Any, stats: dict[str, Any], total: int) -> None:
    from asgictl import pubsub

    count = 0
    first = 0.0
    while True:
        try:
            async for message in sub:
                if message.data == "END":
                    stats["delivered"] += count
                    stats["first"] = min(stats["first"] or first, first) if count else stats["first"]
                    stats["last"] = max(stats["last"], time.time())
                    stats["done"] += 1
                    count = 0
                    if stats["done"] == total:
                        report = dict(stats, pid=os.getpid())
                        stats.update(delivered=0, first=0.0, last=0.0, done=0, gaps=0)
                        await pubsub.publish("reports", json.dumps(report))
                    continue
                if not count:
                    first = time.time()
                count += 1
        except pubsub.Gap:
            stats["gaps"] += 1


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from asgictl import pubsub

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                per_worker = int(os.environ.get("BENCH_SUBSCRIBERS_PER_WORKER", "25"))
                stats = {"delivered": 0, "first": 0.0, "last": 0.0, "done": 0, "gaps": 0}
                subs = [pubsub.subscribe("bench") for _ in range(per_worker)]
                for sub in subs:
                    await sub.__aenter__()  # live before this worker reports ready
                _state["tasks"] = [asyncio.create_task(_subscriber(s, stats, per_worker)) for s in subs]
                await send({"type": "lifespan.startup.complete"})
            else:
                for task in _state.get("tasks", ()):
                    task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        count, size = int(query.get("count", "1000")), int(query.get("size", "64"))
        payload = "x" * size
        start = time.time()
        for _ in range(count):
            await pubsub.publish("bench", payload)
        await pubsub.publish("bench", "END")
        body = json.dumps({"start": start, "end": time.time(), "pid": os.getpid()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] == "websocket":
        await receive()  # connect
        await send({"type": "websocket.accept"})
        async with pubsub.subscribe("reports") as sub:
            await send({"type": "websocket.send", "text": "subscribed"})
            async for message in sub:
                await send({"type": "websocket.send", "text": message.data})


# ----------------------------------------------------------------------------- the driver

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def start_redis(workdir: str) -> tuple[OutputProcess, int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = OutputProcess(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--daemonize", "no", "--logfile", ""],
        HERE,
    )  # fmt: skip
    proc.wait_for(r"Ready to accept connections", 15)
    return proc, port


def run_backend(backend: str, args: argparse.Namespace) -> list[float]:
    from websockets.sync.client import connect

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASGICTL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    per_worker = max(1, args.subscribers // args.workers)
    env["BENCH_SUBSCRIBERS_PER_WORKER"] = str(per_worker)
    subscribers = per_worker * args.workers
    argv = [
        sys.executable, "-m", "asgictl", "start", "pubsub_fanout:app", "--port", "0",
        "--workers", str(args.workers), "--pubsub", backend,
        "--pubsub-max-queue", str(args.messages + 10), "--no-access-log",
    ]  # fmt: skip
    server = OutputProcess(argv, HERE, env)
    figures: list[float] = []
    try:
        url = server.wait_for(r"running on (\S+)", 60).group(1)
        with connect(url.replace("http", "ws", 1) + "/reports", open_timeout=15, max_queue=None) as reports:
            assert reports.recv(15) == "subscribed"
            for _ in range(args.rounds):
                with urllib.request.urlopen(
                    f"{url}/publish?count={args.messages}&size={args.size}", timeout=args.round_timeout
                ) as response:
                    published = json.loads(response.read())
                got = [json.loads(reports.recv(args.round_timeout)) for _ in range(args.workers)]
                delivered = sum(r["delivered"] for r in got)
                gaps = sum(r["gaps"] for r in got)
                elapsed = max(r["last"] for r in got) - published["start"]
                rate = delivered / elapsed
                figures.append(rate)
                print(
                    f"  {backend.split(':')[0]:6} {args.messages} msgs x {subscribers} subscribers:"
                    f" {delivered} delivered in {elapsed:.3f} s = {rate:,.0f} deliveries/s"
                    f" (publisher {args.messages / (published['end'] - published['start']):,.0f} msg/s,"
                    f" gaps {gaps})",
                    flush=True,
                )
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--backends", default="master,redis")
    args = parser.parse_args()

    results: dict[str, float] = {}
    workdir = tempfile.mkdtemp(prefix="asgictl-bench-redis-")
    redis: OutputProcess | None = None
    try:
        for name in args.backends.split(","):
            if name == "redis":
                redis, port = start_redis(workdir)
                backend = f"redis://127.0.0.1:{port}/0"
            else:
                backend = name
            print(f"{name}:", flush=True)
            figures = run_backend(backend, args)
            results[name] = statistics.median(figures)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"fan-out to {args.subscribers} subscribers over {args.workers} workers, median of {args.rounds}:")
    for name, rate in results.items():
        print(f"  {name:8} {rate:>12,.0f} deliveries/s")
    if "master" in results and "redis" in results:
        print(f"  master / redis: {results['master'] / results['redis']:.2f}x")


if __name__ == "__main__":
    main()
