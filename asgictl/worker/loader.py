"""Finding the application: ``module:attr`` import strings, factories, interfaces.

``--interface auto`` tells ASGI3, ASGI2 and WSGI apart by their call signatures: an
``async`` callable is ASGI3; a plain callable taking ``(environ, start_response)`` is
WSGI (Flask, Django's WSGIHandler); a class or a one-argument callable is ASGI2.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from typing import Any

from asgictl.config import Config, apply_env_file

logger = logging.getLogger("asgictl.error")


class AppLoadError(Exception):
    """The application could not be imported or is not usable: a one-line message."""


def import_from_string(spec: Any) -> Any:
    if not isinstance(spec, str):
        return spec
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f'Import string "{spec}" must be in format "<module>:<attribute>".')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # the module exists but one of its own imports failed: show that
        raise AppLoadError(f'Could not import module "{module_name}".') from None
    obj: Any = module
    try:
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        raise AppLoadError(f'Attribute "{attrs}" not found in module "{module_name}".') from None
    return obj


class ASGI2Adapter:
    """Runs an ASGI2 (double-callable) application as ASGI3."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def detect_interface(app: Any) -> str:
    if inspect.isclass(app):
        return "asgi3" if hasattr(app, "__await__") else "asgi2"
    if not callable(app):
        raise AppLoadError(f"{app!r} is not callable.")
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else app.__call__
    if inspect.iscoroutinefunction(call):
        return "asgi3"
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return "asgi3"
    if len(params) == 2:
        return "wsgi"
    if len(params) == 3:
        return "asgi3"  # an ASGI3 callable that returns an awaitable without being async
    return "asgi2"


def import_app(config: Config) -> Any:
    """Import the app from --app-dir (or take it) and call its factory if asked; no
    interface wrapping (the supervisor's --preload shares exactly this)."""
    app_dir = config.app_dir or os.getcwd()
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    app = import_from_string(config.app)
    if config.factory:
        if not callable(app):
            raise AppLoadError("--factory: the APP is not callable.")
        app = app()
    return app


def load_app(config: Config) -> Any:
    """Import (or take) the app, call its factory if asked, and wrap it as ASGI3."""
    if config.env_file:
        # As uvicorn's Config does, also from the Python API: the app sees the file's
        # variables (the real environment wins, as when resolve() applied them already).
        apply_env_file(config.env_file)
    app = import_app(config)
    looks_like_factory = inspect.isfunction(app) and _looks_like_factory(app)
    if not config.factory and isinstance(config.app, str) and looks_like_factory:
        raise AppLoadError(
            f'"{config.app}" is a function of no arguments: if it builds the app, add --factory.'
        )
    interface = config.interface
    if interface == "auto":
        interface = detect_interface(app)
        if interface == "wsgi":
            logger.info(
                "Detected a WSGI application: serving it %s (--interface wsgi)",
                "on the event loop (--wsgi-inline)"
                if config.wsgi_inline
                else f"with {config.threads} threads (--threads)",
            )
    if interface == "asgi2":
        return ASGI2Adapter(app)
    if interface == "wsgi":
        from asgictl.worker.wsgi import WSGIAdapter

        return WSGIAdapter(app, config.threads, config.wsgi_queue, config.wsgi_inline)
    return app


def _looks_like_factory(fn: Any) -> bool:
    try:
        return not inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
