"""HTTP/1.1: one shared ASGI request/response cycle behind thin parser adapters.

``connection.HTTPConnection`` and ``cycle.HTTPCycle`` hold all HTTP semantics;
``httptools_impl`` and ``h11_impl`` only turn bytes into calls on them.
:func:`protocol_class` picks the adapter for ``--http``.
"""

from __future__ import annotations

from asgictl.config import ConfigError
from asgictl.protocols.http.connection import HTTPConnection


def protocol_class(name: str) -> type[HTTPConnection]:
    """The connection class for ``--http auto|httptools|h11`` (auto: httptools if it
    imports, else h11; httptools named but missing is a ConfigError)."""
    if name in ("auto", "httptools"):
        try:
            from asgictl.protocols.http.httptools_impl import HttpToolsConnection
        except ImportError:
            if name == "httptools":
                raise ConfigError("--http httptools: the 'httptools' package is not installed") from None
        else:
            return HttpToolsConnection
    from asgictl.protocols.http.h11_impl import H11Connection

    return H11Connection
