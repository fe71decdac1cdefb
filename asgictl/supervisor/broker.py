"""The ``master`` pub/sub backend, master side: relay publications between workers.

Before forking a worker the master asks :meth:`Broker.prepare` for a fresh Unix socket
pair; the child keeps one end (``asgictl.pubsub.relay`` speaks on it), the master the
other, registered in its select loop. A respawned or replacement worker gets a new pair,
so no state leaks from its predecessor; a worker that dies shows up as EOF on its end
and takes only its own subscriptions along.

The master never blocks on a worker and never buffers without bound: its end of every
pair is non-blocking, each worker has an outgoing buffer capped at ``max_buffer`` bytes,
and a publication that does not fit is dropped *for that worker only*. Once that
worker's buffer has drained, it gets one GAP frame saying how many were dropped, which
its subscribers see as :class:`asgictl.pubsub.Gap`. Reads are bounded per wake-up
(``READ_CHUNK``), so one busy worker cannot starve the master's other duties; a worker
that publishes faster than the master relays fills its own socket buffer and its
``publish`` waits.

The master relays frames without decoding their data: a publication is sliced out of
the receive buffer once and the same bytes are queued for each subscribed worker (never
back to the publisher, which delivered to its own subscribers itself).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgictl.logs import plural
from asgictl.pubsub import framing
from asgictl.supervisor.hooks import MasterHooks

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master
    from asgictl.supervisor.workers import Worker

logger = logging.getLogger("asgictl.error")

#: Bytes read from one worker per wake-up of the master's loop.
READ_CHUNK = 256 * 1024
#: Per-worker outgoing buffer cap (beyond the kernel's socket buffer).
MAX_BUFFER = 8 * 1024 * 1024
#: Kernel socket buffers asked for on both ends (the kernel may grant less).
SOCKET_BUFFER = 1024 * 1024


class Peer:
    """The master's view of one worker process on its socket pair."""

    __slots__ = ("dropped", "fd", "inbuf", "lagging", "out", "out_bytes", "pid", "sock", "subs")

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.inbuf = bytearray()
        self.out: collections.deque[bytes] = collections.deque()
        self.out_bytes = 0
        self.subs: set[bytes] = set()
        #: Frames were dropped for this worker; a GAP is owed once its buffer drains.
        self.lagging = False
        self.dropped = 0


