"""Dev-mode reload latency: asgictl ``start --reload`` against ``uvicorn --reload``.

For each server, on loopback only, the script edits a small app N times (default 20) and
measures, per edit, the time from the write to the first response carrying the new body
(polling every few ms on fresh connections), and counts the requests that failed in
between (uvicorn restarts its one process: the port refuses connections meanwhile;
asgictl keeps the old workers serving until the new ones are ready). For asgictl it
also reads the master's own figure (change seen -> new workers ready) from its log.

    python benchmarks/reload_latency.py [--edits 20] [--servers asgictl,asgictl-2w,uvicorn]

Both run with their default --reload-delay (0.25 s) and PYTHONDONTWRITEBYTECODE=1, so
neither can be fooled by bytecode cached within the same second. Every edit is bounded
by --edit-timeout and the whole run by the number of edits; every process started is
ended by PID (and its process group).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.net import OutputProcess, free_port

APP = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b"VERSION"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

START_TIMEOUT = 30.0
POLL_SECONDS = 0.005


def commands(port: int, directory: Path) -> dict[str, list[str]]:
    py = sys.executable
    common = ["app:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    asgictl = [py, "-m", "asgictl", "start", *common, "--reload", "--reload-dir", str(directory)]
    return {
        "asgictl": [*asgictl, "--workers", "1"],
        "asgictl-2w": [*asgictl, "--workers", "2"],
        "uvicorn": [py, "-m", "uvicorn", *common, "--reload", "--reload-dir", str(directory)],
    }


def get(port: int, timeout: float = 2.0) -> bytes | None:
    """The body of one GET on a fresh connection, or None if it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.1 200") else None


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)  # write -> new body served
    reported: list[float] = field(default_factory=list)  # asgictl's own log figure
    failed_requests: int = 0
    timeouts: int = 0
    error: str = ""


def write_app(path: Path, version: str) -> None:
    path.write_text(APP.replace("VERSION", version))


def measure(
    name: str, argv_for: dict[str, list[str]], directory: Path, port: int, args: argparse.Namespace
) -> Result:
    result = Result(name)
    app = directory / "app.py"
    write_app(app, "v0")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    proc = OutputProcess(argv_for[name], directory, env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while get(port) != b"v0":
            if time.monotonic() > deadline or proc.proc.poll() is not None:
                result.error = "did not start:\n" + "".join(proc.lines[-20:])
                return result
            time.sleep(0.05)
        for i in range(1, args.edits + 1):
            body = f"v{i}".encode()
            start = time.perf_counter()
            write_app(app, body.decode())
            deadline = time.monotonic() + args.edit_timeout
            while True:
                got = get(port)
                if got == body:
                    result.latencies.append(time.perf_counter() - start)
                    break
                if got is None:
                    result.failed_requests += 1
                if time.monotonic() > deadline:
                    result.timeouts += 1
                    break
                time.sleep(POLL_SECONDS)
            # Let the reload finish (the other workers, the old process's exit) before
            # the next edit, so edits do not overlap.
            settle = time.monotonic() + args.edit_timeout
            while time.monotonic() < settle:
                if name.startswith("asgictl"):
                    if sum("Reloaded in" in line for line in proc.lines) >= i:
                        break
                elif {get(port) for _ in range(3)} == {body}:
                    break
                time.sleep(0.02)
            time.sleep(args.pause)
        for line in proc.lines:
            match = re.search(r"Reloaded in ([0-9.]+) s", line)
            if match:
                result.reported.append(float(match.group(1)))
    finally:
        proc.stop()
    return result


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms" if values else "      n/a"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--servers", default="asgictl,asgictl-2w,uvicorn")
    parser.add_argument("--edit-timeout", type=float, default=15.0, help="per edit, seconds")
    parser.add_argument("--pause", type=float, default=0.3, help="between edits, seconds")
    args = parser.parse_args()
    results = []
    for name in args.servers.split(","):
        with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
            port = free_port()
            directory = Path(tmp)
            argv_for = commands(port, directory)
            if name not in argv_for:
                parser.error(f"unknown server {name!r}; known: {', '.join(argv_for)}")
            print(f"{name}: {' '.join(argv_for[name][1:])}", flush=True)
            results.append(measure(name, argv_for, directory, port, args))
    print()
    print(
        f"{'server':<12} {'edits':>5} {'median write->served':>21} {'min':>10} {'max':>10}"
        f" {'median log (seen->ready)':>25} {'failed reqs':>12} {'timeouts':>9}"
    )
    for r in results:
        if r.error:
            print(f"{r.name:<12} FAILED: {r.error}")
            continue
        lo = f"{min(r.latencies) * 1000:7.0f} ms" if r.latencies else "n/a"
        hi = f"{max(r.latencies) * 1000:7.0f} ms" if r.latencies else "n/a"
        print(
            f"{r.name:<12} {len(r.latencies):>5} {ms(r.latencies):>21} {lo:>10} {hi:>10}"
            f" {ms(r.reported):>25} {r.failed_requests:>12} {r.timeouts:>9}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
