"""Which backend this process uses: choosing it from ``--pubsub``, installing it, and
the lazy ``local`` default (tests and scripts that never start a server).

The supervisor installs the ``master`` backend in a forked worker before the app is
loaded (``pinned``: the worker's Server keeps it). Otherwise the Server installs the one
its Config names when it starts (before lifespan startup, so the app may publish and
subscribe there) and closes it after lifespan shutdown.
"""

from __future__ import annotations

from typing import Any

from asgictl.pubsub.core import DEFAULT_MAX_QUEUE, Backend, LocalBackend

AUTO = "auto"
LOCAL = "local"
MASTER = "master"

_backend: Backend | None = None
_pinned = False


def current() -> Backend:
    """This process's backend; a ``local`` one if nothing was installed."""
    global _backend
    if _backend is None:
        _backend = LocalBackend()
    return _backend


def install(backend: Backend | None, pinned: bool = False) -> None:
    """Make ``backend`` this process's backend (None: back to the lazy local default)."""
    global _backend, _pinned
    _backend = backend
    _pinned = pinned and backend is not None


def mode(setting: str | None, supervised: bool) -> str:
    """``local``, ``master`` or a ``redis://`` URL, from the ``--pubsub`` setting: ``auto``
    is ``master`` under ``asgictl start`` (whatever the worker count, so workers added by
    TTIN or a rolling reload's overlap share channels too) and ``local`` otherwise."""
    value = setting or AUTO
    if value == AUTO:
        return MASTER if supervised else LOCAL
    return value


def setup_for_server(config: Any) -> Backend | None:
    """Install the backend ``config.pubsub`` names, unless the supervisor pinned one.
    Returns the backend the caller now owns (to close at shutdown), or None."""
    max_queue = getattr(config, "pubsub_max_queue", None) or DEFAULT_MAX_QUEUE
    if _pinned and _backend is not None:
        _backend.max_queue = max_queue
        return None
    chosen = mode(getattr(config, "pubsub", None), supervised=False)
    if chosen.startswith(("redis://", "rediss://", "unix://")):
        from asgictl.pubsub.redis_backend import RedisBackend

        backend: Backend = RedisBackend(chosen, max_queue)
        install(backend)
        return backend
    if chosen == MASTER:
        import logging

        logging.getLogger("asgictl.error").warning(
            "--pubsub master: needs the supervisor (asgictl start); using local pub/sub in this process"
        )
    existing = _backend
    if isinstance(existing, LocalBackend):
        # Keep subscriptions made before the server started (tests, embedding).
        existing.max_queue = max_queue
        return None
    backend = LocalBackend(max_queue)
    install(backend)
    return backend
