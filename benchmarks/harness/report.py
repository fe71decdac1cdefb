"""Reporting: the printed tables, the JSON result file and the PNG chart.

Ratios are ``server / baseline`` for the scenario's group (uvicorn, or uvicorn-h11 for
the h11 scenarios). For req/s higher is better; for µs/request and latency lower is better.
The non-wrk scenarios (``metrics.MetricScenario``) get tables with their own columns, each
figure followed by its ratio to uvicorn, and a header line saying which way is better.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

from harness import bootstrap
from harness.metrics import MetricOutcome
from harness.runner import ScenarioOutcome, ServerOutcome

COLUMNS = (
    ("server", "<14"),
    ("req/s", ">10"),
    ("x uvicorn", ">9"),
    ("p50 ms", ">8"),
    ("p99 ms", ">8"),
    ("µs/req", ">8"),
    ("x uvicorn", ">9"),
    ("CPU%", ">5"),
    ("spread", ">6"),
    ("noise", ">5"),
    ("errors", "<0"),
)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, None when either is missing."""
    if value is None or not base or math.isnan(base) or math.isnan(value):
        return None
    return value / base


def fmt(value: float | None, spec: str) -> str:
    """Format a figure, ``n/a`` when it is missing."""
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def error_text(median: dict[str, float | None]) -> str:
    parts = []
    if median.get("non_2xx"):
        parts.append(f"non-2xx {median['non_2xx']:.0f}")
    if median.get("socket_errors"):
        parts.append(f"socket {median['socket_errors']:.0f}")
    return ", ".join(parts) or "0"


def baseline_medians(outcome: ScenarioOutcome) -> dict[str, float | None]:
    base = outcome.servers.get(outcome.scenario.baseline)
    return base.median() if base else {}


def table_row(server: ServerOutcome, base: dict[str, float | None]) -> list[str]:
    """One printed row: medians and ratios, or the failure."""
    median = server.median()
    if not median:
        first_error = server.errors[0].splitlines()[0] if server.errors else "no runs"
        return [server.name, "FAILED:", first_error]
    rate, cpu = median["requests_per_s"], median["us_per_request"]
    row = [
        server.name,
        fmt(rate, ",.0f"),
        fmt(ratio(rate, base.get("requests_per_s")), ".2f"),
        fmt(median["p50_ms"], ".2f"),
        fmt(median["p99_ms"], ".2f"),
        fmt(cpu, ".1f"),
        fmt(ratio(cpu, base.get("us_per_request")), ".2f"),
        fmt(median["server_cpu_pct"], ".0f"),
        fmt(median["spread_pct"], ".0f") + "%",
        fmt(median["noise_pct"], ".0f") + "%",
        error_text(median),
    ]
    if server.errors:
        row[-1] += f" ({len(server.errors)} failed run(s))"
    return row


def format_table(outcome: ScenarioOutcome, rounds: int) -> str:
    """The printed table of one scenario."""
    scenario = outcome.scenario
    header = [f"{name:{spec}}" for name, spec in COLUMNS]
    lines = [
        f"== {scenario.name}: {scenario.description}",
        f"   {shlex.join(outcome.wrk_command)}",
        f"   {rounds} round(s), medians; ratios (x) against {scenario.baseline}",
        "   " + "  ".join(header),
    ]
    base = baseline_medians(outcome)
    for server in outcome.servers.values():
        row = table_row(server, base)
        if row[1] == "FAILED:":
            lines.append(f"   {row[0]:<14}  {row[1]} {row[2]}")
        else:
            cells = (f"{cell:{spec}}" for cell, (_, spec) in zip(row, COLUMNS, strict=True))
            lines.append("   " + "  ".join(cells))
    return "\n".join(lines)


