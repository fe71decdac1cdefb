"""Which HTTP/1.1 adapter ``--http`` picks: auto prefers h1c, then httptools, then h11."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from asgictl.config import ConfigError
from asgictl.protocols.http import protocol_class


def test_each_parser_by_name() -> None:
    names = {name: protocol_class(name).__name__ for name in ("auto", "h1c", "httptools", "h11")}
    assert names == {
        "auto": "H1cConnection",
        "h1c": "H1cConnection",
        "httptools": "HttpToolsConnection",
        "h11": "H11Connection",
    }


def test_auto_without_gunicorn_h1c_is_httptools_and_h1c_named_is_an_error(monkeypatch: Any) -> None:
    # An import of a module set to None in sys.modules raises ImportError, as a missing
    # package does; the adapter module is imported afresh.
    monkeypatch.setitem(sys.modules, "gunicorn_h1c", None)
    monkeypatch.delitem(sys.modules, "asgictl.protocols.http.h1c_impl", raising=False)
    assert protocol_class("auto").__name__ == "HttpToolsConnection"
    with pytest.raises(ConfigError, match=r"^--http h1c: the 'gunicorn_h1c' package is not installed$"):
        protocol_class("h1c")
