"""Run the scenarios: start the servers, interleave wrk runs, collect medians.

For each scenario all selected servers of its group are started (each on its own port,
all pinned to CPU 1, idle while another one is measured), warmed up with one short wrk
run, then measured in rounds A B C D, A B C D, ... so that slow drifts in machine load
hit every server alike. The per-server figure is the median over rounds.

Per run: requests/s, p50/p99 latency, server CPU time per request (CPU seconds of the
server's process tree over the wrk run / requests counted by wrk, in µs), the server's CPU
use in % of one core, wrk's own CPU use, and the CPU time that *other* processes took on
each of the two CPUs during the run (noise from neighbours).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import procstat
from harness.scenarios import POST_SIZE, Scenario
from harness.servers import SERVER_CPU, RunningServer, ServerError, ServerSpec, start_server
from harness.wrk import WRK_CPU, WrkResult, run_wrk, write_script, wrk_command

NOISE_WARN_PCT = 5.0
MEDIAN_FIELDS = ("requests_per_s", "p50_ms", "p99_ms", "us_per_request", "server_cpu_pct")


@dataclass
class RunConfig:
    """Options that apply to every scenario."""

    rounds: int
    duration_s: int
    warmup_s: int
    work_dir: Path  # Lua scripts and server logs


@dataclass
class Measurement:
    """One wrk run against one server, with the CPU accounting around it."""

    wrk: WrkResult
    elapsed_s: float
    server_cpu_s: float
    server_cpu_other_s: float  # other processes on the server's CPU
    wrk_cpu_other_s: float  # other processes on wrk's CPU

    @property
    def us_per_request(self) -> float | None:
        return self.server_cpu_s / self.wrk.requests * 1e6 if self.wrk.requests else None

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.wrk.to_dict().items() if key != "raw"}
        data.update(
            elapsed_s=self.elapsed_s,
            server_cpu_s=self.server_cpu_s,
            us_per_request=self.us_per_request,
            server_cpu_pct=100 * self.server_cpu_s / self.elapsed_s,
            wrk_cpu_pct=100 * self.wrk.client_cpu_s / self.elapsed_s,
            other_load_server_cpu_pct=100 * self.server_cpu_other_s / self.elapsed_s,
            other_load_wrk_cpu_pct=100 * self.wrk_cpu_other_s / self.elapsed_s,
        )
        return data


def median_of(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None if there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


@dataclass
class ServerOutcome:
    """All runs of one server in one scenario."""

    name: str
    command: list[str] = field(default_factory=list)
    affinity: list[int] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self) -> dict[str, float | None]:
        """Median of each figure over the successful runs, plus error totals."""
        if not self.runs:
            return {}
        result = {key: median_of(run[key] for run in self.runs) for key in MEDIAN_FIELDS}
        rates = [run["requests_per_s"] for run in self.runs]
        result["spread_pct"] = 100 * (max(rates) - min(rates)) / max(statistics.median(rates), 1e-9)
        result["noise_pct"] = max(
            max(run["other_load_server_cpu_pct"], run["other_load_wrk_cpu_pct"]) for run in self.runs
        )
        result["non_2xx"] = sum(run["non_2xx"] for run in self.runs)
        result["socket_errors"] = sum(run["socket_errors"] for run in self.runs)
        result["requests"] = sum(run["requests"] for run in self.runs)
        return result


@dataclass
class ScenarioOutcome:
    """All servers' results for one scenario."""

    scenario: Scenario
    wrk_command: list[str]
    script: str | None
    servers: dict[str, ServerOutcome] = field(default_factory=dict)


def measure(server: RunningServer, cmd: list[str], duration_s: int) -> Measurement:
    """One wrk run with CPU snapshots of the server tree and both CPUs around it."""
    server.check_alive()
    window = procstat.CpuWindow(server.pid, SERVER_CPU, WRK_CPU)
    result = run_wrk(cmd, duration_s)
    usage = window.stop(result.client_cpu_s)
    server.check_alive()
    return Measurement(
        wrk=result,
        elapsed_s=usage.elapsed_s,
        server_cpu_s=usage.server_cpu_s,
        server_cpu_other_s=usage.server_cpu_other_s,
        wrk_cpu_other_s=usage.client_cpu_other_s,
    )


