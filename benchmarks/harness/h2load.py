"""HTTP/2 scenarios (``h2-*``): h2load against each server's HTTP/2, cleartext prior knowledge.

Every server serves the scenario's app with one worker, pinned to CPU 1; h2load runs on
CPU 0 (``taskset -c 0 h2load -t1``) for ``--duration`` seconds per run on 64 connections,
with 1 or 10 streams in flight per connection (``-m``). The servers are started once,
warmed up with one short run, then measured in interleaved rounds (A B C D, A B C D, ...).

Figures: requests per second (h2load's count of succeeded requests over the run), and
the server's CPU time per request (CPU seconds of its process tree over the run /
requests, in µs: steadier than the rate on a shared machine). Ratios are against
hypercorn, the other server on the ``h2`` library. A run with a failed or errored
request is reported as failed, not averaged in.

h2load is Debian's ``nghttp2-client``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import apps
import h2.config
import h2.connection
import h2.events

from harness import procstat
from harness.metrics import (
    CLIENT_CPU,
    Metric,
    MetricConfig,
    MetricOutcome,
    MetricScenario,
    interleaved_rounds,
    running,
)
from harness.servers import (
    HOST,
    SERVER_CPU,
    ArgsFn,
    RunningServer,
    ServerError,
    ServerSpec,
    asgictl_args,
    granian_args,
    gunicorn_args,
    uvicorn_args,
)
from harness.wrk import children_cpu_seconds

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
CONNECTIONS = 64
POST_SIZE = 10 * 1024
RUN_MARGIN_S = 60.0


def hypercorn_args() -> ArgsFn:
    """``hypercorn APP --bind HOST:PORT --workers 1`` (h2c by prior knowledge is on)."""

    def args(app: str, port: int | str) -> list[str]:
        return [app, "--bind", f"{HOST}:{port}", "--workers", "1"]

    return args


def h2corn_args() -> ArgsFn:
    """``h2corn APP --host --port --workers 1``."""

    def args(app: str, port: int | str) -> list[str]:
        return [app, "--host", HOST, "--port", str(port), "--workers", "1"]

    return args


SPECS = (
    ServerSpec("asgictl", "h2", "asgictl", asgictl_args()),
    ServerSpec("asgictl-zttp", "h2", "asgictl", asgictl_args("--http2-engine", "zttp")),
    ServerSpec("hypercorn", "h2", "hypercorn", hypercorn_args()),
    ServerSpec("granian", "h2", "granian", granian_args("--http", "2")),
    ServerSpec("uvicorn-zttp", "h2", "uvicorn", uvicorn_args("--http2", http="zttp")),
    ServerSpec("h2corn", "h2", "h2corn", h2corn_args()),
    # gunicorn's own asgi worker and its HTTP/2 (beta since 25, cleartext since 26.2, on the
    # h2 library; loopback is a trusted peer).
    ServerSpec(
        "gunicorn",
        "h2",
        "gunicorn",
        gunicorn_args(
            "--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge", worker_class="asgi"
        ),
    ),
)


def h2load_command(url: str, streams: int, duration_s: int, data: Path | None) -> list[str]:
    cmd = ["taskset", "-c", str(CLIENT_CPU), H2LOAD, "-t1", f"-c{CONNECTIONS}", f"-m{streams}"]
    cmd += [f"-D{duration_s}"]
    if data is not None:
        cmd += ["-d", str(data)]
    return [*cmd, url]


def parse_h2load(text: str) -> tuple[int, int]:
    """(succeeded, failed + errored + timed out) from h2load's report."""
    match = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not match:
        raise ValueError(f"could not parse h2load output:\n{text}")
    succeeded, failed, errored, timeout = (int(g) for g in match.groups())
    return succeeded, failed + errored + timeout


def h2load_run(server: RunningServer, streams: int, duration_s: int, data: Path | None) -> dict[str, Any]:
    """One bounded h2load run with the CPU accounting around it."""
    server.check_alive()
    cmd = h2load_command(server.url, streams, duration_s, data)
    window = procstat.CpuWindow(server.pid, SERVER_CPU, CLIENT_CPU)
    before = children_cpu_seconds()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + RUN_MARGIN_S)
    except subprocess.TimeoutExpired as exc:
        raise ServerError(f"h2load did not finish within {duration_s + RUN_MARGIN_S:.0f}s") from exc
    usage = window.stop(children_cpu_seconds() - before)
    server.check_alive()
    try:
        succeeded, failed = parse_h2load(proc.stdout)
    except ValueError as exc:
        raise ServerError(str(exc)) from exc
    if failed or not succeeded:
        raise ServerError(f"h2load: {succeeded} succeeded, {failed} failed:\n{proc.stdout[-600:]}")
    return {
        "requests": succeeded,
        "requests_per_s": succeeded / usage.elapsed_s,
        "us_per_request": usage.server_cpu_s / succeeded * 1e6,
        **usage.to_dict(),
    }


