"""How evenly a multi-worker server spreads requests over its workers, quiet and busy.

Each server runs 4 workers of ``apps:pid`` (the body is the answering worker's PID) on a
loopback port. ``wrk -t1 -c16 -H 'Connection: close'`` (16 concurrent clients, a fresh
connection per request) counts, in a Lua ``response`` callback, the requests each PID
answered. The figure is **max/min**: the busiest worker's count over the idlest one's
(1.0 is a perfect spread; a worker that answered nothing makes it infinite).

Two conditions, interleaved round by round and server by server:

* ``quiet``: nothing else of ours runs (the machine may still be shared: the script
  prints the load average beside the figures);
* ``busy``: ``--hogs`` processes (default: one per CPU) spin on the CPU for the length of
  the measured run, then exit on their own (bounded in time) and are ended by PID.

A second measure, ``slow4``: 2 workers of ``apps:spin`` (200 ms of CPU per request,
the event loop blocked meanwhile), 4 requests sent at the same instant on fresh
connections, ``--slow-rounds`` times: how often they split 2/2, 3/1 or all 4 on one
worker (the last costs the fourth client 800 ms instead of 400 ms).

    python3 benchmarks/worker_spread.py [--rounds 3] [--duration 5] [--servers asgictl,uvicorn]

``asgictl`` runs with its default ``--balance reuseport``, ``asgictl-shared`` with
``--balance shared`` (one listening socket for all workers, as uvicorn and gunicorn).

Like ``run.py``, it runs in ``benchmarks/.venv`` (created on first use) so that the
peers are installed; a peer that is missing is skipped with a note. Every process it
starts is ended by PID (and its process group); every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from harness import bootstrap
from harness.net import OutputProcess, free_port, http_get
from harness.procstat import tree_cpu_seconds
from harness.wrk import parse_latency_distribution

BENCH_DIR = Path(__file__).resolve().parent
WORKERS = 4
CLIENTS = 16
START_TIMEOUT = 60.0

LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  if status == 200 then counts[body] = (counts[body] or 0) + 1 end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for pid, n in pairs(t:get("counts")) do io.write(string.format("PID %s %d\\n", pid, n)) end
  end
  io.write(string.format("ERRORS %d\\n", summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
"""


def commands(app: str, workers: int, port: int) -> dict[str, list[str]]:
    py = sys.executable
    where = ["--host", "127.0.0.1", "--port", str(port)]
    return {
        "asgictl": [py, "-m", "asgictl", "start", app, "--workers", str(workers), *where, "--no-access-log"],
        "asgictl-shared": [
            py, "-m", "asgictl", "start", app, "--workers", str(workers), *where, "--no-access-log",
            "--balance", "shared",
        ],
        "uvicorn": [py, "-m", "uvicorn", app, "--workers", str(workers), *where, "--no-access-log"],
        "gunicorn": [
            py, "-m", "gunicorn", app, "--workers", str(workers), "--bind", f"127.0.0.1:{port}",
            "--worker-class", "uvicorn_worker.UvicornWorker",
        ],
    }  # fmt: skip


def available(name: str) -> bool:
    module = {
        "asgictl": "asgictl",
        "asgictl-shared": "asgictl",
        "uvicorn": "uvicorn",
        "gunicorn": "uvicorn_worker",
    }[name]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


class Server:
    """One server of ``workers`` workers on a free port, its worker PIDs found once it serves."""

    def __init__(self, name: str, app: str, workers: int) -> None:
        self.name = name
        self.port = free_port()
        self.proc = OutputProcess(commands(app, workers, self.port)[name], BENCH_DIR, dict(os.environ))
        deadline = time.monotonic() + START_TIMEOUT
        seen: set[int] = set()
        # Ready once every worker has answered at least once (fresh connections).
        while len(seen) < workers:
            if time.monotonic() > deadline or self.proc.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{''.join(self.proc.lines[-20:])}")
            try:
                seen.add(int(http_get(self.port, "/?1" if "spin" in app else "/", timeout=5)[1]))
            except (OSError, ValueError):
                time.sleep(0.1)
        self.workers = seen

    def stop(self) -> None:
        self.proc.stop()


