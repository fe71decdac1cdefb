"""What serves a listener's connections: the protocol stack of a server, decided once.

One place decides, from the server's settings, the protocols a new connection goes
through: the HTTP/1.1 connection class of ``--http``, behind a PROXY protocol reader
when ``--proxy-protocol`` is on, and what an HTTP/1.1 connection hands its transport
over to: the ``--ws`` WebSocket protocol, and HTTP/2 with its ``--http2-engine`` (unless
``--no-http2``). The worker's Server, the in-memory test harness and the benchmarks all
build connections here; the protocols themselves only read the choices from the state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asgictl.protocols.http import protocol_class
from asgictl.protocols.http2 import engine_class, http2_protocol
from asgictl.protocols.state import ServerState
from asgictl.protocols.websockets import ws_protocol_factory


def connection_factory(state: ServerState) -> Callable[[], asyncio.Protocol]:
    """A zero-argument factory of the protocol for each new connection of ``state``'s
    server; sets what those connections hand over to on ``state`` (``ws_protocol``,
    ``h2_protocol``, ``h2_engine``). Raises ConfigError for a ``--http``, ``--ws`` or
    ``--http2-engine`` library that is not installed."""
    config = state.config
    cls = protocol_class(config.http)
    state.ws_protocol = ws_protocol_factory(config.ws)
    if config.http2:
        state.h2_protocol = http2_protocol()
        state.h2_engine = engine_class(config.http2_engine)
    else:
        state.h2_protocol = state.h2_engine = None

    def http() -> asyncio.Protocol:
        return cls(state)

    if config.proxy_protocol != "off":
        from asgictl.protocols.proxy_protocol import reader_factory

        return reader_factory(http, state)
    return http
