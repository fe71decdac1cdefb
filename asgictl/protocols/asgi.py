"""What the ASGI side of every protocol shares, whatever carries it (HTTP/1.1, HTTP/2,
WebSocket): the spec version every scope states and the exception ``send`` raises once
the peer has gone. The access line is :mod:`asgictl.protocols.access`'s.
"""

from __future__ import annotations

#: The ``asgi`` entry of every scope (ASGI spec 3.0, HTTP/WebSocket spec 2.4).
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """Raised by ``send`` once the peer has gone or its stream/connection was closed
    under the app (ASGI HTTP/WebSocket spec 2.4: an ``OSError`` subclass)."""
