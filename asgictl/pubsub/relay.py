"""The ``master`` backend, worker side: this worker's end of the socket pair the master
created before forking it, spoken with :mod:`asgictl.pubsub.framing`.

A publication is delivered to this worker's own subscribers at once (in-process) and
sent to the master, which relays it to the other workers that subscribed to the channel
(never back to us: each subscriber gets it exactly once). Frames from one socket are
handled in order, so each publisher's messages arrive in the order it sent them.

The socket is attached to the running event loop on first use (lazily, so it works in
lifespan startup and in whatever loop the worker runs). Writes go through an asyncio
transport; ``publish`` waits while its buffer is above the high-water mark, so a slow
master slows publishers down instead of growing this process without bound.

Nothing here imports supervisor code: the master side is ``asgictl.supervisor.broker``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from typing import Any

from asgictl.logs import plural
from asgictl.pubsub import framing
from asgictl.pubsub.core import DEFAULT_MAX_QUEUE, Backend, Data, PubSubError, check_channel, check_data

logger = logging.getLogger("asgictl.error")

#: Above this many bytes waiting for the master, publishers wait (transport backpressure).
WRITE_HIGH_WATER = 1024 * 1024


class _Protocol(asyncio.Protocol):
    def __init__(self, backend: MasterBackend) -> None:
        self.backend = backend
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the common case: whole frames, no copy into buf
        end = 0
        try:
            for kind, chan_start, data_start, end in framing.frames(view):
                self.backend._on_frame(kind, view, chan_start, data_start, end)
        except framing.FrameError as exc:
            logger.error("pub/sub: %s; dropping the connection to the master", exc)
            assert self.transport is not None
            self.transport.abort()
            return
        if view is buf:
            del buf[:end]
        elif end < len(data):
            buf += data[end:]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend._on_lost(exc)
        self.resume_writing()


class MasterBackend(Backend):
    """Pub/sub across the workers of one ``asgictl start``, relayed by the master."""

    name = "master"

    def __init__(self, sock: socket.socket, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        super().__init__(max_queue)
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._protocol: _Protocol | None = None
        self._attach: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._lost = False

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None:
            return protocol
        if self._lost:
            raise PubSubError("the connection to the master's pub/sub broker is closed")
        if self._attach is None:
            self._attach = asyncio.get_running_loop().create_task(self._do_attach())
        await asyncio.shield(self._attach)
        assert self._protocol is not None
        return self._protocol

    async def _do_attach(self) -> None:
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        protocol = _Protocol(self)
        await loop.create_unix_connection(lambda: protocol, sock=sock)
        self._protocol = protocol

    def _write(self, protocol: _Protocol, frame: bytes) -> None:
        if self._lost or protocol.transport is None:
            raise PubSubError("the connection to the master's pub/sub broker is closed")
        protocol.transport.write(frame)

    async def publish(self, channel: str, data: Data) -> None:
        raw_channel = check_channel(channel)
        check_data(data)
        frame = framing.encode_publish(raw_channel, data)
        protocol = await self._connected()
        # Backpressure first, so a message is never half-sent: wait while the master is
        # behind, then deliver locally and send in the same step (one order everywhere).
        while protocol.paused and not self._lost:
            if protocol.resumed is None or protocol.resumed.done():
                protocol.resumed = asyncio.get_running_loop().create_future()
            await protocol.resumed
        self._write(protocol, frame)
        self.hub.deliver(channel, data)

    async def open_channel(self, channel: str) -> None:
        protocol = await self._connected()
        request = next(self._ids) & 0xFFFFFFFF
        ack = asyncio.get_running_loop().create_future()
        self._acks[request] = ack
        try:
            self._write(protocol, framing.encode(framing.SUB, channel.encode(), framing.U32.pack(request)))
            await ack
        finally:
            self._acks.pop(request, None)

    async def close_channel(self, channel: str) -> None:
        protocol = self._protocol
        if protocol is None or self._lost:
            return
        self._write(protocol, framing.encode(framing.UNSUB, channel.encode()))

    async def aclose(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    # -- from the protocol
    def _on_frame(self, kind: int, buf: Any, chan_start: int, data_start: int, end: int) -> None:
        if kind == framing.PUB_TEXT:
            self.hub.deliver(
                str(buf[chan_start:data_start], "utf-8"), str(buf[data_start:end], "utf-8", "replace")
            )
        elif kind == framing.PUB_BYTES:
            self.hub.deliver(str(buf[chan_start:data_start], "utf-8"), bytes(buf[data_start:end]))
        elif kind == framing.ACK:
            (request,) = framing.U32.unpack_from(buf, data_start)
            ack = self._acks.get(request)
            if ack is not None and not ack.done():
                ack.set_result(None)
        elif kind == framing.GAP:
            (dropped,) = framing.U32.unpack_from(buf, data_start) if end - data_start >= 4 else (0,)
            self.hub.gap(
                f"this worker fell behind the master's pub/sub broker: {plural(dropped, 'message')}"
                f" {'was' if dropped == 1 else 'were'} dropped"
            )

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost = True
        error = PubSubError("the connection to the master's pub/sub broker was lost")
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(error)
        self.hub.gap("the connection to the master's pub/sub broker was lost")
