#!/usr/bin/env python3
"""Benchmark asgictl against uvicorn, granian and gunicorn+uvicorn-worker.

One command (see benchmarks/README.md)::

    python3 benchmarks/run.py            # full run: every scenario, 3 rounds of 5 s
    python3 benchmarks/run.py --quick    # smoke run: 1 round of 2 s
    python3 benchmarks/run.py --list     # the servers and scenarios

The first run creates ``benchmarks/.venv`` and installs the peers (and asgictl with
``pip install -e .`` of the repo) into it, then re-executes itself with that venv's
Python. Servers are pinned to CPU 1 and wrk to CPU 0. Results go to
``benchmarks/results/<timestamp>.json`` and ``.png``.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import bootstrap

NOFILE_TARGET = 65536


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
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s")
    parser.add_argument("--servers", help="comma-separated subset of servers (see --list)")
    parser.add_argument("--scenarios", help="comma-separated subset of scenarios (see --list)")
    parser.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    parser.add_argument(
        "--reinstall", action="store_true", help="reinstall the venv's packages (picks up new peer releases)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=bootstrap.BENCH_DIR / "results", help="where JSON and PNG go"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def split_names(value: str | None, known: dict[str, object], what: str) -> list[str] | None:
    """Parse a comma-separated selection, rejecting unknown names."""
    if value is None:
        return None
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


def select(args: argparse.Namespace) -> tuple[list, list]:
    """The scenarios and server specs to run."""
    from harness.scenarios import SCENARIOS, SCENARIOS_BY_NAME
    from harness.servers import SERVERS, SERVERS_BY_NAME

    server_names = split_names(args.servers, SERVERS_BY_NAME, "server")
    scenario_names = split_names(args.scenarios, SCENARIOS_BY_NAME, "scenario")
    specs = [s for s in SERVERS if server_names is None or s.name in server_names]
    missing = [s for s in specs if not s.available()]
    for spec in missing:
        print(
            f"note: skipping {spec.name}: {spec.executable} is not installed in the venv"
            + (" (no pyproject.toml at the repo root yet?)" if spec.executable == "asgictl" else "")
        )
    specs = [s for s in specs if s not in missing]
    scenarios = [s for s in SCENARIOS if scenario_names is None or s.name in scenario_names]
    scenarios = [s for s in scenarios if any(spec.group == s.group for spec in specs)]
    return scenarios, specs


def print_list() -> None:
    from harness.scenarios import SCENARIOS
    from harness.servers import SERVERS

    print("servers:")
    for spec in SERVERS:
        print(f"  {spec.name:<13} group {spec.group:<5} {shlex.join(spec.command('APP', 'PORT'))}")
    print("scenarios:")
    for scenario in SCENARIOS:
        print(
            f"  {scenario.name:<13} group {scenario.group:<5} -c{scenario.connections:<5} "
            f"{scenario.description}"
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bootstrap.ensure_venv(reinstall=args.reinstall)  # may re-exec this script in the venv
    if args.list:
        print_list()
        return 0

    from harness import machine, report, runner

    # SIGTERM unwinds like Ctrl-C, so that the servers are stopped by the finally blocks.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    info = machine.machine_info()  # before check_cpus() pins this process to one CPU
    check_cpus()
    nofile = raise_nofile_limit()
    scenarios, specs = select(args)
    if not scenarios:
        sys.exit("error: nothing to run (no selected server takes part in a selected scenario)")
    runs = sum(args.rounds * len([s for s in specs if s.group == sc.group]) for sc in scenarios)
    print(
        f"{len(scenarios)} scenario(s), {runs} measured runs of {args.duration}s "
        f"(about {runs * args.duration / 60:.1f} min plus warm-up); servers on CPU 1, wrk on CPU 0"
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
        },
        "machine": info,
        "scenarios": [],
    }
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="asgictl-bench-") as work_dir:
        config = runner.RunConfig(args.rounds, args.duration, args.warmup, Path(work_dir))
        for scenario in scenarios:
            print(f"\n--- {scenario.name}: {scenario.description}", flush=True)
            group = [spec for spec in specs if spec.group == scenario.group]
            outcome = runner.run_scenario(scenario, group, config)
            outcomes.append(outcome)
            print(report.format_table(outcome, args.rounds), flush=True)

    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["machine"]["load_average_end"] = os.getloadavg()
    results["scenarios"] = [report.outcome_to_dict(outcome) for outcome in outcomes]
    json_path = args.results_dir / f"{stamp}.json"
    report.write_json(json_path, results)
    png_path = json_path.with_suffix(".png")
    charted = report.write_chart(png_path, outcomes)

    print("\n=========== summary (medians; x = ratio to the baseline, µs/req = server CPU per request)")
    for outcome in outcomes:
        print(report.format_table(outcome, args.rounds) + "\n")
    print(f"load average: start {info['load_average_start']}, end {results['machine']['load_average_end']}")
    print(f"results: {json_path}" + (f"\nchart:   {png_path}" if charted else ""))
    failed = [name for o in outcomes for name, s in o.servers.items() if s.errors]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
