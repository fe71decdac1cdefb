"""The deadlines of an HTTP/1.1 connection, checked once a second, not timed per request.

:class:`Deadlines` is the part of :class:`~asgictl.protocols.http.connection.HTTPConnection`
the worker's clock (``ServerState.tick``) calls: ``check_idle(now)`` closes a
connection that stays idle past ``--timeout-keep-alive``, answers 408 to a head or a
body that does not arrive in time (``--timeout-header-read``, ``--timeout-body-read``:
slowloris), and aborts one whose client takes no response bytes (``--timeout-send``,
``FlowControlled.check_send``). A sweep over the connections costs nothing per
request, where a timer per request would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgictl.protocols.http.parts import ConnectionPart
from asgictl.protocols.http.response import simple_response

if TYPE_CHECKING:
    pass

logger = logging.getLogger("asgictl.error")


class Deadlines(ConnectionPart):
    """check_idle and its answers; the attributes are the connection's."""

    __slots__ = ()

    head_since: float | None
    body_seen: int
    body_mark: tuple[int, float] | None
    check_send: Callable[[float, float], bool]  # FlowControlled's

    def check_idle(self, now: float) -> None:
        """The once-a-second deadlines (no timer per request):

        - keep-alive: no byte of a new request within --timeout-keep-alive;
        - header read: a head started but not complete within --timeout-header-read,
          however the bytes trickle in (slowloris); for a connection's first request
          the clock runs from accept, the TLS handshake included;
        - body read: no new body bytes within --timeout-body-read;
        - send: response bytes waiting for --timeout-send without the client taking
          any (a client that stopped reading; FlowControlled.check_send).
        """
        state = self.state
        if self.check_send(now, state.timeout_send):
            return
        if self.head_bytes:
            if self.head_since is None:
                self.head_since = now
            elif now - self.head_since >= state.timeout_header_read:
                self.timed_out("request head not received in time")
            return
        since = self.idle_since
        if since is not None and now - since >= state.keep_alive_timeout:
            if self.cycle is None and not self.pipeline and self.parsing is None:
                self.transport.close()
            return
        if self.parsing is not None:
            mark = self.body_mark
            if mark is None or mark[0] != self.body_seen:
                self.body_mark = (self.body_seen, now)
            elif now - mark[1] >= state.timeout_body_read:
                self.timed_out("request body not received in time")
        elif self.body_mark is not None:
            self.body_mark = None

    def timed_out(self, reason: str) -> None:
        logger.debug("Closing connection: %s", reason)
        cycle = self.parsing
        self.parsing = None
        self.pipeline.clear()
        self.closing = True
        if self.cycle is None and cycle is None and not self.transport.is_closing():
            self.transport.write(simple_response(408, f"{reason}\n".encode(), self.state.default_headers))
        if cycle is not None:
            cycle.on_disconnect()
        self.transport.close()