def hog(seconds: float) -> subprocess.Popen[bytes]:
    """A process that spins on the CPU for ``seconds`` and exits by itself."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def spread_run(server: Server, duration: float, hogs: int, script: Path) -> dict[str, object]:
    """One wrk run; the per-worker counts and max/min."""
    hogs_procs = [hog(duration + 2) for _ in range(hogs)]
    cpu_before = tree_cpu_seconds(server.proc.proc.pid)
    try:
        out = subprocess.run(
            [
                "wrk", "-t1", f"-c{CLIENTS}", f"-d{duration:g}s", "--latency", "-H", "Connection: close",
                "-s", str(script), f"http://127.0.0.1:{server.port}/",
            ],
            capture_output=True, text=True, timeout=duration + 30,
        ).stdout  # fmt: skip
    finally:
        cpu_spent = tree_cpu_seconds(server.proc.proc.pid) - cpu_before
        for proc in hogs_procs:
            end(proc)
    latency = parse_latency_distribution(out)
    counts = {pid: 0 for pid in server.workers}
    for pid, n in re.findall(r"^PID (\d+) (\d+)$", out, re.M):
        counts[int(pid)] = counts.get(int(pid), 0) + int(n)
    errors = int(m.group(1)) if (m := re.search(r"^ERRORS (\d+)$", out, re.M)) else -1
    values = sorted(counts.values())
    ratio = values[-1] / values[0] if values and values[0] else float("inf")
    total = sum(values)
    return {
        "counts": values,
        "max_min": ratio,
        "requests_per_s": total / duration,
        "p50_ms": latency.get(50, 0.0),
        "p99_ms": latency.get(99, 0.0),
        "cpu_us_per_request": cpu_spent / total * 1e6 if total else 0.0,
        "errors": errors,
        "load": os.getloadavg()[0],
    }


def slow4_round(server: Server) -> tuple[int, ...]:
    """Four CPU-bound requests sent at once; the split over the two workers, e.g. (2, 2)."""
    barrier = threading.Barrier(4)
    answers: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            barrier.wait(10)
            sock.sendall(b"GET /?200 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        body = b"".join(chunks).partition(b"\r\n\r\n")[2]
        with lock:
            answers.append(int(body))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    per_worker = Counter(answers)
    return tuple(sorted((per_worker.get(pid, 0) for pid in server.workers), reverse=True))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 2, help="CPU hogs in the busy condition"
    )
    parser.add_argument("--servers", default="asgictl,asgictl-shared,uvicorn,gunicorn")
    parser.add_argument("--slow-rounds", type=int, default=20)
    parser.add_argument("--reinstall", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    bootstrap.ensure_venv(reinstall=args.reinstall)  # may re-exec this script in the venv
    if not shutil.which("wrk"):
        parser.error("wrk is needed (apt-get install wrk)")
    names = []
    for name in args.servers.split(","):
        if name not in ("asgictl", "asgictl-shared", "uvicorn", "gunicorn"):
            parser.error(f"unknown server {name!r}")
        if available(name):
            names.append(name)
        else:
            print(f"note: {name} is not installed in {sys.prefix}; skipped", flush=True)
    results: dict[str, dict[str, list[dict[str, object]]]] = {n: {"quiet": [], "busy": []} for n in names}
    slow: dict[str, Counter[tuple[int, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="spread-") as tmp:
        script = Path(tmp) / "spread.lua"
        script.write_text(LUA)
        servers: dict[str, Server] = {}
        try:
            for name in names:
                servers[name] = Server(name, "apps:pid", WORKERS)
            for round_no in range(1, args.rounds + 1):
                for condition in ("quiet", "busy"):
                    for name in names:
                        run = spread_run(
                            servers[name], args.duration, args.hogs if condition == "busy" else 0, script
                        )
                        results[name][condition].append(run)
                        print(
                            f"round {round_no} {condition:5} {name:14} max/min {run['max_min']:5.2f}"
                            f"  counts {run['counts']}  {run['requests_per_s']:7.0f} req/s"
                            f"  p99 {run['p99_ms']:6.1f} ms  {run['cpu_us_per_request']:5.0f} CPU µs/req"
                            f"  errors {run['errors']}  load {run['load']:.1f}",
                            flush=True,
                        )
        finally:
            for server in servers.values():
                server.stop()
        for name in names:
            server = Server(name, "apps:spin", 2)
            try:
                slow[name] = Counter(slow4_round(server) for _ in range(args.slow_rounds))
            finally:
                server.stop()
    print(f"\n{WORKERS} workers, {CLIENTS} clients on fresh connections, {args.duration:g} s per run, medians"
          f" of {args.rounds} rounds; busy = {args.hogs} CPU hogs")  # fmt: skip
    figures = ("max_min", "requests_per_s", "p99_ms", "cpu_us_per_request")
    print(f"{'':14} {'max/min':>15} {'req/s':>15} {'p99 ms':>15} {'CPU µs/req':>15}")
    print(f"{'server':14}" + f" {'quiet':>7} {'busy':>7}" * len(figures))
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        row = {
            condition: {
                figure: statistics.median(float(run[figure]) for run in results[name][condition])  # type: ignore[arg-type]
                for figure in figures
            }
            for condition in ("quiet", "busy")
        }
        summary[name] = row
        cells = "".join(
            f" {row[c][f]:7.{2 if f == 'max_min' else 0}f}" for f in figures for c in ("quiet", "busy")
        )
        print(f"{name:14}{cells}")
    print(f"\nslow4: 2 workers, 4 CPU-bound requests (200 ms) at once, {args.slow_rounds} rounds: splits")
    for name in names:
        splits = ", ".join(f"{'/'.join(map(str, k))}: {v}" for k, v in sorted(slow[name].items()))
        print(f"{name:14} {splits}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / time.strftime("spread-%Y%m%d-%H%M%S.json")
    path.write_text(
        json.dumps(
            {
                "runs": results,
                "summary": summary,
                "slow4": {n: {"/".join(map(str, k)): v for k, v in c.items()} for n, c in slow.items()},
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
