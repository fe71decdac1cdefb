"""HTTP/2 (RFC 9113): one connection protocol behind a framing-engine seam.

``connection.HTTP2Connection`` holds everything about an HTTP/2 connection that does not
depend on the framing library (streams as ASGI cycles, request checks, limits, floods,
deadlines, shutdown); ``stream.H2Stream`` carries one request's
:class:`~asgictl.protocols.http.cycle.HTTPCycle`, the same cycle HTTP/1.1 runs;
``h2_engine`` (python-hyper's ``h2``) only turns bytes into calls and calls into frames.
An HTTP/1.1 connection hands its transport over (``http.handover``) when TLS ALPN chose
``h2``, the first bytes are the client preface, or ``Upgrade: h2c`` is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgictl.config import ConfigError

if TYPE_CHECKING:
    from asgictl.protocols.http2.connection import HTTP2Connection
    from asgictl.protocols.state import ServerState


def http2_protocol() -> Callable[[ServerState], HTTP2Connection]:
    """The HTTP/2 connection class (imported here, before any connection needs it)."""
    from asgictl.protocols.http2.connection import HTTP2Connection

    return HTTP2Connection


def engine_class(name: str) -> Any:
    """The framing engine for ``--http2-engine auto|h2|zttp`` (auto: h2, the one that
    passes the whole HTTP/2 suite); zttp named but not installed is a ConfigError."""
    if name == "zttp":
        try:
            from asgictl.protocols.http2.zttp_engine import ZttpEngine
        except ImportError:
            raise ConfigError("--http2-engine zttp: the 'zttp' package is not installed") from None
        return ZttpEngine
    from asgictl.protocols.http2.h2_engine import H2Engine

    return H2Engine