def outcome_to_dict(outcome: ScenarioOutcome) -> dict[str, Any]:
    """JSON form of one scenario, with medians and ratios."""
    scenario = outcome.scenario
    base = baseline_medians(outcome)
    servers = {}
    for name, server in outcome.servers.items():
        median = server.median()
        servers[name] = {
            "command": shlex.join(server.command),
            "affinity": server.affinity,
            "median": median,
            "ratio_requests_per_s": ratio(median.get("requests_per_s"), base.get("requests_per_s")),
            "ratio_us_per_request": ratio(median.get("us_per_request"), base.get("us_per_request")),
            "runs": server.runs,
            "errors": server.errors,
        }
    return {
        "kind": "wrk",
        "name": scenario.name,
        "description": scenario.description,
        "app": scenario.app,
        "path": scenario.path,
        "connections": scenario.connections,
        "baseline": scenario.baseline,
        "wrk_command": shlex.join(outcome.wrk_command),
        "wrk_script": outcome.script,
        "servers": servers,
    }


def without_nan(value: Any) -> Any:
    """Replace float NaN/inf by None, recursively, so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(without_nan(data), indent=2, default=str, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- non-wrk scenarios

CLIENT_NOTE = (
    "servers under taskset -c 1 (CPU 1); client: this harness process, pinned to CPU 0 (as taskset -c 0)"
)


def short_command(command: list[str]) -> str:
    """A command line with the venv's bin/ prefix dropped from the executable."""
    prefix = str(bootstrap.VENV_DIR / "bin") + "/"
    return shlex.join(part[len(prefix) :] if part.startswith(prefix) else part for part in command)


def metric_ratios(outcome: MetricOutcome) -> dict[str, dict[str, float | None]]:
    """Per server, the ratio of each figure that has a "better" direction to the baseline's."""
    summaries = outcome.summaries()
    base = summaries.get(outcome.scenario.baseline, {})
    return {
        name: {
            m.key: ratio(summary.get(m.key), base.get(m.key)) for m in outcome.scenario.metrics if m.better
        }
        for name, summary in summaries.items()
    }


def better_note(outcome: MetricOutcome) -> str:
    """Which way is better, per column: "higher is better: msg/s; lower is better: ms"."""
    parts = []
    for way in ("higher", "lower"):
        labels = [m.label for m in outcome.scenario.metrics if m.better == way]
        if labels:
            parts.append(f"{way} is better for {', '.join(labels)} (and their ratio)")
    return "; ".join(parts)