class Broker(MasterHooks):
    """Routes frames between the workers' socket pairs. Driven by the master's loop
    through ``add_reader`` / ``add_writer`` callbacks; single-threaded."""

    def __init__(
        self,
        add_reader: Callable[[int, Callable[[], None]], None],
        remove_reader: Callable[[int], None],
        add_writer: Callable[[int, Callable[[], None]], None],
        remove_writer: Callable[[int], None],
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self._add_reader = add_reader
        self._remove_reader = remove_reader
        self._add_writer = add_writer
        self._remove_writer = remove_writer
        self.max_buffer = max_buffer
        self.peers: dict[int, Peer] = {}  # by fd
        self.by_pid: dict[int, Peer] = {}
        self.channels: dict[bytes, set[Peer]] = {}

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def prepare() -> tuple[socket.socket, socket.socket]:
        """A fresh pair for a worker about to be forked: (master end, worker end)."""
        master_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (master_end, worker_end):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        master_end.setblocking(False)
        return master_end, worker_end

    def attach(self, sock: socket.socket, pid: int) -> None:
        """The worker ``pid`` was forked with the other end of ``sock``."""
        peer = Peer(sock, pid)
        self.peers[peer.fd] = peer
        self.by_pid[pid] = peer
        self._add_reader(peer.fd, lambda: self._on_readable(peer))

    def forget(self, pid: int) -> None:
        """The worker ``pid`` exited (reaped): drop it if EOF did not already."""
        peer = self.by_pid.get(pid)
        if peer is not None:
            self._drop(peer)

    def worker_exited(self, master: Master, worker: Worker) -> None:
        self.forget(worker.pid)

    def close(self) -> None:
        for peer in list(self.peers.values()):
            self._drop(peer)

    def _drop(self, peer: Peer) -> None:
        if self.peers.pop(peer.fd, None) is None:
            return
        if self.by_pid.get(peer.pid) is peer:
            del self.by_pid[peer.pid]
        self._remove_reader(peer.fd)
        self._remove_writer(peer.fd)
        for channel in peer.subs:
            subscribers = self.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(peer)
                if not subscribers:
                    del self.channels[channel]
        peer.subs.clear()
        peer.out.clear()
        peer.out_bytes = 0
        with contextlib.suppress(OSError):
            peer.sock.close()

    # ------------------------------------------------------------------ reading

    def _on_readable(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer)
            return
        buf = peer.inbuf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        end = 0
        dirty: set[Peer] = set()
        try:
            for kind, chan_start, data_start, end in framing.frames(view):
                self._on_frame(peer, kind, view, chan_start, data_start, end, dirty)
        except framing.FrameError as exc:
            logger.error("pub/sub: worker pid %d sent %s; disconnecting it from the broker", peer.pid, exc)
            self._drop(peer)
            return
        if view is buf:
            del buf[:end]
        elif end < len(data):
            buf += data[end:]
        for target in dirty:
            self._flush(target)

    def _on_frame(
        self,
        peer: Peer,
        kind: int,
        buf: bytes | bytearray,
        chan_start: int,
        data_start: int,
        end: int,
        dirty: set[Peer],
    ) -> None:
        if kind == framing.PUB_TEXT or kind == framing.PUB_BYTES:
            targets = self.channels.get(bytes(buf[chan_start:data_start]))
            if not targets:
                return
            frame = bytes(buf[chan_start - framing.HEADER_SIZE : end])
            for target in targets:
                if target is not peer and self._enqueue(target, frame):
                    dirty.add(target)
            return
        channel = bytes(buf[chan_start:data_start])
        if kind == framing.SUB:
            peer.subs.add(channel)
            self.channels.setdefault(channel, set()).add(peer)
            # The ACK goes through the same buffer as publications, so everything queued
            # for this worker before it is older than the subscription.
            ack = framing.encode(framing.ACK, channel, bytes(buf[data_start:end]))
            self._enqueue(peer, ack, control=True)
            dirty.add(peer)
        elif kind == framing.UNSUB:
            peer.subs.discard(channel)
            subscribers = self.channels.get(channel)
            if subscribers is not None:
                subscribers.discard(peer)
                if not subscribers:
                    del self.channels[channel]
        # ACK and GAP only travel master -> worker; a worker sending one is ignored.

    # ------------------------------------------------------------------ writing

    def _enqueue(self, peer: Peer, frame: bytes, control: bool = False) -> bool:
        if not control:
            if peer.lagging or (peer.out_bytes and peer.out_bytes + len(frame) > self.max_buffer):
                # This worker is behind: drop for it alone, and owe it a GAP.
                peer.lagging = True
                peer.dropped += 1
                return False
        peer.out.append(frame)
        peer.out_bytes += len(frame)
        return True

    def _flush(self, peer: Peer) -> None:
        while True:
            while peer.out:
                # Coalesce small frames into one send; large ones go as they are.
                if len(peer.out) > 1 and len(peer.out[0]) < 65536:
                    chunk = bytearray()
                    while peer.out and len(chunk) < 65536:
                        chunk += peer.out.popleft()
                    data: bytes | bytearray = chunk
                else:
                    data = peer.out.popleft()
                try:
                    sent = peer.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._drop(peer)
                    return
                peer.out_bytes -= sent
                if sent < len(data):
                    peer.out.appendleft(bytes(data[sent:]))
                    self._add_writer(peer.fd, lambda: self._flush(peer))
                    return
            if peer.lagging:
                # Drained: the owed GAP goes out now, after everything it follows.
                peer.lagging = False
                gap = framing.encode(framing.GAP, b"", framing.U32.pack(min(peer.dropped, 0xFFFFFFFF)))
                logger.warning(
                    "pub/sub: worker pid %d fell behind; %s dropped for it",
                    peer.pid,
                    plural(peer.dropped, "message"),
                )
                peer.dropped = 0
                peer.out.append(gap)
                peer.out_bytes += len(gap)
                continue
            self._remove_writer(peer.fd)
            return
