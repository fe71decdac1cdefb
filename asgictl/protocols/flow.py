"""Flow control both ways, shared by the HTTP and WebSocket connections.

Reading: the protocol pauses the transport when the app falls behind (unread body,
queued requests or messages) and resumes it when the app catches up. Writing: asyncio
calls ``pause_writing`` when the transport's buffer passes its high-water mark, and the
app's ``send`` then awaits :meth:`FlowControlled.drain` until ``resume_writing``.
"""

from __future__ import annotations

import asyncio


class FlowControlled(asyncio.Protocol):
    __slots__ = ("drain_waiter", "loop", "read_paused", "transport", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.release_drain()

    def release_drain(self) -> None:
        """Wake a send waiting in drain (the buffer emptied, or the connection is gone)."""
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.transport.is_closing():
            if self.drain_waiter is None:
                self.drain_waiter = self.loop.create_future()
            # Shielded: one waiter serves every send that waits, and a cancelled send
            # must not cancel it for the others.
            await asyncio.shield(self.drain_waiter)

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()