def format_metric_table(outcome: MetricOutcome) -> str:
    """The printed table of a non-wrk scenario: its own columns, each with its x-uvicorn ratio."""
    scenario = outcome.scenario
    baseline = scenario.baseline
    summaries = outcome.summaries()
    ratios = metric_ratios(outcome)
    header = ["server"]
    for metric in scenario.metrics:
        header.append(metric.label)
        if metric.better:
            header.append(f"x {baseline}")
    header.append("errors")
    rows: list[list[str]] = []
    failed: list[str] = []
    for name, result in outcome.servers.items():
        summary = summaries[name]
        if not summary:
            first_error = result.errors[0].splitlines()[0] if result.errors else "no samples"
            failed.append(f"   {name:<16}  FAILED: {first_error}")
            continue
        row = [name]
        for metric in scenario.metrics:
            row.append(fmt(summary.get(metric.key), metric.fmt))
            if metric.better:
                row.append(fmt(ratios[name].get(metric.key), ".2f"))
        row.append(f"{len(result.errors)} failed" if result.errors else "0")
        rows.append(row)
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
    widths[0] = max(widths[0], 16)

    def line(cells: list[str]) -> str:
        return "   " + "  ".join(
            f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    parameters = ", ".join(f"{key} {value}" for key, value in outcome.parameters.items())
    lines = [
        f"== {scenario.name}: {scenario.description}",
        *(f"   {text}" for text in scenario.method),
        f"   {CLIENT_NOTE}",
        f"   {parameters}; ratios (x) against {baseline}: {better_note(outcome)}",
        line(header),
        *(line(row) for row in rows),
        *failed,
    ]
    lines += [f"   {name}: {short_command(r.command)}" for name, r in outcome.servers.items() if r.command]
    return "\n".join(lines)


def metric_outcome_to_dict(outcome: MetricOutcome) -> dict[str, Any]:
    """JSON form of a non-wrk scenario: columns, summaries, ratios and every sample."""
    scenario = outcome.scenario
    summaries = outcome.summaries()
    ratios = metric_ratios(outcome)
    return {
        "kind": "metric",
        "name": scenario.name,
        "description": scenario.description,
        "method": list(scenario.method),
        "client": CLIENT_NOTE,
        "app": scenario.app,
        "baseline": scenario.baseline,
        "parameters": outcome.parameters,
        "metrics": [
            {
                "key": m.key,
                "label": m.label,
                "better": m.better,
                "aggregate": m.aggregate,
                "sample_key": m.sample_key,
            }
            for m in scenario.metrics
        ],
        "servers": {
            name: {
                "command": shlex.join(result.command),
                "summary": summaries[name],
                "ratios": ratios[name],
                "samples": result.samples,
                "errors": result.errors,
            }
            for name, result in outcome.servers.items()
        },
    }


# ----------------------------------------------------------------------------- chart

Bars = list[tuple[str, dict[str, float | None]]]  # (group label, server -> ratio)


def wrk_bars(outcomes: list[ScenarioOutcome], metric: str) -> Bars:
    """One group per wrk scenario: each server's ratio of ``metric`` to the baseline."""
    groups: Bars = []
    for outcome in outcomes:
        base = baseline_medians(outcome)
        values = {
            name: ratio(s.median().get(metric), base.get(metric)) for name, s in outcome.servers.items()
        }
        groups.append((f"{outcome.scenario.name}\n(vs {outcome.scenario.baseline})", values))
    return groups


def metric_bars(outcomes: list[MetricOutcome]) -> Bars:
    """One group per figure (with a direction) of the non-wrk scenarios."""
    groups: Bars = []
    for outcome in outcomes:
        ratios = metric_ratios(outcome)
        for metric in outcome.scenario.metrics:
            if metric.better:
                label = f"{outcome.scenario.name}\n{metric.label}\n({metric.better} better)"
                groups.append((label, {name: ratios[name].get(metric.key) for name in outcome.servers}))
    return groups


def plot_bars(ax: Any, groups: Bars, colors: dict[str, str]) -> None:
    """Bars of ratios to the baseline, one group per label (its servers only)."""
    for x, (_, values) in enumerate(groups):
        names = list(values)
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            position = x + (index - (len(names) - 1) / 2) * width
            value = values[name]
            if value is None:
                ax.text(
                    position,
                    0.02,
                    f"{name}: n/a",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    transform=ax.get_xaxis_transform(),
                )
                continue
            bars = ax.bar(position, value, width * 0.95, color=colors[name])
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel("ratio to baseline")
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=7)


def write_chart(path: Path, outcomes: list[ScenarioOutcome], metric_outcomes: list[MetricOutcome]) -> bool:
    """Ratios to the baseline: req/s and µs/request per wrk scenario, then every figure of
    the other scenarios; False if nothing to plot."""
    panels: list[tuple[str, Bars]] = []
    if outcomes:
        panels.append(("wrk: requests/s (higher is better)", wrk_bars(outcomes, "requests_per_s")))
        panels.append(
            ("wrk: server CPU µs per request (lower is better)", wrk_bars(outcomes, "us_per_request"))
        )
    if metric_outcomes:
        panels.append(
            (
                "other scenarios: each figure / uvicorn's (the label says which way is better)",
                metric_bars(metric_outcomes),
            )
        )
    panels = [(title, groups) for title, groups in panels if groups]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(
        dict.fromkeys(
            [name for outcome in outcomes for name in outcome.servers]
            + [name for outcome in metric_outcomes for name in outcome.servers]
        )
    )
    colors = {name: f"C{index % 10}" for index, name in enumerate(names)}
    widest = max(len(groups) for _, groups in panels)
    height = 4.5 * len(panels) + 0.75  # inches; the top 0.75 hold the title and the legend
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 1.3 * widest + 2), height), squeeze=False)
    for ax, (title, groups) in zip(axes[:, 0], panels, strict=True):
        plot_bars(ax, groups, colors)
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        "asgictl benchmarks: medians as ratios to uvicorn (uvicorn-h11 for h11 scenarios); "
        "servers on CPU 1, clients on CPU 0",
        fontsize=10,
        y=1 - 0.15 / height,
    )
    fig.legend(
        handles=[Patch(color=colors[name], label=name) for name in names],
        loc="upper center",
        ncols=min(len(names), 6),
        fontsize=8,
        bbox_to_anchor=(0.5, 1 - 0.4 / height),
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
