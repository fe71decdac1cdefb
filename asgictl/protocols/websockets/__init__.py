"""WebSocket: one shared ASGI websocket cycle behind two thin protocol adapters.

``connection.WSConnection`` holds all of the ASGI websocket semantics (the handshake
answered by the app, receive/send, close codes, the ``websocket.http.response`` denial,
backpressure, keepalive pings, graceful shutdown); ``websockets_impl`` (the sans-IO
``websockets.server.ServerProtocol``) and ``wsproto_impl`` only turn bytes into calls on
it and frames out of its calls. :func:`ws_protocol_class` picks the adapter for ``--ws``.

The HTTP protocol hands a connection over (``HTTPConnection.upgrade``) once it has parsed
a request asking for a WebSocket; nothing here parses HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asgictl.protocols.websockets.connection import WSConnection


def ws_protocol_class(name: str) -> type[WSConnection] | None:
    """The connection class for ``--ws auto|none|websockets|wsproto`` (None: no WebSocket).

    auto prefers websockets and falls back to wsproto, then to none, when a library is
    missing; an implementation named explicitly must import.
    """
    if name == "none":
        return None
    if name in ("auto", "websockets"):
        try:
            from asgictl.protocols.websockets.websockets_impl import WebsocketsConnection
        except ImportError:
            if name == "websockets":
                raise
        else:
            return WebsocketsConnection
    try:
        from asgictl.protocols.websockets.wsproto_impl import WSProtoConnection
    except ImportError:
        if name == "wsproto":
            raise
        return None
    return WSProtoConnection
