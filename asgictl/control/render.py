"""What the control commands print for people: the status views and the progress line.

:func:`format_status` is the detailed view of one master and its workers;
:func:`format_list` is one line per master, like ``pm2 ls``; :class:`Progress` is the
line that ``reload``, ``scale`` and ``stop`` rewrite while they wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO


def duration(seconds: float | None) -> str:
    """``4.2s``, ``42s``, ``3m07s``, ``2h01m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(value: int | None) -> str:
    """Bytes as ``512B``, ``30.0M``...; ``-`` for None."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M"):
        if amount < 1024:
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}G"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(columns: Sequence[str], rows: list[tuple[str, ...]], left: set[int]) -> list[str]:
    """Aligned lines: the header, then the rows; columns in ``left`` flush left."""
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(columns)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells))

    return [fmt(columns).rstrip(), *(fmt(r).rstrip() for r in rows)]


def _ready(status: dict[str, Any]) -> int:
    return sum(1 for w in status["workers"] if w["state"] == "ready")


COLUMNS = ("WORKER", "PID", "STATE", "AGE", "REQUESTS", "CONNS", "REQ/S", "RSS", "CPU%", "RESTARTS", "LAST")


def format_status(status: dict[str, Any]) -> str:
    """The detailed view of one master: a header line, where it listens, then a table of
    the master and each worker."""
    m = status["master"]
    header = (
        f"asgictl {m['version']} · {m['app']} · master {m['pid']} {m['state']} · "
        f"{_ready(status)}/{m['target']} workers ready · generation {m['generation']}"
        f" · up {duration(m['age'])}"
    )
    where = [*m.get("listeners", []), *([f"metrics {m['metrics']}"] if m.get("metrics") else [])]
    if m.get("directory"):
        where.append(f"in {m['directory']}")
    rows = [
        (
            "master",
            str(m["pid"]),
            m["state"],
            duration(m["age"]),
            str(m["requests"]),
            str(m["connections"]),
            _num(m["requests_per_second"]),
            size(m["rss"]),
            _num(m["cpu_percent"]),
            "",
            "",
        )
    ]
    for w in status["workers"]:
        rows.append(
            (
                str(w["id"]),
                str(w["pid"]),
                w["state"],
                duration(w["age"]),
                str(w["requests"]),
                str(w["connections"]),
                _num(w["requests_per_second"]),
                size(w["rss"]),
                _num(w["cpu_percent"]),
                str(w["restarts"]),
                w["last_reason"] or "-",
            )
        )
    lines = [header]
    if where:
        lines.append("  ".join(where))
    lines += ["", *_table(COLUMNS, rows, left={0, 2, 10})]
    return "\n".join(lines)


LIST_COLUMNS = ("PID", "APP", "STATE", "WORKERS", "UPTIME", "DIRECTORY", "LISTENERS")


def format_list(statuses: list[dict[str, Any]]) -> str:
    """One line per master: pid, app, state, workers ready/target, uptime, working
    directory, listeners."""
    rows = []
    for status in statuses:
        m = status["master"]
        rows.append(
            (
                str(m["pid"]),
                m["app"],
                m["state"],
                f"{_ready(status)}/{m['target']}",
                duration(m["age"]),
                m.get("directory") or "-",
                " ".join(m.get("listeners", [])) or "-",
            )
        )
    if not rows:
        return "no asgictl server is running"
    return "\n".join(_table(LIST_COLUMNS, rows, left={1, 2, 5, 6}))


class Progress:
    """One line rewritten in place on a terminal (stderr), else a new line per change."""

    def __init__(self, stream: TextIO, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self.last = ""

    def show(self, text: str, key: str | None = None) -> None:
        """Show ``text``; off a terminal, only when ``key`` (default: the text) changed."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif (key or text) != self.last:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = key or text

    def done(self) -> None:
        if self.enabled and self.tty and self.last:
            self.stream.write("\r\033[K")
            self.stream.flush()
