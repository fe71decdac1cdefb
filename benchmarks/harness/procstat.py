"""CPU time accounting from ``/proc``.

The figure we want is the CPU time (user + system) that a server spent during one wrk
run, including every process it forked (gunicorn's worker, granian's worker). A snapshot
sums, over the server process and all its live descendants, ``utime + stime`` (own time,
all threads) plus ``cutime + cstime`` (time of children that already exited and were
waited for). The difference of two snapshots is the CPU time spent in between, even if a
worker exits and is reaped by its parent in the meantime.

Also here: per-CPU busy time from ``/proc/stat``, used to report how much *other* work
ran on the server's CPU during a run (the machine is shared, so that is noise); the
``CpuWindow`` that puts both together around one measured run; and, for the idle-flood
scenario, the resident memory and the open sockets of a process tree.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


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


@dataclass(frozen=True)
class CpuUsage:
    """What a ``CpuWindow`` saw: wall time, the server tree's CPU, others' load per CPU."""

    elapsed_s: float
    server_cpu_s: float
    server_cpu_other_s: float  # other processes on the server's CPU
    client_cpu_other_s: float  # other processes on the client's CPU

    def to_dict(self) -> dict[str, float]:
        """Percentages of the wall time, as the result files record them."""
        elapsed = max(self.elapsed_s, 1e-9)
        return {
            "elapsed_s": self.elapsed_s,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_pct": 100 * self.server_cpu_s / elapsed,
            "other_load_server_cpu_pct": 100 * self.server_cpu_other_s / elapsed,
            "other_load_client_cpu_pct": 100 * self.client_cpu_other_s / elapsed,
        }


class CpuWindow:
    """Snapshots around one measured run: the server tree's CPU time and both CPUs' busy time.

    ``stop(client_cpu_s)`` takes the client's own CPU time over the window, so that what is
    left on the client's CPU is the neighbours' share.
    """

    def __init__(self, root: int, server_cpu: int, client_cpu: int) -> None:
        self.root, self.server_cpu, self.client_cpu = root, server_cpu, client_cpu
        self.busy_server = cpu_busy_seconds(server_cpu)
        self.busy_client = cpu_busy_seconds(client_cpu)
        self.tree = tree_cpu_seconds(root)
        self.started = time.monotonic()

    def stop(self, client_cpu_s: float) -> CpuUsage:
        elapsed = time.monotonic() - self.started
        tree = tree_cpu_seconds(self.root) - self.tree
        busy_server = cpu_busy_seconds(self.server_cpu) - self.busy_server
        busy_client = cpu_busy_seconds(self.client_cpu) - self.busy_client
        return CpuUsage(
            elapsed_s=elapsed,
            server_cpu_s=tree,
            server_cpu_other_s=max(0.0, busy_server - tree),
            client_cpu_other_s=max(0.0, busy_client - client_cpu_s),
        )


def tree_rss_bytes(root: int) -> int:
    """Resident memory of the root process and its descendants (sum of ``/proc/PID/statm``).

    Pages shared between a master and its forked workers count once per process, like
    ``ps`` would show them; the benchmarks compare growth, where that does not matter.
    """
    total = 0
    for pid in process_tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


def tree_socket_count(root: int) -> int:
    """Distinct sockets held open by the root process and its descendants (from ``/proc/PID/fd``)."""
    inodes: set[str] = set()
    for pid in process_tree(root):
        try:
            entries = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for entry in entries:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:"):
                inodes.add(target)
    return len(inodes)
