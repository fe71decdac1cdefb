"""Reporting: the printed tables, the JSON result file and the PNG chart.

Ratios are ``server / baseline`` for the scenario's group (uvicorn, or uvicorn-h11 for
the h11 scenarios). For req/s higher is better; for µs/request and latency lower is better.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

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


def plot_metric(ax: Any, outcomes: list[ScenarioOutcome], metric: str, colors: dict[str, str]) -> None:
    """Bars of one metric's ratio to the baseline, grouped by scenario (its servers only)."""
    for x, outcome in enumerate(outcomes):
        base = baseline_medians(outcome)
        names = list(outcome.servers)
        width = 0.8 / len(names)
        for index, name in enumerate(names):
            position = x + (index - (len(names) - 1) / 2) * width
            value = ratio(outcome.servers[name].median().get(metric), base.get(metric))
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


def write_chart(path: Path, outcomes: list[ScenarioOutcome]) -> bool:
    """Bars of req/s and µs/request ratios to the baseline per scenario; False if nothing to plot."""
    if not outcomes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(dict.fromkeys(name for outcome in outcomes for name in outcome.servers))
    colors = {name: f"C{index}" for index, name in enumerate(names)}
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.5 * len(outcomes) + 2), 9), sharex=True)
    titles = {
        "requests_per_s": "requests/s (higher is better)",
        "us_per_request": "server CPU µs per request (lower is better)",
    }
    for ax, (metric, title) in zip(axes, titles.items(), strict=True):
        plot_metric(ax, outcomes, metric, colors)
        ax.set_title(title, fontsize=10)
    labels = [f"{o.scenario.name}\n(vs {o.scenario.baseline})" for o in outcomes]
    axes[-1].set_xticks(range(len(outcomes)), labels, fontsize=8)
    fig.legend(
        handles=[Patch(color=colors[name], label=name) for name in names],
        loc="upper center",
        ncols=min(len(names), 6),
        fontsize=8,
        bbox_to_anchor=(0.5, 0.95),
    )
    fig.suptitle("asgictl benchmarks: medians as ratios to uvicorn (uvicorn-h11 for h11 scenarios)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
