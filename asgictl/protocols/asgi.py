"""What the ASGI side of every protocol shares, whatever carries it (HTTP/1.1, HTTP/2,
WebSocket): the spec version, the exception ``send`` raises once the peer has gone, and
the access-log line.
"""

from __future__ import annotations

import logging
from typing import Any

# The access line's format, whose six arguments the log formatters read.
from asgictl.logs import ACCESS_MESSAGE

access_logger = logging.getLogger("asgictl.access")

#: The ``asgi`` entry of every scope (ASGI spec 3.0, HTTP/WebSocket spec 2.4).
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """Raised by ``send`` once the peer has gone or its stream/connection was closed
    under the app (ASGI HTTP/WebSocket spec 2.4: an ``OSError`` subclass)."""


def _client_and_path(scope: dict[str, Any]) -> tuple[str, str]:
    client = scope.get("client")
    path = scope["path"]
    query = scope["query_string"]
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    return (f"{client[0]}:{client[1]}" if client else "-"), path


def log_http_access(scope: dict[str, Any], status: int, seconds: float) -> None:
    """``client - "METHOD path?query HTTP/version" status N.Nms`` (version 1.0, 1.1 or 2)."""
    client, path = _client_and_path(scope)
    access_logger.info(
        ACCESS_MESSAGE, client, scope["method"], path, scope["http_version"], status, seconds * 1000
    )


def log_websocket_access(scope: dict[str, Any], status: int) -> None:
    """``client - "WebSocket path?query" status``: 101 accepted, or the refusal's status."""
    client, path = _client_and_path(scope)
    access_logger.info('%s - "WebSocket %s" %d', client, path, status)
