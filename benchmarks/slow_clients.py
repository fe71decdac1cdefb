"""Slow-client attacks against asgictl with Debian's slowhttptest (loopback only).

    python3 benchmarks/slow_clients.py [--connections 400] [--length 30]

For each mode (slowloris: slow headers; R-U-Dead-Yet: slow body) it starts
``asgictl serve`` with short read deadlines, runs slowhttptest against it, and probes
the server with normal requests every half second meanwhile. It reports, from
slowhttptest's per-second CSV, the most slow connections held open at once and how many
were still open once the deadline (plus the sweep's one-second resolution and a margin)
had passed since they connected — the goal is none — and the share of normal probes
answered. Every run is bounded by --length; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from harness.net import free_port, stop, wait_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 5  # --timeout-header-read and --timeout-body-read for the run


def probe(port: int, done: threading.Event, results: list[bool]) -> None:
    request = b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    while not done.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(request)
                results.append(sock.recv(64).startswith(b"HTTP/1.1 200"))
        except OSError:
            results.append(False)
        done.wait(0.5)


def run_mode(mode: str, connections: int, length: int, interval: int) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen(
        [
            # echo reads the whole body before answering, so a slow body really holds it
            sys.executable,
            "-m",
            "asgictl",
            "serve",
            "benchmarks.apps:echo",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-header-read",
            str(DEADLINE),
            "--timeout-body-read",
            str(DEADLINE),
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    done = threading.Event()
    probes: list[bool] = []
    try:
        wait_port(port)
        prober = threading.Thread(target=probe, args=(port, done, probes), daemon=True)
        prober.start()
        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "stats")
            subprocess.run(
                [
                    "slowhttptest",
                    mode,
                    "-c",
                    str(connections),
                    "-r",
                    str(max(connections // 4, 50)),
                    "-i",
                    str(interval),
                    "-l",
                    str(length),
                    "-s",
                    "65536",
                    "-u",
                    f"http://127.0.0.1:{port}/",
                    "-g",
                    "-o",
                    prefix,
                    "-p",
                    "3",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=length + 60,
                check=False,
            )
            rows = list(csv.DictReader(open(prefix + ".csv")))
        done.set()
        prober.join(5)
    finally:
        done.set()
        stop(server)
    connected = [int(row["Connected"]) for row in rows]
    available = [int(row["Service Available"]) for row in rows]
    # slowhttptest opens its connections over the first connections/rate seconds; from
    # then on, once the deadline plus the sweep's resolution (and a margin) has passed,
    # every slow connection it holds is one that outlived the deadline.
    ramp = -(-connections // max(connections // 4, 50))
    settle = ramp + DEADLINE + 2
    survivors = max((connected[t] for t in range(settle, len(connected))), default=0)
    return {
        "mode": "slowloris (slow headers)" if mode == "-H" else "slow body (R-U-Dead-Yet)",
        "seconds": len(rows),
        "peak_connected": max(connected, default=0),
        "held_past_deadline": survivors,
        "probes_ok": f"{sum(probes)}/{len(probes)}",
        "slowhttptest_saw_service_available": f"{sum(1 for a in available if a)}/{len(available)} s",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--length", type=int, default=30, help="seconds per mode")
    parser.add_argument(
        "--interval",
        type=int,
        default=10,
        help="seconds between the attacker's bytes (slowhttptest's default; below the body "
        "deadline a slow body keeps making progress and is not cut: a slow client, not a dead one)",
    )
    args = parser.parse_args()
    if shutil.which("slowhttptest") is None:
        sys.exit("slowhttptest is not installed: apt-get install slowhttptest")
    print(
        f"deadlines: --timeout-header-read {DEADLINE} --timeout-body-read {DEADLINE}; "
        f"attacker sends every {args.interval} s"
    )
    for mode in ("-H", "-B"):
        result = run_mode(mode, args.connections, args.length, args.interval)
        print(
            f"{result['mode']:28} peak open {result['peak_connected']:4}  "
            f"open at a time when every slow connection was past the deadline: "
            f"{result['held_past_deadline']:4}  normal probes answered: {result['probes_ok']}"
            f"  (slowhttptest's own probe: {result['slowhttptest_saw_service_available']})"
        )


if __name__ == "__main__":
    main()
