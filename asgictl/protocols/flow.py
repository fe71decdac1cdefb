"""Flow control both ways, shared by the HTTP and WebSocket connections.

Reading: the protocol pauses the transport when the app falls behind (unread body,
queued requests or messages) and resumes it when the app catches up. Writing: asyncio
calls ``pause_writing`` when the transport's buffer passes its high-water mark, and the
app's ``send`` then awaits :meth:`FlowControlled.drain` until ``resume_writing``.

A client that stops reading would hold its connection, the bytes buffered for it and
the app's task forever: :meth:`FlowControlled.check_send` (from the once-a-second
clock) aborts a connection whose write buffer has not shrunk for ``--timeout-send``
seconds (nginx's ``send_timeout``), and the app's ``send`` then raises the disconnect.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger("asgictl.error")


class FlowControlled(asyncio.Protocol):
    __slots__ = ("drain_waiter", "loop", "read_paused", "send_mark", "transport", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.read_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        #: (write buffer size, since when it has not shrunk), while bytes wait
        self.send_mark: tuple[int, float] | None = None

    def check_send(self, now: float, timeout: float) -> bool:
        """The send deadline, once a second: True if the connection was aborted because
        bytes have waited in its write buffer for ``timeout`` seconds (0: never) without
        the buffer shrinking once, i.e. without the client taking any.

        While the buffer is past its high-water mark the app waits in ``drain`` and
        adds nothing, so a buffer that does not shrink means a client that does not
        read; below the mark the app may add to it, but only until it reaches the mark.
        """
        size = self.transport.get_write_buffer_size()
        mark = self.send_mark
        if not size or not timeout:
            self.send_mark = None
        elif mark is None or size < mark[0]:
            self.send_mark = (size, now)
        elif now - mark[1] >= timeout:
            logger.debug("Closing connection: the client took no bytes in %.0f s (--timeout-send)", timeout)
            self.send_mark = None
            self.transport.abort()
            return True
        else:
            self.send_mark = (size, mark[1])  # it grew: what counts is the next shrink
        return False

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
