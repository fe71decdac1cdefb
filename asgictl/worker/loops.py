"""Choosing the event loop: ``--loop auto|uvloop|asyncio``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asgictl.config import ConfigError


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop
