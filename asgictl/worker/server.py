"""One worker's lifetime: load the app, run lifespan, serve, and stop gracefully.

:class:`Server` is what ``asgictl serve`` runs in the foreground and what the supervisor
runs in each forked worker (on listening sockets bound by the master and passed to
:meth:`Server.serve`). Its API follows uvicorn's: ``Server(config).run()``, or
``await server.serve()`` inside a running loop, and ``server.should_exit = True`` to stop.

Stopping: listeners close first, idle keep-alive connections close at once, requests in
flight finish (their connections close after the response), then lifespan shutdown; past
``--timeout-graceful-shutdown`` what is left is cancelled and closed. A stop that comes
while the server boots cancels the boot (there is nothing to drain yet): a stop signal
interrupts the app's import, and a lifespan startup in progress is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from asgictl.config import Config
from asgictl.logs import ROUTINE, SERVING, plural
from asgictl.protocols.access import compile_format
from asgictl.protocols.factory import connection_factory
from asgictl.protocols.http import protocol_class
from asgictl.protocols.http.connection import CLOSE_GRACE
from asgictl.protocols.http2 import engine_class, http2_protocol
from asgictl.protocols.state import ServerState, task_starter
from asgictl.protocols.websockets import ws_protocol_factory
from asgictl.pubsub import backends as pubsub_backends
from asgictl.worker.lifespan import Lifespan
from asgictl.worker.loader import load_app
from asgictl.worker.loops import loop_factory
from asgictl.worker.sockets import bind_from_config, describe
from asgictl.worker.tls import create_ssl_context

logger = logging.getLogger("asgictl.error")

#: Exit status when the app fails its lifespan startup (as uvicorn's).
STARTUP_FAILURE = 3
TICK_SECONDS = 1.0
#: On shutdown, how long an idle connection may still deliver a request.
IDLE_GRACE_SECONDS = CLOSE_GRACE
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long a cancelled lifespan startup may take to unwind before the server leaves.
STARTUP_CANCEL_SECONDS = 1.0


class BootCancelled(BaseException):
    """A stop signal arrived while the app was being imported (raised by the handler)."""


class Server:
    """One worker's server: it owns the app (loaded from ``config``), its lifespan, the
    listeners it serves, the :class:`~asgictl.protocols.state.ServerState` its
    connections share, the once-a-second tick, and the graceful stop.

    ``config``: a :class:`~asgictl.config.Config` (``Config(app, ...)`` from Python, or
    the CLI's). Build, then ``run()`` (a new event loop) or ``await serve()`` (the
    running one); set ``should_exit`` (any thread) to stop gracefully, ``force_exit``
    to skip the waiting. ``exit_code`` says how it ended (0, or ``STARTUP_FAILURE``: 3,
    when the lifespan startup failed); ``started`` turns True once it accepts
    connections, when ``on_ready`` is called.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = False
        self.force_exit = False
        self.exit_code = 0
        self.state: ServerState | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.sockets: list[socket.socket] = []
        #: Called once the server accepts connections (the supervisor's readiness seam).
        self.on_ready: Callable[[Server], None] | None = None
        #: The signals that stop this server. A supervised worker obeys its master only
        #: and drops SIGINT (a terminal's Ctrl+C reaches the whole process group).
        self.handled_signals: tuple[int, ...] = HANDLED_SIGNALS
        self._should_exit = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_waiter: asyncio.Future[None] | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_callbacks: list[Callable[[], None]] = []
        self._pubsub: pubsub_backends.Backend | None = None  # the pub/sub backend we installed

    # ------------------------------------------------------------------ public API

    @property
    def should_exit(self) -> bool:
        """A graceful stop was asked for; setting it (from any thread) starts one."""
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        loop = self._loop
        if value and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def add_tick_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once a second inside the event loop while serving."""
        self._tick_callbacks.append(callback)

    def run(self, sockets: list[socket.socket] | None = None) -> int:
        """Serve until stopped, in a new event loop; returns the exit status."""
        import_runtime(self.config)  # a bad --http, --ws or --access-log-format: before the app
        factory = loop_factory(self.config.loop)
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(self.serve(sockets))
        else:  # pragma: no cover - Python 3.10
            loop = factory()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve(sockets))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                asyncio.set_event_loop(None)
                loop.close()
        return self.exit_code

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Load the app, run its lifespan startup, serve until stopped, then stop
        gracefully, in the running loop; SIGINT/SIGTERM (``handled_signals``) stop it.

        ``sockets``: listening sockets to serve (the supervisor's, bound by the master);
        None binds from the config (``--fd``, ``--uds``, systemd's LISTEN_FDS, else
        ``--host``/``--port``). Handed sockets are closed if the boot is given up.

        Raises ConfigError for a bad TLS setting or an ``--http``, ``--ws`` or
        ``--http2-engine`` library that is not installed, AppLoadError (one line) when
        the app cannot be imported or is not callable, OSError when a listener cannot
        be bound (after the app's lifespan shutdown). A failed lifespan startup is no exception: it
        returns with ``exit_code`` set to ``STARTUP_FAILURE``.
        """
        self._loop = asyncio.get_running_loop()
        with self._capture_signals():
            try:
                await self._serve(sockets)
            finally:
                await self._close_pubsub()

    # ------------------------------------------------------------------ lifetime

    async def _serve(self, sockets: list[socket.socket] | None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        logger.info("Started server process [%d]", os.getpid(), extra=ROUTINE)
        ssl_context = create_ssl_context(config)
        self._exit_waiter = loop.create_future()
        try:
            with self._stop_interrupts():
                app = load_app(config)
        except BootCancelled:
            logger.info("Stopped while importing the application")
            self._close_sockets(sockets)
            return
        if self.should_exit:
            self._close_sockets(sockets)
            return
        state = self.state = ServerState(config, app, loop)
        # The protocol stack before the lifespan: a library named but missing is a
        # ConfigError before the app starts.
        factory = connection_factory(state)
        lifespan = Lifespan(app, config.lifespan, state.lifespan_state)
        # asgictl.pubsub's backend before lifespan startup: the app may publish there.
        self._pubsub = pubsub_backends.setup_for_server(config)
        started = await self._startup(lifespan)
        if started is None:
            logger.info("Stopped during application startup")
            self._close_sockets(sockets)
            return
        if not started:
            self.exit_code = STARTUP_FAILURE
            return
        # The app may have set a task factory on the loop during its startup.
        state.new_task = task_starter(loop)
        if self.should_exit:
            await lifespan.shutdown()
            return
        try:
            await self._start_listening(sockets, ssl_context, factory)
        except BaseException:
            # e.g. the port is taken: the app started, so it gets its shutdown too (and
            # its lifespan task is not left to be cancelled mid-receive, with a traceback).
            await lifespan.shutdown()
            raise
        self.started = True
        if self.on_ready is not None:
            self.on_ready(self)
        self._schedule_tick()
        if not self.should_exit:
            await self._exit_waiter
        await self._shutdown(lifespan)
        logger.info("Finished server process [%d]", os.getpid(), extra=ROUTINE)

    async def _startup(self, lifespan: Lifespan) -> bool | None:
        """The lifespan startup, unless a stop comes first: then it is cancelled (None)."""
        startup = asyncio.ensure_future(lifespan.startup())
        assert self._exit_waiter is not None
        await asyncio.wait((startup, self._exit_waiter), return_when=asyncio.FIRST_COMPLETED)
        if startup.done():
            return startup.result()
        await lifespan.cancel_startup(STARTUP_CANCEL_SECONDS)
        startup.cancel()
        await asyncio.wait((startup,), timeout=STARTUP_CANCEL_SECONDS)
        return None

    @staticmethod
    def _close_sockets(sockets: list[socket.socket] | None) -> None:
        # A boot given up: the listeners handed to us are released now, not at exit.
        for sock in sockets or ():
            with contextlib.suppress(OSError):
                sock.close()

    async def _start_listening(
        self, sockets: list[socket.socket] | None, ssl_context: Any, factory: Callable[[], asyncio.Protocol]
    ) -> None:
        config = self.config
        self.sockets = list(sockets) if sockets is not None else bind_from_config(config)
        loop = asyncio.get_running_loop()
        # The TLS handshake is part of the time a client has to send its first request
        # head: it is bounded by the same deadline (and the head's clock runs from
        # accept), not by the event loop's default of 60 s.
        tls = {"ssl_handshake_timeout": config.timeout_header_read} if ssl_context else {}
        for sock in self.sockets:
            server = await loop.create_server(
                factory, sock=sock, ssl=ssl_context, backlog=config.backlog, **tls
            )
            self.servers.append(server)
        scheme = "https" if ssl_context else "http"
        for sock in self.sockets:
            logger.info("Asgictl running on %s (Press CTRL+C to quit)", describe(sock, scheme), extra=SERVING)

    async def _shutdown(self, lifespan: Lifespan) -> None:
        state = self.state
        assert state is not None
        loop = asyncio.get_running_loop()
        self._stop_tick()
        logger.info("Shutting down", extra=ROUTINE)
        for server in self.servers:
            server.close()
        state.shutting_down = True
        deadline = loop.time() + self.config.timeout_graceful_shutdown
        # Idle connections get a short grace before they close: one accepted just before
        # the listeners closed, whose request is not read yet, or a keep-alive client that
        # sent its next request as we stopped, must be answered (with Connection: close),
        # not reset. Busy ones close after their response.
        idle = False
        for conn in list(state.connections):
            conn.closing = True
            if conn.busy():
                conn.shutdown()
            else:
                idle = True
        if idle and not self.force_exit:
            await asyncio.sleep(IDLE_GRACE_SECONDS)
        for conn in list(state.connections):
            conn.shutdown()
        # Poll with a deadline: the conditions (connections, tasks) change from many
        # callbacks, and a 50 ms step keeps the stop prompt without a notifier per request.
        while (state.connections or state.active_requests) and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.connections or state.active_requests:
            tasks = list(state.tasks.values())
            logger.warning(
                "Graceful shutdown timed out: cancelling %s, closing %s",
                plural(len(tasks), "request"),
                plural(len(state.connections), "connection"),
            )
            for task in tasks:
                task.cancel()
            for conn in list(state.connections):
                conn.transport.abort()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
        if not self.force_exit:
            remaining = max(deadline - loop.time(), 1.0)
            try:
                await asyncio.wait_for(lifespan.shutdown(), remaining)
            except asyncio.TimeoutError:
                logger.error("Application shutdown did not finish within %.0f s", remaining)
        for server in self.servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # ------------------------------------------------------------------ the clock

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        self._tick_handle = self._loop.call_later(TICK_SECONDS, self._tick)

    def _stop_tick(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _tick(self) -> None:
        state = self.state
        assert state is not None
        state.tick()
        limit = self.config.limit_max_requests
        if limit is not None and state.total_requests >= limit and not self.should_exit:
            logger.warning("Maximum request limit of %d exceeded. Terminating process.", limit)
            self.should_exit = True
        for callback in self._tick_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("Error in a tick callback")
        self._schedule_tick()

    async def _close_pubsub(self) -> None:
        backend, self._pubsub = self._pubsub, None
        if backend is not None:
            try:
                await backend.aclose()
            except Exception:
                logger.exception("Error closing the pub/sub backend")
            if pubsub_backends.current() is backend:
                pubsub_backends.install(None)

    def _wake(self) -> None:
        waiter = self._exit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ signals

    def handle_exit(self, sig: int) -> None:
        """A stop signal: a graceful stop; a second SIGINT skips the waiting."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    @contextlib.contextmanager
    def _stop_interrupts(self) -> Iterator[None]:
        """While the app is imported (synchronous: the loop cannot run its handlers), a
        stop signal raises :class:`BootCancelled` where the import is. The loop's own
        handling of the signal is kept, through its wakeup descriptor."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def interrupt(signum: int, frame: Any) -> None:
            self._should_exit = True
            raise BootCancelled(signum)

        previous = {sig: signal.signal(sig, interrupt) for sig in self.handled_signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def _capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        installed = []
        for sig in self.handled_signals:
            try:
                loop.add_signal_handler(sig, self.handle_exit, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


def import_runtime(config: Config) -> None:
    """Import what a worker imports first thing: its event loop, HTTP parser and HTTP/2.

    The master calls it before forking, so that each worker inherits these modules
    (once, shared) instead of importing them on its way to ready: uvloop alone takes
    about 7 ms, paid again by every respawned or reloaded worker otherwise. A --loop,
    --http or --ws naming a missing library, or an --access-log-format with an unknown
    atom, is a ConfigError here, before any fork.
    """
    loop_factory(config.loop)
    protocol_class(config.http)
    ws_protocol_factory(config.ws)
    if config.access_log_format is not None:
        compile_format(config.access_log_format)
    if config.http2:
        http2_protocol()
        engine_class(config.http2_engine)
