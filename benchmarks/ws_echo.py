"""WebSocket echo: round trips per second and messages per second for small messages,
asgictl (both --ws implementations) against uvicorn, side by side in the same run.

    python benchmarks/ws_echo.py [--duration 5] [--rounds 3] [--connections 16]

Each server serves the bare ASGI echo app below with one worker, pinned to CPU 1 with
taskset; the client (this process: raw sockets, pre-masked 5-byte text frames, no
permessage-deflate, so that the client costs little) runs on CPU 0. Two scenarios:

- ``roundtrip``: each connection sends one message and waits for its echo, repeatedly;
- ``burst``: each connection writes 64 messages in one go, then reads the 64 echoes.

Servers are interleaved (A B C A B C ...) and the median of the rounds is reported, with
the server's CPU time per message (utime + stime / messages: steadier than the rate on a
noisy machine) and the ratio against uvicorn. Every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
from harness.net import free_port

HERE = Path(__file__).resolve().parent
PAYLOAD = b"hello"
BURST = 64


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    """Echo every WebSocket message back."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


SERVERS = {
    "asgictl-websockets": ["-m", "asgictl", "serve", "ws_echo:app", "--ws", "websockets"],
    "asgictl-wsproto": ["-m", "asgictl", "serve", "ws_echo:app", "--ws", "wsproto"],
    "uvicorn": ["-m", "uvicorn", "ws_echo:app", "--ws", "websockets-sansio", "--loop", "uvloop"],
}


def start(name: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, *SERVERS[name], "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    cmd += ["--app-dir", str(HERE)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited early") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head)
    return reader, writer


async def client(port: int, connections: int, duration: float, burst: int) -> int:
    frame = masked_text(PAYLOAD)
    reply = 2 + len(PAYLOAD)
    streams = [await open_ws(port) for _ in range(connections)]
    deadline = time.monotonic() + duration

    async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        done = 0
        batch = frame * burst
        while time.monotonic() < deadline:
            writer.write(batch)
            await reader.readexactly(reply * burst)
            done += burst
        return done

    counts = await asyncio.gather(*(loop(r, w) for r, w in streams))
    for _, writer in streams:
        writer.close()
    return sum(counts)


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    try:
        p = psutil.Process(proc.pid)
        procs = [p, *p.children(recursive=True)]
        return sum(q.cpu_times().user + q.cpu_times().system for q in procs)
    except psutil.NoSuchProcess:
        return 0.0


def measure(name: str, connections: int, duration: float, burst: int) -> tuple[float, float]:
    port = free_port()
    proc = start(name, port)
    try:
        asyncio.run(client(port, connections, 0.5, burst))  # warm-up
        before = cpu_seconds(proc)
        t0 = time.monotonic()
        messages = asyncio.run(asyncio.wait_for(client(port, connections, duration, burst), duration + 30))
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(proc) - before
    finally:
        stop(proc)
    return messages / elapsed, cpu / max(messages, 1) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--servers", default=",".join(SERVERS))
    args = parser.parse_args()
    if shutil.which("taskset"):
        os.sched_setaffinity(0, {0})  # the client on CPU 0, servers on CPU 1
    servers = args.servers.split(",")
    for scenario, burst in (("roundtrip", 1), ("burst", BURST)):
        results: dict[str, list[tuple[float, float]]] = {s: [] for s in servers}
        for _ in range(args.rounds):
            for name in servers:
                results[name].append(measure(name, args.connections, args.duration, burst))
        base = statistics.median(r for r, _ in results["uvicorn"]) if "uvicorn" in results else None
        print(f"\n{scenario} ({args.connections} connections, 5-byte text, median of {args.rounds})")
        print(f"{'server':<20} {'msg/s':>10} {'cpu us/msg':>11} {'vs uvicorn':>11}")
        for name in servers:
            rate = statistics.median(r for r, _ in results[name])
            cpu = statistics.median(c for _, c in results[name])
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"{name:<20} {rate:>10.0f} {cpu:>11.1f} {ratio:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
