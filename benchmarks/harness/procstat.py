"""CPU time accounting from ``/proc``.

The figure we want is the CPU time (user + system) that a server spent during one wrk
run, including every process it forked (gunicorn's worker, granian's worker). A snapshot
sums, over the server process and all its live descendants, ``utime + stime`` (own time,
all threads) plus ``cutime + cstime`` (time of children that already exited and were
waited for). The difference of two snapshots is the CPU time spent in between, even if a
worker exits and is reaped by its parent in the meantime.

Also here: per-CPU busy time from ``/proc/stat``, used to report how much *other* work
ran on the server's CPU during a run (the machine is shared, so that is noise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` that we use (times in clock ticks)."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    starttime: int

    @property
    def total_ticks(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def read_proc_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/PID/stat``; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17, starttime is 22.
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
        starttime=int(fields[19]),
    )


def all_proc_stats() -> dict[int, ProcStat]:
    """Snapshot of every process on the machine."""
    stats: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def process_tree(root: int) -> dict[int, ProcStat]:
    """The root process and all its live descendants."""
    stats = all_proc_stats()
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree: dict[int, ProcStat] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            pending.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the root process and its descendants (see module doc)."""
    return sum(stat.total_ticks for stat in process_tree(root).values()) / CLOCK_TICKS


def descendants(root: int) -> list[ProcStat]:
    """The live descendants of root (not root itself)."""
    return [stat for pid, stat in process_tree(root).items() if pid != root]


def same_process_alive(stat: ProcStat) -> bool:
    """True if the process of an earlier snapshot still runs (same PID and start time)."""
    now = read_proc_stat(stat.pid)
    return now is not None and now.starttime == stat.starttime


def cpu_busy_seconds(cpu: int) -> float:
    """Busy (non-idle, non-iowait) seconds of one CPU since boot, from ``/proc/stat``."""
    prefix = f"cpu{cpu} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            values = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice]
            # guest time is already included in user/nice.
            busy = sum(values[:3]) + sum(values[5:8])
            return busy / CLOCK_TICKS
    raise ValueError(f"cpu{cpu} not found in /proc/stat")


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15-minute load averages."""
    return os.getloadavg()
