"""Per-worker figures shared between the master and its workers through anonymous memory.

The master creates one :class:`StatsTable` (an anonymous, shared ``mmap``) before it forks
anything, so every worker inherits the same pages. Each live worker process owns one fixed
size *cell*; the worker writes into it from inside its event loop (state, heartbeat,
requests served, open connections) and the master reads it whenever it wants, without a
round trip, a pipe or a lock.

Why no lock: every field is an aligned 8-byte word written by exactly one process (the
worker; the master writes a cell only while no process owns it), so a reader sees either
the old or the new value of a field, never a torn one. The fields are independent facts,
so reading them at slightly different instants is harmless.

Cells are per *process*, not per worker id: during a rolling restart the old and the new
worker of the same id both report at once.

:class:`WorkerState` is the one vocabulary of a worker's life, here and everywhere else
(the master's table, status, metrics, sd_notify): a cell stores its value.
"""

from __future__ import annotations

import enum
import mmap
import struct
import time
from dataclasses import dataclass


class WorkerState(enum.Enum):
    """Where a worker process is in its life.

    The value is what a shared-memory cell stores; ``str()`` is the name status, metrics
    and logs show. A cell only ever holds FREE, BOOTING or READY (the worker's own news);
    STOPPING and KILLING are the master's decisions, kept in its table.
    """

    #: A cell no process owns.
    FREE = 0
    #: Forked: importing the app, running the lifespan startup.
    BOOTING = 1
    #: Serving: the worker wrote it into its cell once its listeners were up.
    READY = 2
    #: Told to stop (TERM, HUP or QUIT): finishing its requests.
    STOPPING = 3
    #: Its stacks were asked for; SIGKILL follows.
    KILLING = 4

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def live(self) -> bool:
        """Booting or serving, not on its way out."""
        return self is WorkerState.BOOTING or self is WorkerState.READY


_BY_VALUE = {state.value: state for state in WorkerState}

# Layout of one cell: pid, state, heartbeat (CLOCK_MONOTONIC seconds, which is the same
# clock in every process of the machine), requests served, open connections, the
# monotonic time the worker became ready. Padded to 64 bytes (one cache line each, so
# workers never write into the same line).
_FMT = "=qqdqqd"
_SIZE = struct.calcsize(_FMT)
CELL_SIZE = 64
assert _SIZE <= CELL_SIZE

_OFF_PID = 0
_OFF_STATE = 8
_OFF_HEARTBEAT = 16
_OFF_REQUESTS = 24
_OFF_CONNECTIONS = 32
_OFF_READY_AT = 40

_Q = struct.Struct("=q")
_D = struct.Struct("=d")


@dataclass(frozen=True)
class CellSnapshot:
    """What the master read from a cell at one instant."""

    pid: int
    state: WorkerState
    heartbeat: float
    requests: int
    connections: int
    ready_at: float


class StatsTable:
    """``capacity`` cells of shared memory; allocate before forking, then fork."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # fileno -1: anonymous memory; MAP_SHARED (the default) keeps it shared after fork.
        self._mem = mmap.mmap(-1, capacity * CELL_SIZE)
        self._owned: set[int] = set()

    # -- master side -------------------------------------------------------------------

    def allocate(self) -> int:
        """Reserve a free cell for a worker about to be forked; the cell starts BOOTING.

        RuntimeError when every cell is owned."""
        for index in range(self.capacity):
            if index not in self._owned:
                self._owned.add(index)
                base = index * CELL_SIZE
                self._mem[base : base + CELL_SIZE] = bytes(CELL_SIZE)
                _Q.pack_into(self._mem, base + _OFF_STATE, WorkerState.BOOTING.value)
                _D.pack_into(self._mem, base + _OFF_HEARTBEAT, time.monotonic())
                return index
        raise RuntimeError(f"no free worker cell (capacity {self.capacity})")

    def release(self, index: int) -> None:
        self._owned.discard(index)
        base = index * CELL_SIZE
        self._mem[base : base + CELL_SIZE] = bytes(CELL_SIZE)

    def read(self, index: int) -> CellSnapshot:
        pid, state, heartbeat, requests, connections, ready_at = struct.unpack_from(
            _FMT, self._mem, index * CELL_SIZE
        )
        return CellSnapshot(
            pid, _BY_VALUE.get(state, WorkerState.FREE), heartbeat, requests, connections, ready_at
        )

    def set_pid(self, index: int, pid: int) -> None:
        _Q.pack_into(self._mem, index * CELL_SIZE + _OFF_PID, pid)

    def close(self) -> None:
        self._mem.close()

    # -- worker side -------------------------------------------------------------------

    def writer(self, index: int) -> CellWriter:
        return CellWriter(self._mem, index)


class CellWriter:
    """The worker's handle on its own cell (used from inside its event loop)."""

    __slots__ = ("_base", "_mem")

    def __init__(self, mem: mmap.mmap, index: int) -> None:
        self._mem = mem
        self._base = index * CELL_SIZE

    def ready(self) -> None:
        now = time.monotonic()
        _D.pack_into(self._mem, self._base + _OFF_READY_AT, now)
        _D.pack_into(self._mem, self._base + _OFF_HEARTBEAT, now)
        _Q.pack_into(self._mem, self._base + _OFF_STATE, WorkerState.READY.value)

    def beat(self, requests: int, connections: int) -> None:
        base = self._base
        _Q.pack_into(self._mem, base + _OFF_REQUESTS, requests)
        _Q.pack_into(self._mem, base + _OFF_CONNECTIONS, connections)
        _D.pack_into(self._mem, base + _OFF_HEARTBEAT, time.monotonic())
