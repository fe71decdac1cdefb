"""WebSocket echo (scenario ``ws-echo``): small messages through each server's WebSocket stack.

Every server serves ``apps:ws_echo`` with one worker. The client is this harness process
on CPU 0: raw asyncio streams, pre-masked 5-byte text frames, no permessage-deflate, so
that the client costs little. Per server and round, two runs of ``--duration`` seconds
on 16 connections:

- round trip: each connection sends one message and waits for its echo, repeatedly;
- burst: each connection writes 64 messages in one go, then reads the 64 echoes.

Figures: messages echoed per second, and the server's CPU time per message (CPU seconds
of its process tree over the run / messages, in µs: steadier than the rate on a shared
machine). Servers are started once, warmed up, then measured in interleaved rounds
(A B C D, A B C D, ...); a run is bounded by its duration plus a 30 s margin.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from typing import Any

from harness import procstat
from harness.metrics import (
    CLIENT_CPU,
    Metric,
    MetricConfig,
    MetricOutcome,
    MetricScenario,
    client_cpu_seconds,
    interleaved_rounds,
    running,
)
from harness.servers import (
    HOST,
    SERVER_CPU,
    RunningServer,
    ServerError,
    ServerSpec,
    asgictl_args,
    granian_args,
    uvicorn_args,
)

PAYLOAD = b"hello"
CONNECTIONS = 16
BURST = 64
RUN_MARGIN_S = 30.0
MODES = {"rt": 1, "burst": BURST}  # sample key prefix -> messages written per turn


def masked_frame(payload: bytes) -> bytes:
    """A masked client text frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


ECHO_FRAME = bytes([0x81, len(PAYLOAD)]) + PAYLOAD  # the server's unmasked answer


async def open_ws(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and complete the opening handshake (raises RuntimeError if not 101)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise RuntimeError(f"no WebSocket upgrade: {head[:120]!r}")
    return reader, writer


async def close_all(streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in streams:
        writer.close()
    for _, writer in streams:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def echo_run(server_pid: int, port: int, duration_s: float, burst: int) -> dict[str, float]:
    """Echo for ``duration_s`` on CONNECTIONS connections; messages/s and server CPU µs/message.

    The CPU window covers the echo loop only, not the handshakes.
    """
    streams = [await open_ws(port) for _ in range(CONNECTIONS)]
    try:
        batch = masked_frame(PAYLOAD) * burst
        expected = len(ECHO_FRAME) * burst
        window = procstat.CpuWindow(server_pid, SERVER_CPU, CLIENT_CPU)
        client_before = client_cpu_seconds()
        deadline = time.monotonic() + duration_s

        async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
            done = 0
            while time.monotonic() < deadline:
                writer.write(batch)
                await reader.readexactly(expected)
                done += burst
            return done

        messages = sum(await asyncio.gather(*(loop(reader, writer) for reader, writer in streams)))
        usage = window.stop(client_cpu_seconds() - client_before)
    finally:
        await close_all(streams)
    return {
        "messages": messages,
        "msgs_per_s": messages / usage.elapsed_s,
        "us_per_msg": usage.server_cpu_s / messages * 1e6 if messages else None,
        **usage.to_dict(),
    }


def run_echo(server: RunningServer, duration_s: float, burst: int) -> dict[str, Any]:
    """One bounded echo run against a running server."""
    server.check_alive()
    try:
        result = asyncio.run(
            asyncio.wait_for(echo_run(server.pid, server.port, duration_s, burst), duration_s + RUN_MARGIN_S)
        )
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError) as exc:
        server.check_alive()
        raise ServerError(f"echo run failed: {exc!r}") from exc
    server.check_alive()
    return result


def check_echo(host: str, port: int, timeout_s: float) -> str | None:
    """One handshake and one echoed message."""

    async def once() -> bytes:
        reader, writer = await open_ws(port)
        try:
            writer.write(masked_frame(PAYLOAD))
            return await reader.readexactly(len(ECHO_FRAME))
        finally:
            await close_all([(reader, writer)])

    try:
        answer = asyncio.run(asyncio.wait_for(once(), timeout_s))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError) as exc:
        return f"WebSocket echo failed: {exc!r}"
    return None if answer == ECHO_FRAME else f"unexpected echo frame: {answer!r}"


def sample_of(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One round's sample: both modes' figures under prefixed keys, plus the worst noise."""
    sample: dict[str, Any] = {"runs": runs}
    for mode, run in runs.items():
        sample[f"{mode}_msgs_per_s"] = run["msgs_per_s"]
        sample[f"{mode}_us_per_msg"] = run["us_per_msg"]
    sample["noise_pct"] = max(
        max(run["other_load_server_cpu_pct"], run["other_load_client_cpu_pct"]) for run in runs.values()
    )
    return sample


def run(scenario: MetricScenario, specs: list[ServerSpec], config: MetricConfig) -> MetricOutcome:
    parameters = {
        "rounds": config.rounds,
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "connections": CONNECTIONS,
        "burst": BURST,
        "payload_bytes": len(PAYLOAD),
    }
    outcome = MetricOutcome.empty(scenario, specs, parameters)
    with running(specs, scenario, config, outcome) as ready:

        def measure(server: RunningServer) -> dict[str, Any]:
            return sample_of(
                {mode: run_echo(server, config.duration_s, burst) for mode, burst in MODES.items()}
            )

        def report(round_no: int, server: RunningServer, sample: dict[str, Any]) -> None:
            print(
                f"  round {round_no} {server.spec.name:<16} round trip {sample['rt_msgs_per_s']:>9,.0f} "
                f"msg/s, burst {sample['burst_msgs_per_s']:>9,.0f} msg/s"
                + (f"  (other load up to {sample['noise_pct']:.0f}%)" if sample["noise_pct"] >= 5 else ""),
                flush=True,
            )

        interleaved_rounds(
            ready, config, outcome, lambda server: run_echo(server, config.warmup_s, 1), measure, report
        )
    return outcome


WS_ECHO = MetricScenario(
    name="ws-echo",
    description=f"WebSocket echo of {len(PAYLOAD)}-byte text messages, {CONNECTIONS} connections",
    method=(
        "rt = round trip (send one, wait for its echo); burst = write 64, then read the 64 echoes",
        "msg/s = messages echoed per second; µs/msg = server CPU time per message",
    ),
    app="apps:ws_echo",
    specs=(
        ServerSpec("asgictl", "ws-echo", "asgictl", asgictl_args("--ws", "websockets")),
        ServerSpec("asgictl-wsproto", "ws-echo", "asgictl", asgictl_args("--ws", "wsproto")),
        ServerSpec("uvicorn", "ws-echo", "uvicorn", uvicorn_args("--ws", "websockets-sansio")),
        ServerSpec("granian", "ws-echo", "granian", granian_args()),
    ),
    metrics=(
        Metric("rt_msgs_per_s", "rt msg/s", ",.0f", "higher"),
        Metric("rt_us_per_msg", "rt µs/msg", ".1f", "lower"),
        Metric("burst_msgs_per_s", "burst msg/s", ",.0f", "higher"),
        Metric("burst_us_per_msg", "burst µs/msg", ".1f", "lower"),
        Metric("noise_pct", "noise%", ".0f", aggregate="max"),
    ),
    run=run,
    check=check_echo,
)
