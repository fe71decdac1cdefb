"""What serves a listener's connections: the protocol factory ``create_server`` gets.

One place decides the protocol stack of a new connection from the server's settings:
the HTTP/1.1 connection class of ``--http`` (which hands WebSocket upgrades over to the
``--ws`` protocol itself), behind a PROXY protocol reader when ``--proxy-protocol`` is
on. The worker's Server and the in-memory test harness both build connections here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asgictl.protocols.http import protocol_class
from asgictl.protocols.state import ServerState


def connection_factory(state: ServerState) -> Callable[[], asyncio.Protocol]:
    """A zero-argument factory of the protocol for each new connection of ``state``'s
    server (raises ConfigError for a ``--http`` library that is not installed)."""
    cls = protocol_class(state.config.http)

    def http() -> asyncio.Protocol:
        return cls(state)

    if state.config.proxy_protocol != "off":
        from asgictl.protocols.proxy_protocol import reader_factory

        return reader_factory(http, state)
    return http