def wait_all(launched: list[RunningServer], outcome: ScenarioOutcome) -> list[RunningServer]:
    """Wait for each launched server; failures are recorded (and stopped), not raised."""
    ready: list[RunningServer] = []
    for server in launched:
        record = outcome.servers[server.spec.name]
        record.command = server.command
        try:
            server.wait_ready()
        except ServerError as exc:
            record.errors.append(f"start: {exc}")
            print(f"  FAILED to start {exc}", flush=True)
            server.stop()
            continue
        record.affinity = server.affinity
        ready.append(server)
    return ready


def warm_up(servers: list[RunningServer], scenario: Scenario, script: Path | None, seconds: int) -> None:
    """One unmeasured wrk run per server (imports, caches, JIT-less warm paths)."""
    if seconds <= 0:
        return
    for server in servers:
        try:
            cmd = wrk_command(server.url, scenario.connections, seconds, script, scenario.headers)
            run_wrk(cmd, seconds)
        except (RuntimeError, ValueError) as exc:  # the measured runs will report it
            print(f"  {server.spec.name}: warm-up failed: {exc}", flush=True)


def run_rounds(
    servers: list[RunningServer],
    scenario: Scenario,
    script: Path | None,
    config: RunConfig,
    outcome: ScenarioOutcome,
) -> None:
    """Rounds of A B C D ...; a failed run is recorded and the server dropped."""
    active = list(servers)
    for round_no in range(1, config.rounds + 1):
        for server in list(active):
            record = outcome.servers[server.spec.name]
            cmd = wrk_command(server.url, scenario.connections, config.duration_s, script, scenario.headers)
            try:
                measurement = measure(server, cmd, config.duration_s)
                if scenario.kind == "pipeline":
                    measurement.wrk.drop_latency()
                run = measurement.to_dict()
            except (ServerError, RuntimeError, ValueError) as exc:
                record.errors.append(f"round {round_no}: {exc}")
                print(f"  {server.spec.name}: run FAILED: {exc}", flush=True)
                active.remove(server)
                continue
            run["round"] = round_no
            record.runs.append(run)
            print(f"  round {round_no} {run_summary(server.spec.name, run)}", flush=True)


def run_summary(name: str, run: dict[str, Any]) -> str:
    """One progress line for a finished run."""
    us = "n/a" if run["us_per_request"] is None else f"{run['us_per_request']:.1f}"
    p99 = "n/a" if run["p99_ms"] is None else f"{run['p99_ms']:.2f}"
    return (
        f"{name:<12} {run['requests_per_s']:>10,.0f} req/s {us:>7} µs/req  p99 {p99:>7} ms"
        f"{noise_note(run)}{error_note(run)}"
    )


def noise_note(run: dict[str, Any]) -> str:
    """Warn when other processes took a noticeable share of the server's or wrk's CPU."""
    notes = [
        f"CPU {cpu} ({role}) {run[key]:.0f}%"
        for cpu, role, key in (
            (SERVER_CPU, "server", "other_load_server_cpu_pct"),
            (WRK_CPU, "wrk", "other_load_wrk_cpu_pct"),
        )
        if run[key] >= NOISE_WARN_PCT
    ]
    return f"  (other load: {', '.join(notes)})" if notes else ""


def error_note(run: dict[str, Any]) -> str:
    """Short text for a run's errors, empty when there are none."""
    notes = []
    if run["non_2xx"]:
        notes.append(f"non-2xx {run['non_2xx']}")
    if run["socket_errors"]:
        notes.append(
            f"socket errors connect {run['errors_connect']} read {run['errors_read']} "
            f"write {run['errors_write']} timeout {run['errors_timeout']}"
        )
    return "  !! " + ", ".join(notes) if notes else ""


def run_scenario(scenario: Scenario, specs: list[ServerSpec], config: RunConfig) -> ScenarioOutcome:
    """Start the servers, warm up, run the interleaved rounds, stop the servers."""
    script = write_script(scenario.kind, config.work_dir, POST_SIZE)
    url = f"http://127.0.0.1:PORT{scenario.path}"
    example_cmd = wrk_command(url, scenario.connections, config.duration_s, script, scenario.headers)
    outcome = ScenarioOutcome(scenario, example_cmd, script.read_text() if script else None)
    outcome.servers = {spec.name: ServerOutcome(spec.name) for spec in specs}
    launched: list[RunningServer] = []
    try:
        for spec in specs:  # launch all first: they start up in parallel
            launched.append(start_server(spec, scenario, config.work_dir))
        ready = wait_all(launched, outcome)
        warm_up(ready, scenario, script, config.warmup_s)
        run_rounds(ready, scenario, script, config, outcome)
    finally:  # also on Ctrl-C / SIGTERM: never leave a server behind
        for server in launched:
            server.stop()
    return outcome
