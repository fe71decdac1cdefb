"""WebSocket: one shared ASGI websocket cycle behind two thin protocol adapters.

``connection.WSConnection`` holds all of the ASGI websocket semantics (the handshake
answered by the app, receive/send, close codes, the ``websocket.http.response`` denial,
backpressure, keepalive pings, graceful shutdown); ``websockets_impl`` (the sans-IO
``websockets.server.ServerProtocol``) and ``wsproto_impl`` only turn bytes into calls on
it and frames out of its calls. :func:`ws_protocol_factory` picks the adapter for ``--ws``.

The HTTP protocol hands a connection over (``HTTPConnection.upgrade``) once it has parsed
a request asking for a WebSocket; nothing here parses HTTP.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgictl.config import ConfigError

if TYPE_CHECKING:
    from asgictl.protocols.state import ServerState
    from asgictl.protocols.websockets.connection import WSConnection

#: ``factory(state, http_scope)``: the WebSocket protocol for one upgraded connection (it
#: builds its websocket scope from the HTTP scope of the request that asked for it).
WSFactory = Callable[["ServerState", dict[str, Any]], "WSConnection"]

_IMPLEMENTATIONS = {
    "websockets": ("websockets", "asgictl.protocols.websockets.websockets_impl", "WebsocketsConnection"),
    "wsproto": ("wsproto", "asgictl.protocols.websockets.wsproto_impl", "WSProtoConnection"),
}


def ws_protocol_factory(name: str) -> WSFactory | None:
    """The connection factory for ``--ws auto|none|websockets|wsproto`` (None: no
    WebSocket).

    auto prefers websockets and falls back to wsproto, then to none, when a library is
    missing; an implementation named explicitly must be installed (ConfigError). The library itself
    is imported at the first upgrade, not here: it is the largest import of a worker
    (about 20 ms for websockets), on the way to its first answer, and a worker that
    never sees a WebSocket does not need it in memory.
    """
    if name == "none":
        return None
    candidates = ["websockets", "wsproto"] if name == "auto" else [name]
    for candidate in candidates:
        library, module, attribute = _IMPLEMENTATIONS[candidate]
        if importlib.util.find_spec(library) is not None:
            return _lazy(module, attribute)
    if name != "auto":
        raise ConfigError(f"--ws {name}: the {name!r} package is not installed")
    return None


def _lazy(module: str, attribute: str) -> WSFactory:
    cls: type[WSConnection] | None = None

    def factory(state: ServerState, http_scope: dict[str, Any]) -> WSConnection:
        nonlocal cls
        if cls is None:
            cls = getattr(importlib.import_module(module), attribute)
        return cls(state, http_scope)

    factory.module = module  # type: ignore[attr-defined]  # for tests and debugging
    return factory
