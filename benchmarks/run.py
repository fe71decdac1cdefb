#!/usr/bin/env python3
"""Benchmark asgictl against uvicorn, granian, h2corn, fastpysgi and gunicorn+uvicorn-worker.

One command (see benchmarks/README.md)::

    python3 benchmarks/run.py            # full run: every scenario, 3 rounds of 5 s
    python3 benchmarks/run.py --quick    # smoke run: 1 round of 2 s, fewer repeats
    python3 benchmarks/run.py --list     # the servers and scenarios
    python3 benchmarks/run.py --python 3.13 --scenarios hello,hello-browser   # on Python 3.13

Besides the wrk scenarios it runs WebSocket echo (``ws-echo``), memory per idle
connection (``idle-rss``), start to first answer (``startup``) and worker SIGKILL to
replacement answering (``respawn``), each figure next to uvicorn's.

The first run creates ``benchmarks/.venv`` and installs the peers (and asgictl with
``pip install -e .`` of the repo) into it, then re-executes itself with that venv's
Python. Servers are pinned to CPU 1, wrk and this harness (the client of the other
scenarios) to CPU 0. Results go to ``benchmarks/results/<timestamp>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bootstrap

if TYPE_CHECKING:
    from harness.servers import ServerSpec

NOFILE_TARGET = 65536
REPEATS, QUICK_REPEATS = 5, 3
IDLE_CONNECTIONS, QUICK_IDLE_CONNECTIONS = 5000, 1000


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark asgictl against its peers (servers on CPU 1, wrk on CPU 0)."
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per scenario (3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (5)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of unmeasured wrk per server and scenario (1; 0 = none)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help=f"startup and respawn repeats per server ({REPEATS}; --quick {QUICK_REPEATS})",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        help=f"idle-rss flood size ({IDLE_CONNECTIONS}; --quick {QUICK_IDLE_CONNECTIONS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 1 round of 2 s, {QUICK_REPEATS} repeats, {QUICK_IDLE_CONNECTIONS} idle connections",
    )
    parser.add_argument("--servers", help="comma-separated subset of servers (see --list)")
    parser.add_argument("--scenarios", help="comma-separated subset of scenarios (see --list)")
    parser.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    parser.add_argument(
        "--reinstall", action="store_true", help="reinstall the venv's packages (picks up new peer releases)"
    )
    parser.add_argument(
        "--python",
        metavar="EXE",
        help="build the venv with this interpreter: a path, a command or a version such as 3.13 "
        "(venv benchmarks/.venv-X.Y; default: benchmarks/.venv with the interpreter running this)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=bootstrap.BENCH_DIR / "results", help="where JSON and PNG go"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    if args.idle_connections is None:
        args.idle_connections = QUICK_IDLE_CONNECTIONS if args.quick else IDLE_CONNECTIONS
    if min(args.rounds, args.duration, args.repeats, args.idle_connections) < 1 or args.warmup < 0:
        parser.error("--rounds, --duration, --repeats and --idle-connections must be >= 1, --warmup >= 0")
    return args


def split_names(value: str | None, known: Iterable[str], what: str) -> list[str] | None:
    """Parse a comma-separated selection, rejecting unknown names."""
    if value is None:
        return None
    known = list(dict.fromkeys(known))
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        sys.exit(f"error: unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def raise_nofile_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE for the harness and its children (wrk -c1024, the servers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < NOFILE_TARGET:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_TARGET, NOFILE_TARGET))
            return NOFILE_TARGET, NOFILE_TARGET
        except (ValueError, OSError):
            pass  # not privileged: use the hard limit we have
    target = min(hard, NOFILE_TARGET) if hard != resource.RLIM_INFINITY else NOFILE_TARGET
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def check_cpus() -> None:
    """The harness needs CPUs 0 and 1; it pins itself to CPU 0 (wrk's) to spare CPU 1."""
    cpus = os.sched_getaffinity(0)
    if not {0, 1} <= cpus:
        sys.exit(f"error: CPUs 0 and 1 must be available (affinity {sorted(cpus)})")
    os.sched_setaffinity(0, {0})


def available(specs: Iterable[ServerSpec], noted: set[str]) -> list[ServerSpec]:
    """The specs whose executable is in the venv; a note (once per server) for the others."""
    kept = []
    for spec in specs:
        if spec.available():
            kept.append(spec)
        elif spec.name not in noted:
            noted.add(spec.name)
            print(
                f"note: skipping {spec.name}: {spec.executable} is not installed in the venv"
                + (" (no pyproject.toml at the repo root yet?)" if spec.executable == "asgictl" else "")
            )
    return kept


def select(args: argparse.Namespace) -> tuple[list, list, list]:
    """The wrk scenarios and their server specs, and the other scenarios with their specs."""
    from harness import wsgi_group  # noqa: F401  (adds the WSGI and file scenarios)
    from harness.catalog import METRIC_SCENARIOS
    from harness.scenarios import SCENARIOS
    from harness.servers import SERVERS

    server_names = split_names(
        args.servers,
        [s.name for s in SERVERS] + [spec.name for m in METRIC_SCENARIOS for spec in m.specs],
        "server",
    )
    scenario_names = split_names(
        args.scenarios, [s.name for s in SCENARIOS] + [m.name for m in METRIC_SCENARIOS], "scenario"
    )
    noted: set[str] = set()

    def chosen(specs: Iterable[ServerSpec]) -> list[ServerSpec]:
        return available((s for s in specs if server_names is None or s.name in server_names), noted)

    specs = chosen(SERVERS)
    scenarios = [s for s in SCENARIOS if scenario_names is None or s.name in scenario_names]
    scenarios = [s for s in scenarios if any(spec.group == s.group for spec in specs)]
    others = [
        (m, chosen(m.specs)) for m in METRIC_SCENARIOS if scenario_names is None or m.name in scenario_names
    ]
    return scenarios, specs, [(m, m_specs) for m, m_specs in others if m_specs]


def print_list() -> None:
    from harness import wsgi_group  # noqa: F401  (adds the WSGI and file scenarios)
    from harness.catalog import METRIC_SCENARIOS
    from harness.scenarios import SCENARIOS
    from harness.servers import SERVERS

    print("servers (wrk scenarios):")
    for spec in SERVERS:
        print(f"  {spec.name:<15} group {spec.group:<5} {shlex.join(spec.command('APP', 'PORT'))}")
    print("wrk scenarios:")
    for scenario in SCENARIOS:
        print(
            f"  {scenario.name:<15} group {scenario.group:<5} -c{scenario.connections:<5} "
            f"{scenario.description}"
        )
    print("other scenarios (the client is this harness, on CPU 0), with their servers:")
    for metric_scenario in METRIC_SCENARIOS:
        print(f"  {metric_scenario.name:<13} {metric_scenario.description}")
        for spec in metric_scenario.specs:
            print(f"    {spec.name:<16} {shlex.join(spec.command(metric_scenario.app, 'PORT'))}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bootstrap.ensure_venv(reinstall=args.reinstall, python=args.python)  # may re-exec in the venv
    if args.list:
        print_list()
        return 0

    from harness import machine, report, runner
    from harness.metrics import MetricConfig

    # SIGTERM unwinds like Ctrl-C, so that the servers are stopped by the finally blocks.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    info = machine.machine_info()  # before check_cpus() pins this process to one CPU
    check_cpus()
    nofile = raise_nofile_limit()
    scenarios, specs, others = select(args)
    if not scenarios and not others:
        sys.exit("error: nothing to run (no selected server takes part in a selected scenario)")
    runs = sum(args.rounds * len([s for s in specs if s.group == sc.group]) for sc in scenarios)
    print(
        f"{len(scenarios)} wrk scenario(s), {runs} measured runs of {args.duration}s "
        f"(about {runs * args.duration / 60:.1f} min plus warm-up); servers on CPU 1, wrk on CPU 0"
    )
    if others:
        print(
            f"then {', '.join(m.name for m, _ in others)}: servers on CPU 1 (taskset -c 1), the client is "
            f"this harness on CPU 0; {args.rounds} round(s) of {args.duration}s (ws-echo), {args.rounds} "
            f"flood(s) of {args.idle_connections} (idle-rss), {args.repeats} repeats (startup, respawn)"
        )

    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "server_cpu": 1,
            "wrk_cpu": 0,
            "rlimit_nofile": nofile,
            "repeats": args.repeats,
            "idle_connections": args.idle_connections,
            "harness_cpu": 0,  # the client of the non-wrk scenarios
        },
        "machine": info,
        "scenarios": [],
    }
    outcomes = []
    metric_outcomes = []
    with tempfile.TemporaryDirectory(prefix="asgictl-bench-") as work_dir:
        config = runner.RunConfig(args.rounds, args.duration, args.warmup, Path(work_dir))
        for scenario in scenarios:
            print(f"\n--- {scenario.name}: {scenario.description}", flush=True)
            group = []
            for spec in specs:
                reason = spec.unsupported_reason(scenario.name)
                if spec.group != scenario.group:
                    continue
                if reason:
                    print(f"note: {spec.name} skipped: {reason}")
                else:
                    group.append(spec)
            outcome = runner.run_scenario(scenario, group, config)
            outcomes.append(outcome)
            print(report.format_table(outcome, args.rounds), flush=True)
        metric_config = MetricConfig(
            rounds=args.rounds,
            duration_s=args.duration,
            warmup_s=args.warmup,
            repeats=args.repeats,
            idle_connections=args.idle_connections,
            work_dir=Path(work_dir),
        )
        for metric_scenario, metric_specs in others:
            print(f"\n--- {metric_scenario.name}: {metric_scenario.description}", flush=True)
            metric_outcome = metric_scenario.run(metric_scenario, metric_specs, metric_config)
            metric_outcomes.append(metric_outcome)
            print(report.format_metric_table(metric_outcome), flush=True)

    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["machine"]["load_average_end"] = os.getloadavg()
    results["scenarios"] = [report.outcome_to_dict(outcome) for outcome in outcomes] + [
        report.metric_outcome_to_dict(outcome) for outcome in metric_outcomes
    ]
    json_path = args.results_dir / f"{stamp}.json"
    report.write_json(json_path, results)
    png_path = json_path.with_suffix(".png")
    charted = report.write_chart(png_path, outcomes, metric_outcomes)

    print("\n=========== summary (medians; x = ratio to the baseline, µs/req = server CPU per request)")
    for outcome in outcomes:
        print(report.format_table(outcome, args.rounds) + "\n")
    for metric_outcome in metric_outcomes:
        print(report.format_metric_table(metric_outcome) + "\n")
    print(f"load average: start {info['load_average_start']}, end {results['machine']['load_average_end']}")
    print(f"results: {json_path}" + (f"\nchart:   {png_path}" if charted else ""))
    failed = [name for o in outcomes for name, s in o.servers.items() if s.errors]
    failed += [name for o in metric_outcomes for name, r in o.servers.items() if r.errors]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
