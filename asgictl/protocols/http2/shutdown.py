"""The graceful stop of an HTTP/2 connection (RFC 9113 6.8): GOAWAY, in-flight streams finish.

:class:`GoawayShutdown` is the part of
:class:`~asgictl.protocols.http2.connection.HTTP2Connection` that ends it without losing
a stream: ``shutdown`` (the worker stops), the GOAWAY of an idle or timed-out connection
(``goaway_now``) and the close once the last stream is done (``close_if_done``, also
after the peer's GOAWAY or a GOAWAY sent on a connection error). Streams in flight get
RFC 9113 6.8's sequence: a PING and a GOAWAY with the last possible stream id, then, at
the PING's answer, a GOAWAY with the real last stream id.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgictl.protocols.http.shutdown import CLOSE_GRACE
from asgictl.protocols.http2.engine import NO_ERROR

if TYPE_CHECKING:
    import asyncio

    from asgictl.protocols.http2.engine import Engine
    from asgictl.protocols.http2.stream import H2Stream

#: Seconds the shutdown's PING may take before the second GOAWAY goes without it.
GOAWAY_PING_WAIT = 1.0
#: Seconds a shutdown waits for the streams in flight before the GOAWAY goes anyway.
GOAWAY_DEFER = 1.0
#: Seconds between a final GOAWAY on an idle connection and its close.
GOAWAY_LINGER = 0.5


class GoawayShutdown:
    """shutdown, its GOAWAYs and the close; the attributes are the connection's."""

    __slots__ = ()

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    engine: Engine
    streams: dict[int, H2Stream]
    closing: bool
    stopping: bool
    silent: bool
    awaiting_request: bool
    goaway_ping: bytes | None
    goaway_timer: asyncio.TimerHandle | None
    last_stream_id: int
    flush: Callable[[], None]  # the connection's: write what the engine queued

    def goaway_now(self) -> None:
        """GOAWAY NO_ERROR with the last stream there was, and close."""
        self.closing = True
        self.last_stream_id = self.engine.highest_stream_id
        self.engine.goaway(NO_ERROR, self.last_stream_id)
        self.flush()
        self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: no new streams, those in flight finish, then GOAWAY and close.

        An idle connection gets its GOAWAY (NO_ERROR, the last stream it had) at once.
        With streams in flight, the GOAWAY waits up to a second for them to finish: the
        h2-based clients (httpx) fail a request in flight at any GOAWAY, so a connection
        between requests is the place for it. Streams still in flight then get RFC 9113
        6.8's sequence: a PING and GOAWAY with the last possible stream id, then, at the
        PING's answer (or a second later), GOAWAY with the real last stream id; streams
        up to it finish. A connection whose first request has not come yet (opened as the
        stop began) first gets the grace an HTTP/1.1 connection gets (``CLOSE_GRACE``):
        its request is served, where a GOAWAY with last stream id 0 would be taken for an
        error by httpx (httpcore retries a refused stream only past a non-zero last
        stream id). Called again, it does nothing more.
        """
        self.closing = True
        if self.stopping or self.transport.is_closing():
            return
        self.stopping = True
        if self.awaiting_request and not self.streams:
            self.goaway_timer = self.loop.call_later(CLOSE_GRACE, self._wind_down)
        else:
            self._wind_down()

    def _wind_down(self) -> None:
        """The GOAWAY now if no stream is in flight, else once they finish (or later)."""
        self.goaway_timer = None
        if self.streams:
            self.goaway_timer = self.loop.call_later(GOAWAY_DEFER, self._goaway_in_flight)
        else:
            self.close_if_done()

    def _goaway_in_flight(self) -> None:
        self.goaway_timer = None
        if self.transport.is_closing() or not self.streams or self.last_stream_id != 2**31 - 1:
            return
        # The PING goes first: an h2-based client stops reading frames at a GOAWAY.
        self.goaway_ping = os.urandom(8)
        self.engine.ping(self.goaway_ping)
        self.engine.goaway(NO_ERROR, 2**31 - 1)
        self.flush()
        self.loop.call_later(GOAWAY_PING_WAIT, self.on_ping_ack, self.goaway_ping)

    def on_ping_ack(self, payload: bytes) -> None:
        """A PING's answer (from the engine): the shutdown's PING came back, so the
        client has seen the first GOAWAY; the second carries the real last stream id."""
        if payload == self.goaway_ping and not self.transport.is_closing():
            self.goaway_ping = None
            self.last_stream_id = self.engine.highest_stream_id
            self.engine.goaway(NO_ERROR, self.last_stream_id)
            self.close_if_done()

    def close_if_done(self) -> None:
        """Closing and no stream left: the final GOAWAY (if not sent yet), and close once
        the client had time to read it (a request it sent meanwhile is refused, and the
        client knows from the GOAWAY to send it again elsewhere)."""
        if not self.closing or self.streams or self.goaway_ping is not None or self.transport.is_closing():
            return
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
            self.goaway_timer = None
        if self.last_stream_id == 2**31 - 1:
            self.last_stream_id = self.engine.highest_stream_id
            self.engine.goaway(NO_ERROR, self.last_stream_id)
            self.flush()
            # Nothing more is written: an h2-based client (httpx) fails on any frame
            # after a GOAWAY (a SETTINGS or PING ACK, a RST_STREAM of a refused stream)
            # instead of sending its request again on a new connection.
            self.silent = True
            self.loop.call_later(GOAWAY_LINGER, self.transport.close)
        else:
            self.flush()
            self.transport.close()
