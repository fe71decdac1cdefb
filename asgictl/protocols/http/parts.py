"""What the parts of an HTTP/1.1 connection read of it, declared once.

:class:`~asgictl.protocols.http.connection.HTTPConnection` is assembled from bases that
each own one concern in their own module (``deadlines.py``, ``shutdown.py``,
``upgrade.py``). They read the connection's attributes; :class:`ConnectionPart`
declares the ones they share, for type checkers and readers, and adds no slot and no
behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from asgictl.protocols.http.cycle import HTTPCycle
    from asgictl.protocols.state import ServerState


class ConnectionPart:
    """The base of each part: the attributes HTTPConnection sets, as the parts see them."""

    __slots__ = ()

    state: ServerState
    transport: asyncio.Transport
    #: the cycle whose response is being written
    cycle: HTTPCycle | None
    #: the cycle whose request body is being read
    parsing: HTTPCycle | None
    pipeline: list[HTTPCycle]
    #: no more requests on this connection
    closing: bool
    #: bytes of the request head received so far (0 between requests)
    head_bytes: int
    idle_since: float | None
