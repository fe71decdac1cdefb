"""HTTP/1.1: one shared ASGI request/response cycle behind thin parser adapters.

``connection.HTTPConnection`` and ``cycle.HTTPCycle`` hold all HTTP semantics;
``h1c_impl``, ``httptools_impl`` and ``h11_impl`` only turn bytes into calls on them.
:func:`protocol_class` picks the adapter for ``--http``.
"""

from __future__ import annotations

import importlib

from asgictl.config import ConfigError
from asgictl.protocols.http.connection import HTTPConnection

#: The C parsers, in the order ``--http auto`` prefers them: name, adapter module and
#: class, the package it needs.
_C_PARSERS = (
    ("h1c", "asgictl.protocols.http.h1c_impl", "H1cConnection", "gunicorn_h1c"),
    ("httptools", "asgictl.protocols.http.httptools_impl", "HttpToolsConnection", "httptools"),
)


def protocol_class(name: str) -> type[HTTPConnection]:
    """The connection class for ``--http auto|h1c|httptools|h11`` (auto: h1c if it
    imports, else httptools, else h11; a parser named but missing is a ConfigError)."""
    for parser, module, attribute, package in _C_PARSERS:
        if name in ("auto", parser):
            try:
                return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
            except ImportError:
                if name == parser:
                    raise ConfigError(f"--http {parser}: the {package!r} package is not installed") from None
    from asgictl.protocols.http.h11_impl import H11Connection

    return H11Connection
