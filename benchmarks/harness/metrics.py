"""Scenarios that are not a wrk run: their columns, per-server samples and common steps.

A ``MetricScenario`` has its own servers (``ServerSpec``s with their own command lines,
e.g. ``--workers 2``), its own columns (``Metric``: which sample figure, how the samples
are aggregated, and which way is better) and a ``run`` function that fills a
``MetricOutcome`` with one sample per server and round (or repeat). The report puts each
figure next to the baseline's (uvicorn) as a ratio, as for the wrk scenarios.

The client side of these scenarios is this harness process, which ``run.py`` pins to
CPU 0 (as ``taskset -c 0`` would); the servers run under ``taskset -c 1``.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.servers import RunningServer, ServerError, ServerSpec, start_server
from harness.wrk import WRK_CPU

Better = Literal["higher", "lower"]
Aggregate = Literal["median", "max", "min", "sum"]
SETTLE_INTERVAL_S = 0.05
CLIENT_CPU = WRK_CPU  # the harness runs there, and is the client of these scenarios


@dataclass(frozen=True)
class Metric:
    """One column: a figure taken from every sample, aggregated over the samples."""

    key: str  # name in the summary (and the JSON)
    label: str  # column header
    fmt: str  # format spec of the value
    better: Better | None = None  # None: shown for information, without a ratio
    aggregate: Aggregate = "median"
    source: str = ""  # the samples' key, when it differs from ``key`` (e.g. median and max of one)

    @property
    def sample_key(self) -> str:
        return self.source or self.key

    def summarize(self, samples: list[dict[str, Any]]) -> float | None:
        """The aggregate over the samples that have the figure; None if none has it."""
        values = [s[self.sample_key] for s in samples if s.get(self.sample_key) is not None]
        if not values:
            return None
        if self.aggregate == "median":
            return float(statistics.median(values))
        if self.aggregate == "max":
            return float(max(values))
        if self.aggregate == "min":
            return float(min(values))
        return float(sum(values))


@dataclass(frozen=True)
class MetricConfig:
    """Sizes for the non-wrk scenarios (smaller with --quick)."""

    rounds: int  # ws-echo and idle-rss rounds
    duration_s: int  # seconds per ws-echo run
    warmup_s: int  # seconds of unmeasured ws-echo per server (0 = none)
    repeats: int  # startup and respawn repeats per server
    idle_connections: int  # idle-rss flood size
    work_dir: Path  # server logs


@dataclass
class ServerResult:
    """All samples of one server in one scenario."""

    name: str
    command: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, metrics: tuple[Metric, ...]) -> dict[str, float | None]:
        return {metric.key: metric.summarize(self.samples) for metric in metrics} if self.samples else {}

    def fail(self, what: str, exc: BaseException) -> None:
        """Record a failure (the whole message) and print its first line."""
        self.errors.append(f"{what}: {exc}")
        print(f"  {self.name}: {what} FAILED: {str(exc).splitlines()[0]}", flush=True)


@dataclass(frozen=True)
class MetricScenario:
    """A scenario with its own servers, columns and measuring function (see the module doc)."""

    name: str
    description: str
    method: tuple[str, ...]  # how it measures, printed under the title (one line each)
    app: str
    specs: tuple[ServerSpec, ...]
    metrics: tuple[Metric, ...]
    run: Callable[[MetricScenario, list[ServerSpec], MetricConfig], MetricOutcome]
    check: Callable[[str, int, float], str | None]  # one real answer: an error or None
    path: str = "/"
    baseline: str = "uvicorn"

    def verify(self, host: str, port: int, timeout_s: float) -> str | None:
        return self.check(host, port, timeout_s)


@dataclass
class MetricOutcome:
    """All servers' samples for one scenario, and the sizes it ran with."""

    scenario: MetricScenario
    parameters: dict[str, Any]
    servers: dict[str, ServerResult] = field(default_factory=dict)

    @classmethod
    def empty(
        cls, scenario: MetricScenario, specs: list[ServerSpec], parameters: dict[str, Any]
    ) -> MetricOutcome:
        return cls(scenario, parameters, {spec.name: ServerResult(spec.name) for spec in specs})

    def summaries(self) -> dict[str, dict[str, float | None]]:
        return {name: result.summary(self.scenario.metrics) for name, result in self.servers.items()}


