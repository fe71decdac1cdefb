"""The graceful stop of an HTTP/1.1 connection: no request it has received is lost.

:class:`GracefulStop` is the part of
:class:`~asgictl.protocols.http.connection.HTTPConnection` the Server calls when the
worker stops (``shutdown``): every request already received is answered, the last one
with ``Connection: close``; a connection whose last response promised keep-alive, or
that is idle, gets a short grace (``CLOSE_GRACE``) in which the request its client sent
meanwhile is still answered, then closes (``close_if_idle``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asgictl.protocols.http.parts import ConnectionPart

if TYPE_CHECKING:
    import asyncio


#: On a graceful stop, how long a connection whose last response promised keep-alive
#: (or that is idle) may still deliver the request its client sent meanwhile; that
#: request is answered with Connection: close.
CLOSE_GRACE = 0.25


class GracefulStop(ConnectionPart):
    """shutdown and the end of its grace; the attributes are the connection's."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop

    def close_if_idle(self) -> None:
        """The end of a grace (see shutdown, cycle_done): close unless a request came, or
        the transport went to another protocol meanwhile (HTTP/2, whose stop is its own)."""
        if (
            self.cycle is None
            and not self.pipeline
            and self.parsing is None
            and self in self.state.connections
        ):
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop (``state.shutting_down`` is set): close if idle; else answer
        every request received so far, the last one with Connection: close, and close
        after it. An app waiting in ``receive()`` for the end of a request it has read
        whole (a streaming response) hears http.disconnect now (see HTTPCycle.receive);
        one still producing its response is not disturbed.

        A response whose head is written already promised keep-alive: the connection
        then closes after the grace of cycle_done (the client may be sending its next
        request), not right after that response.
        """
        self.closing = True
        if self.cycle is None and not self.pipeline:
            # Idle: unless a response completed less than the grace ago (its client may
            # be sending the next request right now), close at once.
            since = self.idle_since
            wait = CLOSE_GRACE - (self.loop.time() - since) if since is not None else 0.0
            if self.head_bytes:
                wait = CLOSE_GRACE  # a request is arriving: let it
            if wait > 0:
                self.loop.call_later(wait, self.close_if_idle)
            else:
                self.transport.close()
            return
        last = self.pipeline[-1] if self.pipeline else self.cycle
        assert last is not None
        if not last.response_started or last.head is not None:
            last.keep_alive = False
        if self.cycle is not None:
            self.cycle.wake()
