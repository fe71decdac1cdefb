"""``--balance reuseport``: one listening socket per worker slot on a TCP port, steered.

With one listening socket shared by every worker, whichever worker the scheduler runs
first takes the connection, and its event loop accepts every connection queued at that
instant: on a busy machine the spread over workers follows the CPU scheduler (a max/min
of 2 to 5 in ``benchmarks/worker_spread.py``). Here each worker slot k has its own socket
in a SO_REUSEPORT group on the port, and the kernel hands each new connection to one
socket of the group. The master attaches a classic BPF program to the group
(``SO_ATTACH_REUSEPORT_CBPF``) that picks one at random among the slots whose worker is
ready and whose event loop beats: an even spread, whatever the load.

The care a worker's queue needs:

* the master binds and holds every slot's socket; a worker that crashes, is recycled,
  reloaded or killed as hung is replaced by one serving the same socket, so connections
  already queued for the slot wait for the replacement instead of being reset;
* a slot whose worker is not serving (dead, booting, hung, draining) gets no new
  connections: the master steers around it;
* socket ``i`` of the group is the ``i``-th to listen, which is the index the program
  returns; closing a socket moves the group's last one into its place, so sockets are
  only ever closed from the end (slots above the worker count, once nobody serves them).

The first socket's bind is exclusive (SO_REUSEPORT is set after the bind): a port held
by anyone else, another asgictl's group included, is refused as before. The kernel lets
only processes of the same user join the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import sys
from collections.abc import Iterable, Sequence

from asgictl.worker.sockets import bind_tcp, join_tcp

logger = logging.getLogger("asgictl.error")

#: <asm-generic/socket.h>
SO_ATTACH_REUSEPORT_CBPF = 51
# Classic BPF (<linux/filter.h>): the instructions the steering program uses.
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
BPF_RET_K = 0x06 | 0x00
BPF_RET_A = 0x06 | 0x10
#: Ancillary load of a random u32 (SKF_AD_OFF + SKF_AD_RANDOM), as an unsigned k.
LOAD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF
#: A program result past the group's sockets: the kernel falls back to its own hash.
KERNEL_HASH = 0xFFFFFFFF

Instruction = tuple[int, int, int, int]  # code, jt, jf, k


def supported() -> bool:
    """SO_REUSEPORT spreads connections over a group on Linux (elsewhere: the last wins)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def steering_program(indexes: Sequence[int]) -> list[Instruction]:
    """A classic BPF program returning one of ``indexes`` (group socket indexes) at
    random; none: a result out of range, so the kernel picks by its 4-tuple hash."""
    if not indexes:
        return [(BPF_RET_K, 0, 0, KERNEL_HASH)]
    program = [(BPF_LD_W_ABS, 0, 0, LOAD_RANDOM), (BPF_ALU_MOD_K, 0, 0, len(indexes))]
    if list(indexes) == list(range(len(indexes))):
        return [*program, (BPF_RET_A, 0, 0, 0)]  # A is the index itself
    for position, index in enumerate(indexes[:-1]):
        # if A == position: return index (else skip that return)
        program += [(BPF_JMP_JEQ_K, 0, 1, position), (BPF_RET_K, 0, 0, index)]
    return [*program, (BPF_RET_K, 0, 0, indexes[-1])]


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


def attach(sock: socket.socket, program: Sequence[Instruction]) -> None:
    """Attach ``program`` to the SO_REUSEPORT group of ``sock`` (replacing any). OSError."""
    filters = (_Filter * len(program))(*(_Filter(*instruction) for instruction in program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(_Program(len(program), filters)))


class PortGroup:
    """The SO_REUSEPORT group of one TCP address: ``sockets[k - 1]`` serves slot ``k``."""

    def __init__(self, sockets: list[socket.socket], backlog: int) -> None:
        self.sockets = sockets
        self.backlog = backlog
        self._steered: tuple[int, ...] | None = None
        self._steering = True  # until attaching fails once

    @classmethod
    def bind(cls, host: str, port: int, backlog: int) -> PortGroup:
        """The group's first socket (an exclusive bind; BindError if the port is taken)."""
        return cls([bind_tcp(host, port, backlog, reuse_port=True)], backlog)

    def socket_for(self, slot: int) -> socket.socket:
        """Slot ``slot``'s socket, bound now if the group is smaller (a new slot)."""
        while len(self.sockets) < slot:
            try:
                self.sockets.append(join_tcp(self.sockets[0], self.backlog))
            except OSError as exc:  # EMFILE...: this slot shares the first slot's socket
                logger.error("Cannot add a listening socket for worker %d: %s", slot, exc)
                return self.sockets[0]
        return self.sockets[slot - 1]

    def shrink(self, keep: int, busy: Iterable[int]) -> None:
        """Close the sockets of slots above ``keep`` from the end, while no process of
        theirs (``busy``: slots with a live process) is left to serve them."""
        busy = set(busy)
        while len(self.sockets) > max(keep, 1) and len(self.sockets) not in busy:
            with contextlib.suppress(OSError):
                self.sockets.pop().close()
            self._steered = None

    def steer(self, slots: Iterable[int]) -> None:
        """New connections go to these slots only, at random (none: the kernel's hash)."""
        indexes = tuple(sorted(k - 1 for k in set(slots) if 0 < k <= len(self.sockets)))
        if indexes == self._steered or not self._steering:
            return
        try:
            attach(self.sockets[0], steering_program(indexes))
        except OSError as exc:  # an old kernel: the kernel's hash spreads, blindly
            logger.warning("Cannot steer connections over the workers (%s): the kernel's hash does", exc)
            self._steering = False
            return
        self._steered = indexes

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
