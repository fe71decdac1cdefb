"""Small non-blocking stream servers that live inside the master's loop.

The master runs no asyncio (its loop is ``loop.py``'s), so the control socket and the
metrics responder are served from it through :meth:`Loop.add_reader` and a per-pass
tick. This module owns the part they share:

* :class:`Endpoint` accepts on a non-blocking listening socket, at most ``max_clients``
  connections at once (one more is answered by :meth:`Channel.refuse` and closed);
* :class:`Channel` is one accepted connection with a bounded input buffer, a bounded
  output buffer and deadlines, so a slow or misbehaving client can cost the master a
  few kilobytes and a few microseconds per pass, never a blocked call.

Why no write readiness: replies are small and sockets have large send buffers, so a
``send`` almost always takes everything at once; what it does not take is retried on
every pass of the loop (at most ``POLL_INTERVAL`` apart) until the write deadline closes
a client that stopped reading. (The loop can watch for writing: the Pub/Sub broker,
whose traffic is not small, does.)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("asgictl.error")

#: Connections accepted per readiness of the listening socket (the rest wait their turn).
ACCEPT_BATCH = 16
#: A client that does not read its replies for this long is dropped.
WRITE_STALL_SECONDS = 10.0


class Loop(Protocol):
    """What these servers need of the master's loop (:class:`~asgictl.supervisor.loop.Loop`)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...


class Channel:
    """One accepted connection. Subclasses implement :meth:`received` and :meth:`tick`."""

    #: Most bytes buffered from the client before it is cut off.
    max_input = 64 * 1024
    #: Most reply bytes held for a client that does not read.
    max_output = 4 * 1024 * 1024

    def __init__(self, endpoint: Endpoint, sock: socket.socket, now: float) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.opened = now
        self.eof = False
        self.closed = False
        self.close_when_flushed = False
        self._stalled_since = 0.0

    # -- called by the endpoint ---------------------------------------------------------

    def on_readable(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            if not data:
                self.eof = True
                break
            self.inbuf += data
            if len(self.inbuf) > self.max_input:
                self.too_large()
                return
        if not self.closed:
            self.received()
        if self.eof and not self.closed and not self.outbuf and not self.busy():
            self.close()

    def on_tick(self, now: float) -> None:
        if self.closed:
            return
        self.flush(now)
        if self.closed:
            return
        if self.outbuf and self._stalled_since and now - self._stalled_since > WRITE_STALL_SECONDS:
            self.close()
            return
        self.tick(now)

    # -- for subclasses ------------------------------------------------------------------

    def received(self) -> None:
        """New bytes are in ``self.inbuf``."""

    def tick(self, now: float) -> None:
        """Once per pass of the master's loop: deadlines, waiting operations."""

    def busy(self) -> bool:
        """An operation is in flight: do not close on EOF yet (the reply is owed)."""
        return False

    def too_large(self) -> None:
        self.close()

    def refuse(self) -> None:
        """Answer a connection over ``max_clients`` (one best-effort send), then close."""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.outbuf += data
        if len(self.outbuf) > self.max_output:
            self.close()
            return
        self.flush(time.monotonic())

    def flush(self, now: float) -> None:
        while self.outbuf and not self.closed:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                if not self._stalled_since:
                    self._stalled_since = now
                return
            except OSError:  # the client went away (EPIPE, ECONNRESET)
                self.close()
                return
            del self.outbuf[:sent]
            self._stalled_since = 0.0
        if not self.outbuf and (self.close_when_flushed or (self.eof and not self.busy())):
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.forget(self)
        with contextlib.suppress(OSError):
            self.sock.close()


class Endpoint:
    """A listening socket served from the master's loop; ``factory`` makes its Channels."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        factory: Callable[[Endpoint, socket.socket, float], Channel],
        max_clients: int,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.max_clients = max_clients
        self.channels: dict[int, Channel] = {}
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again next pass
                logger.warning("Control endpoint: accept failed: %s", exc)
                return
            conn.setblocking(False)
            channel = self.factory(self, conn, time.monotonic())
            if len(self.channels) >= self.max_clients:
                channel.refuse()
                with contextlib.suppress(OSError):
                    conn.close()
                continue
            self.channels[channel.fd] = channel
            self.loop.add_reader(channel.fd, channel.on_readable)

    def forget(self, channel: Channel) -> None:
        if self.channels.get(channel.fd) is channel:
            del self.channels[channel.fd]
            self.loop.remove_reader(channel.fd)

    def tick(self, now: float) -> None:
        for channel in list(self.channels.values()):
            channel.on_tick(now)

    def close(self, flush_seconds: float = 0.0) -> None:
        """Stop accepting; give pending replies up to ``flush_seconds``; close everything."""
        self.loop.remove_reader(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()
        deadline = time.monotonic() + flush_seconds
        while any(c.outbuf for c in self.channels.values()) and time.monotonic() < deadline:
            for channel in list(self.channels.values()):
                channel.flush(time.monotonic())
            time.sleep(0.01)
        for channel in list(self.channels.values()):
            channel.close()
