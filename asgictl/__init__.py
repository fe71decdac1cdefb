"""asgictl: a production ASGI server and the process manager around it.

The public Python API, as uvicorn's: :func:`run`, :class:`Config`, :class:`Server`.
``Server`` (the worker, its protocols and their libraries) is imported on first use, so
``asgictl status`` and the other control commands load none of the server.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from asgictl.config import Config, ConfigError

if TYPE_CHECKING:
    from asgictl.worker.server import Server

__version__ = "0.1.0"
__all__ = ["Config", "Server", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from asgictl.worker.server import Server

        return Server
    raise AttributeError(f"module 'asgictl' has no attribute {name!r}")


def run(app: Any, **kwargs: Any) -> None:
    """Serve ``app`` (a callable or ``"module:attr"``) in this process until stopped."""
    from asgictl.logs import configure_logging
    from asgictl.worker.loader import AppLoadError
    from asgictl.worker.server import Server

    config = Config(app, **kwargs)
    configure_logging(config)
    try:
        code = Server(config).run()
    except (ConfigError, AppLoadError) as exc:
        print(f"asgictl: error: {exc}", file=sys.stderr)
        sys.exit(1)
    if code:
        sys.exit(code)
