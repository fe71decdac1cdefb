"""What every connection of one server shares: settings, counters, the default headers.

A :class:`ServerState` is built once per server from its Config and the loaded app. The
protocols read settings from it instead of from the Config, already in the form the hot
path wants (bytes, booleans, a parsed trust list), and they report to it: open
connections (:class:`Connection`: what the server asks of each), requests served,
requests in progress and the tasks running their apps (``start_task``, ``tasks``).

:meth:`ServerState.tick` runs once a second (the worker's clock): it formats the Date
header, closes connections idle past the keep-alive timeout and lets the owner check
its limits. Formatting the date there, and not per request, is a hot-path saving.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from asgictl.config import Config
from asgictl.protocols.access import AccessLog
from asgictl.protocols.proxy import TrustedHosts

if TYPE_CHECKING:
    from asgictl.protocols.websockets import WSFactory

ASGIApp = Callable[..., Any]

logger = logging.getLogger("asgictl.error")
access_logger = logging.getLogger("asgictl.access")


#: Request and WebSocket tasks share one name: a name of asyncio's own ("Task-N") is
#: formatted per task, a measurable cost at tens of thousands of requests a second.
TASK_NAME = "asgictl.app"
#: Tasks start eagerly (3.12+): one may finish inside its creation, before it could be
#: kept (see ServerState.start_task). Before 3.12 no task is done at creation.
EAGER_TASKS = sys.version_info >= (3, 12)


def task_starter(loop: asyncio.AbstractEventLoop) -> Callable[[Any], asyncio.Task[Any]]:
    """``start(coro)``: a task of ``loop`` running ``coro``. A task factory set on the loop
    (by the app, at startup) is honoured; without one the Task is made directly."""
    if loop.get_task_factory() is not None:
        return loop.create_task
    if sys.version_info >= (3, 12):  # pragma: no cover - exercised on 3.12+ only
        # An eager task runs the app synchronously up to its first real suspension:
        # most small requests finish without a trip through the loop's ready queue.
        return functools.partial(asyncio.Task, loop=loop, name=TASK_NAME, eager_start=True)
    return functools.partial(asyncio.Task, loop=loop, name=TASK_NAME)


class AppRunner(Protocol):
    """What runs the app for one request, HTTP/2 stream or WebSocket (an HTTPCycle, a
    WSConnection): its ``run`` ends with ``state.tasks.pop(self, None)``."""

    async def run(self, app: ASGIApp) -> None: ...


class Connection(Protocol):
    """What the server asks of each of its open connections (``ServerState.connections``:
    HTTP/1.1, HTTP/2 and WebSocket ones), the same questions whatever the protocol."""

    transport: asyncio.Transport
    #: no new requests or streams will start on it (the server's stop sets it too)
    closing: bool

    def check_idle(self, now: float) -> None:
        """The once-a-second deadlines (``now``: the loop's clock, seconds)."""

    def busy(self) -> bool:
        """An app is running for it, or a request is queued: a graceful stop lets it
        finish instead of closing the connection after a short grace."""

    def shutdown(self) -> None:
        """Graceful stop (``shutting_down`` is set): finish what is in flight, then close."""


class ServerState:
    __slots__ = (
        "access_log",
        "active_requests",
        "app",
        "config",
        "connections",
        "date_line",
        "default_headers",
        "extra_lines",
        "h11_max_incomplete_event_size",
        "h2_default_fields",
        "h2_engine",
        "h2_max_concurrent_streams",
        "h2_protocol",
        "h2c_upgrade",
        "limit_line",
        "limit_fields",
        "limit_field_size",
        "limit_body",
        "limit_head",
        "timeout_header_read",
        "timeout_body_read",
        "timeout_send",
        "is_ssl",
        "trace",
        "keep_alive_timeout",
        "lifespan_state",
        "limit_concurrency",
        "loop",
        "root_path",
        "root_path_bytes",
        "server_line",
        "shutting_down",
        "total_requests",
        "trusted",
        "ws_protocol",
        "ws_max_size",
        "ws_max_queue",
        "ws_ping_interval",
        "ws_ping_timeout",
        "ws_per_message_deflate",
        "close_code",
        "on_response",
        "timed",
        "new_task",
        "tasks",
    )

    def __init__(self, config: Config, app: ASGIApp, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.app = app
        self.config = config
        self.connections: set[Connection] = set()
        self.total_requests = 0
        self.active_requests = 0
        self.server_line = b"server: asgictl\r\n" if config.server_header else b""
        self.extra_lines = b"".join(
            f"{name}: {value}\r\n".encode("latin-1") for name, value in config.headers
        )
        self.date_line = b""
        self.default_headers = b""
        self.root_path = config.root_path
        self.root_path_bytes = config.root_path.encode("latin-1")
        #: Writes the access lines; None when the access log is off (one test per response).
        self.access_log: AccessLog | None = None
        if config.access_log and access_logger.isEnabledFor(logging.INFO):
            self.access_log = AccessLog(config.access_log_format)
            # A format naming what the app sends (B, b, {header}o) watches its send().
            self.app = self.access_log.wrap(app)
        self.keep_alive_timeout = config.timeout_keep_alive
        self.limit_concurrency = config.limit_concurrency
        self.trusted = TrustedHosts(config.forwarded_allow_ips) if config.proxy_headers else None
        self.lifespan_state: dict[str, Any] = {}
        self.h11_max_incomplete_event_size = config.h11_max_incomplete_event_size
        self.limit_line = config.limit_request_line
        self.limit_fields = config.limit_request_fields
        self.limit_field_size = config.limit_request_field_size
        self.limit_body = config.limit_request_body
        #: Bytes a head may take in all before 431, whatever its shape: bounds the memory
        #: a client can pin by never finishing its head.
        self.limit_head = max(64 * 1024, config.limit_request_line + config.limit_request_field_size + 4)
        self.timeout_header_read = config.timeout_header_read
        self.timeout_body_read = config.timeout_body_read
        self.timeout_send = config.timeout_send
        self.shutting_down = False
        self.is_ssl = config.is_ssl
        #: --log-level trace: connection events are logged (checked once, not per call)
        self.trace = logger.isEnabledFor(5)
        #: ``new_task(coro)``: a task of the loop (eager on 3.12+); see start_task.
        self.new_task = task_starter(loop)
        #: The tasks running an app for a request, an HTTP/2 stream or a WebSocket, by
        #: what runs it (see start_task): the server's shutdown waits for them, then
        #: cancels what is left. (A task cancelled before its first step never runs its
        #: ``finally`` and stays here: only that last cancel can do it.)
        self.tasks: dict[AppRunner, asyncio.Task[Any]] = {}
        # What an HTTP/1.1 connection hands over to, set with the rest of the protocol
        # stack by factory.connection_factory (this module imports no protocol):
        #: ``ws_protocol(state, http_scope)``: the protocol of an accepted WebSocket
        #: handshake (None: --ws none, an Upgrade is answered as plain HTTP);
        self.ws_protocol: WSFactory | None = None
        #: ``h2_protocol(state)``: the protocol a connection switches to for HTTP/2, and
        #: the framing engine class it runs (None: --no-http2).
        self.h2_protocol: Callable[[ServerState], Any] | None = None
        self.h2_engine: Any = None
        self.h2_max_concurrent_streams = config.http2_max_concurrent_streams
        self.h2c_upgrade = config.http2 and config.h2c_upgrade
        self.h2_default_fields: list[tuple[bytes, bytes]] = []
        self.ws_max_size = config.ws_max_size
        self.ws_max_queue = config.ws_max_queue
        self.ws_ping_interval = config.ws_ping_interval
        self.ws_ping_timeout = config.ws_ping_timeout
        self.ws_per_message_deflate = config.ws_per_message_deflate
        #: The close code open WebSockets get on shutdown: 1001 (going away) on a stop,
        #: 1012 (service restart) when the worker is reloaded or recycled.
        self.close_code = 1001
        #: Called as ``on_response(status, seconds)`` when a response completes, and
        #: ``on_response(status, seconds, True)`` when the client left first (the
        #: supervisor's metrics, set through observe_responses); None costs one check.
        self.on_response: Callable[..., None] | None = None
        #: Requests get a start time (access log or on_response need the duration).
        self.timed = self.access_log is not None
        self.update_date()

    def observe_responses(self, callback: Callable[..., None]) -> None:
        """Have ``callback(status, seconds[, disconnected])`` called for every HTTP
        response, complete or cut short by a client that left."""
        self.on_response = callback
        self.timed = True

    def start_task(self, runner: AppRunner, app: ASGIApp) -> asyncio.Task[Any]:
        """Run ``runner.run(app)`` (the app for one request, HTTP/2 stream or WebSocket)
        in a task kept in ``tasks[runner]`` until the run ends; the run removes it in its
        ``finally``, which costs less than a done callback per request (a trip through
        the loop's ready queue). An eager task (3.12+) that finished inside this call is
        not kept at all. (HTTPConnection.start_next has these lines inline: a Python call
        less per request on the hot path.)"""
        task = self.new_task(runner.run(app))
        if not (EAGER_TASKS and task.done()):
            self.tasks[runner] = task
        return task

    def update_date(self) -> None:
        if self.config.date_header:
            stamp = email.utils.formatdate(time.time(), usegmt=True)
            self.date_line = b"date: " + stamp.encode("ascii") + b"\r\n"
        self.default_headers = self.date_line + self.server_line + self.extra_lines
        # The same fields for HTTP/2 (lowercase names, no CRLF).
        self.h2_default_fields = [
            (name.lower(), value)
            for name, _, value in (
                line.partition(b": ") for line in self.default_headers.split(b"\r\n") if line
            )
        ]

    def tick(self) -> None:
        """The once-a-second housekeeping: Date header, idle connections."""
        self.update_date()
        now = self.loop.time()
        for conn in list(self.connections):
            conn.check_idle(now)

    def over_capacity(self) -> bool:
        limit = self.limit_concurrency
        # Called after the new request was counted in active_requests.
        return limit is not None and (len(self.connections) > limit or self.active_requests > limit)