def check(path: str, body: bytes | None, expected: bytes) -> Any:
    """A ``check(host, port, timeout)``: one request over HTTP/2 and its answer."""

    def run(host: str, port: int, timeout_s: float) -> str | None:
        import socket

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        method = b"POST" if body is not None else b"GET"
        conn.send_headers(
            1,
            [
                (b":method", method),
                (b":path", path.encode()),
                (b":scheme", b"http"),
                (b":authority", b"bench"),
            ],
            end_stream=body is None,
        )
        if body is not None:
            conn.send_data(1, body, end_stream=True)
        got = b""
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as sock:
                sock.sendall(conn.data_to_send())
                while True:
                    data = sock.recv(65536)
                    if not data:
                        return "connection closed before the response"
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.DataReceived):
                            got += event.data
                            conn.acknowledge_received_data(event.flow_controlled_length, 1)
                        elif isinstance(event, h2.events.StreamEnded):
                            return None if got == expected else f"unexpected body ({len(got)} bytes)"
                        elif isinstance(event, h2.events.StreamReset):
                            return f"stream reset: {event.error_code}"
                    sock.sendall(conn.data_to_send())
        except OSError as exc:
            return f"HTTP/2 request failed: {exc!r}"

    return run


def scenario(
    name: str, description: str, app: str, expected: bytes, streams: int, post: bool = False
) -> MetricScenario:
    def run(scenario: MetricScenario, specs: list[ServerSpec], config: MetricConfig) -> MetricOutcome:
        parameters = {
            "rounds": config.rounds,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "connections": CONNECTIONS,
            "streams": streams,
        }
        outcome = MetricOutcome.empty(scenario, specs, parameters)
        with tempfile.TemporaryDirectory() as tmp, running(specs, scenario, config, outcome) as ready:
            data = None
            if post:
                data = Path(tmp) / "body"
                data.write_bytes(b"x" * POST_SIZE)

            def measure(server: RunningServer) -> dict[str, Any]:
                sample = h2load_run(server, streams, config.duration_s, data)
                sample["noise_pct"] = max(
                    sample["other_load_server_cpu_pct"], sample["other_load_client_cpu_pct"]
                )
                return sample

            def report(round_no: int, server: RunningServer, sample: dict[str, Any]) -> None:
                print(
                    f"  round {round_no} {server.spec.name:<14} {sample['requests_per_s']:>10,.0f} req/s "
                    f"{sample['us_per_request']:>7.1f} µs/req"
                    + (
                        f"  (other load up to {sample['noise_pct']:.0f}%)" if sample["noise_pct"] >= 5 else ""
                    ),
                    flush=True,
                )

            interleaved_rounds(
                ready,
                config,
                outcome,
                lambda server: h2load_run(server, streams, config.warmup_s, data),
                measure,
                report,
            )
        return outcome

    return MetricScenario(
        name=name,
        description=description,
        method=(
            f"h2load -t1 -c{CONNECTIONS} -m{streams} on CPU 0, prior knowledge (h2c), interleaved rounds",
            "req/s = succeeded requests per second; µs/req = server CPU time per request",
        ),
        app=app,
        specs=SPECS,
        metrics=(
            Metric("requests_per_s", "req/s", ",.0f", "higher"),
            Metric("us_per_request", "µs/req", ".1f", "lower"),
            Metric("noise_pct", "noise%", ".0f", aggregate="max"),
        ),
        run=run,
        check=check("/", b"x" * POST_SIZE if post else None, b"x" * POST_SIZE if post else expected),
        baseline="hypercorn",
    )


_HELLO = "HTTP/2 GET 13-byte hello, 64 connections x"
H2_SCENARIOS = [
    scenario("h2-hello-m1", f"{_HELLO} 1 stream", "apps:hello", apps.HELLO_BODY, 1),
    scenario("h2-hello-m10", f"{_HELLO} 10 streams", "apps:hello", apps.HELLO_BODY, 10),
    scenario("h2-get64k", "HTTP/2 GET a 64 KiB body, 64 x 1 stream", "apps:get64k", apps.GET64K_BODY, 1),
    scenario("h2-post10k", "HTTP/2 POST 10 KiB echoed, 64 x 1 stream", "apps:echo", b"", 1, post=True),
]