def client_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the client of the non-wrk scenarios)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def launch(spec: ServerSpec, scenario: MetricScenario, config: MetricConfig, tag: str = "") -> RunningServer:
    """Start one server and wait until it answers right; stopped again if it does not."""
    server = start_server(spec, scenario, config.work_dir, tag)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def on_fresh_servers(
    scenario: MetricScenario,
    specs: list[ServerSpec],
    config: MetricConfig,
    outcome: MetricOutcome,
    count: int,
    label: str,
    measure: Callable[[RunningServer], dict[str, Any]],
    report: Callable[[int, ServerSpec, dict[str, Any]], None],
) -> None:
    """``count`` rounds (named ``label`` in samples and errors); in each, every server
    still in the run is started afresh, measured once, stopped by PID and reported. A
    server that fails to start or to be measured is recorded and left out of the rest."""
    active = list(specs)
    for number in range(1, count + 1):
        for spec in list(active):
            record = outcome.servers[spec.name]
            try:
                server = launch(spec, scenario, config, tag=f"-{number}")
            except ServerError as exc:
                record.fail(f"start ({label} {number})", exc)
                active.remove(spec)
                continue
            try:
                record.command = server.command
                sample = measure(server)
            except ServerError as exc:
                record.fail(f"{label} {number}", exc)
                active.remove(spec)
                continue
            finally:
                server.stop()
            sample[label] = number
            record.samples.append(sample)
            report(number, spec, sample)


def interleaved_rounds(
    ready: list[RunningServer],
    config: MetricConfig,
    outcome: MetricOutcome,
    warm: Callable[[RunningServer], object],
    measure: Callable[[RunningServer], dict[str, Any]],
    report: Callable[[int, RunningServer, dict[str, Any]], None],
) -> None:
    """On servers already running (see :func:`running`): ``warm`` each one once (when
    ``config.warmup_s``), then ``config.rounds`` rounds in which every server still in
    the run is measured once, in turn (A B C, A B C, ...); each sample gets its
    ``round``, is recorded and reported. A server that fails is recorded and left out of
    the rest."""
    active = []
    for server in ready:
        try:
            if config.warmup_s:
                warm(server)
            active.append(server)
        except ServerError as exc:
            outcome.servers[server.spec.name].fail("warm-up", exc)
    for round_no in range(1, config.rounds + 1):
        for server in list(active):
            record = outcome.servers[server.spec.name]
            try:
                sample = measure(server)
            except ServerError as exc:
                record.fail(f"round {round_no}", exc)
                active.remove(server)
                continue
            sample["round"] = round_no
            record.samples.append(sample)
            report(round_no, server, sample)


@contextlib.contextmanager
def running(
    specs: list[ServerSpec], scenario: MetricScenario, config: MetricConfig, outcome: MetricOutcome
) -> Iterator[list[RunningServer]]:
    """Start all servers at once (they boot in parallel), yield the ready ones, stop all by PID.

    A server that fails to start is recorded in the outcome and left out.
    """
    launched: list[RunningServer] = []
    try:
        for spec in specs:
            launched.append(start_server(spec, scenario, config.work_dir))
        ready = []
        for server in launched:
            record = outcome.servers[server.spec.name]
            record.command = server.command
            try:
                server.wait_ready()
            except ServerError as exc:
                record.fail("start", exc)
                server.stop()
                continue
            ready.append(server)
        yield ready
    finally:  # also on Ctrl-C / SIGTERM
        for server in launched:
            server.stop()


def settle(read: Callable[[], int], tolerance: int, timeout_s: float) -> int:
    """Poll ``read`` until two readings in a row differ by at most ``tolerance`` (or the deadline)."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(SETTLE_INTERVAL_S)
        value = read()
        if abs(value - last) <= tolerance:
            return value
        last = value
    return last
