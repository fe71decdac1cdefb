"""What runs in a forked worker, from the instant after ``os.fork()`` to ``os._exit()``.

The child undoes the master's process-wide state (signal handlers, the wakeup fd, the
master's private descriptors), names itself ``asgictl: worker K APP``, arms faulthandler
so the master can ask for every thread's stack while the event loop is blocked, tags its
log lines with its worker id and pid, and then runs one :class:`Server` on the sockets
the master bound. It reports readiness and a heartbeat through its shared-memory cell,
from inside the event loop: a loop that stops turning stops beating.

The child never returns into the master's code: every path ends in ``os._exit``.

Under a master the master decides: a worker ignores SIGINT (a terminal's Ctrl+C reaches
the whole process group; the master turns it into the TERM it sends, and a second Ctrl+C
into a fast stop), and it stops gracefully, releasing the listeners, when its master
dies (``PR_SET_PDEATHSIG`` on Linux: at once, even during the app's import; elsewhere,
and as a second line, a ``getppid()`` check on the once-a-second heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from asgictl.config import Config
from asgictl.logs import SERVING, AccessFormatter, DefaultFormatter, marked, reopen_log_files, set_worker_id
from asgictl.pubsub import backends as pubsub_backends
from asgictl.pubsub.relay import MasterBackend
from asgictl.supervisor.metrics import MetricsTable
from asgictl.supervisor.slots import StatsTable
from asgictl.worker.loader import AppLoadError
from asgictl.worker.server import STARTUP_FAILURE, Server

logger = logging.getLogger("asgictl.error")

#: The signal on which a worker prints every thread's Python stack (and keeps running:
#: the master SIGKILLs it right after). USR2 because the worker has no other use for it
#: and faulthandler refuses to *register* the fatal signals (ABRT, SEGV...).
DUMP_SIGNAL = signal.SIGUSR2
#: Exit status of a worker that could not boot (import error, lifespan startup failure).
BOOT_FAILURE = STARTUP_FAILURE

# Signals the master handles itself; the child starts from their defaults. TTIN, TTOU
# and HUP are ignored in a worker: their defaults (stop, hang up) make no sense there,
# and a `kill -HUP -PGID` aimed at the whole group must not take workers down. SIGINT is
# caught and dropped (see ignore_interrupt).
_RESET_TO_DEFAULT = (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2)
_IGNORED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGWINCH)
#: prctl(2) option: the signal this process gets when its parent dies (Linux).
PR_SET_PDEATHSIG = 1


def ignore_interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGINT handler: nothing. The terminal's Ctrl+C goes to the whole
    process group; the master alone acts on it (a TERM to each worker, a QUIT on a
    second Ctrl+C). Caught rather than SIG_IGN, so the programs the app runs start with
    the default disposition (an ignored signal would be inherited across exec)."""


@dataclass
class WorkerContext:
    """Everything a freshly forked worker needs, prepared by the master before forking."""

    worker_id: int
    cell: int
    stats: StatsTable
    sockets: list[socket.socket]
    config: Config
    app_label: str
    #: The master's private descriptors (its wakeup pipe...), closed in the child.
    close_fds: list[int] = field(default_factory=list)
    #: Per-response counters shared with the master (--metrics-bind), else None.
    metrics: MetricsTable | None = None
    #: This worker's end of its pub/sub socket pair (``--pubsub master``), else None.
    pubsub_socket: socket.socket | None = None
    #: The master's pid: a worker whose parent is no longer this process is orphaned.
    master_pid: int = 0


def child_config(config: Config, preloaded: Any = None) -> Config:
    """The worker's Config: the master recycles workers, so the worker's own
    ``--limit-max-requests`` stop is turned off; a preloaded app object replaces the
    import string (and its factory was already called)."""
    values = {name: value for name, value in config.as_dict().items() if value is not None}
    values.pop("limit_max_requests", None)
    app = config.app
    if preloaded is not None:
        app = preloaded
        values["factory"] = False
    return Config(app, **values)


class _TaggedFormatter(logging.Formatter):
    """Prefixes asgictl's own formatters' lines with the worker's id and pid, so the lines
    of many processes sharing one stream stay attributable. User formatters (a JSON
    --log-config) are left alone."""

    def __init__(self, inner: logging.Formatter, tag: str) -> None:
        super().__init__()
        self.inner = inner
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        return self.tag + self.inner.format(record)


def tag_log_lines(tag: str) -> None:
    seen: set[int] = set()
    loggers: list[Any] = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for lg in loggers:
        for handler in getattr(lg, "handlers", ()):
            if id(handler) in seen:
                continue
            seen.add(id(handler))
            fmt = handler.formatter
            if isinstance(fmt, (DefaultFormatter, AccessFormatter)):
                handler.setFormatter(_TaggedFormatter(fmt, tag))


def _drop_serving(record: logging.LogRecord) -> bool:
    # The master says it serves once, when every worker is ready (the line people and
    # tests wait for); a worker saying it too would announce readiness too early.
    return not marked(record, SERVING)


def _reset_process_state(ctx: WorkerContext) -> None:
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in _RESET_TO_DEFAULT:
        signal.signal(sig, signal.SIG_DFL)
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGINT, ignore_interrupt)
    _follow_master(ctx.master_pid)
    # Until the loop runs, a fast stop is simply an exit (nothing is being served yet).
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
    for fd in ctx.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    # Fatal signals (a segfault in a C extension) print the stacks before dying, and
    # DUMP_SIGNAL prints them on demand: both from C, so a blocked loop cannot stop them.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        faulthandler.enable(file=sys.stderr, all_threads=True)
        faulthandler.register(DUMP_SIGNAL, file=sys.stderr, all_threads=True, chain=False)


def _follow_master(master_pid: int) -> None:
    """Ask the kernel for a SIGTERM (a graceful stop) when the master dies (Linux)."""
    if not sys.platform.startswith("linux") or not master_pid:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl: the tick checks
        return
    if not failed and os.getppid() != master_pid:
        # The master died between fork and prctl: no signal will come; nothing is served
        # yet, so the default action of TERM (exit) is the right one.
        os.kill(os.getpid(), signal.SIGTERM)


def orphaned(master_pid: int) -> bool:
    """Whether this worker's master is gone (it was re-parented: init, a subreaper)."""
    return bool(master_pid) and os.getppid() != master_pid


def set_title(title: str) -> None:
    """The process title ps and top show (master and workers alike)."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - it is a dependency; titles are a nicety
        return
    setproctitle.setproctitle(title)


def run_worker(ctx: WorkerContext) -> NoReturn:
    """The body of a forked worker; never returns."""
    code = 1
    try:
        code = _run(ctx)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        # Whatever escaped must not unwind into the master's stack frames (we are a fork).
        with contextlib.suppress(Exception):
            traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)


def _run(ctx: WorkerContext) -> int:
    _reset_process_state(ctx)
    set_title(f"asgictl: worker {ctx.worker_id} {ctx.app_label}")
    tag_log_lines(f"[worker {ctx.worker_id} pid {os.getpid()}] ")
    set_worker_id(ctx.worker_id)  # --log-format json: a "worker" field on every line
    logger.addFilter(_drop_serving)
    writer = ctx.stats.writer(ctx.cell)
    if ctx.pubsub_socket is not None:
        # Pinned: the Server keeps it rather than installing the one its Config names.
        pubsub_backends.install(MasterBackend(ctx.pubsub_socket, ctx.config.pubsub_max_queue), pinned=True)
    server = Server(ctx.config)
    server.handled_signals = (signal.SIGTERM,)  # SIGINT: see ignore_interrupt
    ready = False

    def beat() -> None:
        state = server.state
        if state is not None:
            writer.beat(state.total_requests, len(state.connections))
        if orphaned(ctx.master_pid) and not server.should_exit:
            logger.warning("The master (pid %d) is gone: stopping gracefully", ctx.master_pid)
            server.should_exit = True

    def fast_stop() -> None:
        server.force_exit = True
        server.should_exit = True

    def restart_stop() -> None:
        # The master replaces this worker (reload, recycle): a graceful stop whose open
        # WebSockets close with 1012 "service restart" (RFC 6455 7.4.1), not 1001.
        if server.state is not None:
            server.state.close_code = 1012
        server.should_exit = True

    def on_ready(_: Server) -> None:
        nonlocal ready
        ready = True
        # Inside the running loop now: route the remaining signals through it.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, fast_stop)
        loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
        loop.add_signal_handler(signal.SIGHUP, restart_stop)
        if ctx.metrics is not None and server.state is not None:
            observe, publish = ctx.metrics.recorder(ctx.cell)
            server.state.observe_responses(observe)
            server.add_tick_callback(publish)
            publishers.append(publish)  # and once more on the way out (below)
        beat()
        writer.ready()
        # Wake the master now rather than at its next poll (up to 0.25 s later): a rolling
        # reload waits on this transition once per worker. SIGCHLD is what the master's
        # loop already treats as "look at your children", and is harmless otherwise.
        with contextlib.suppress(OSError):
            os.kill(os.getppid(), signal.SIGCHLD)

    server.on_ready = on_ready
    server.add_tick_callback(beat)
    publishers: list[Callable[[], None]] = []  # --metrics-bind: the last counts, at exit
    try:
        code = server.run(sockets=ctx.sockets)
        beat()  # the last counts, or the master would see those of up to a second ago
        for publish in publishers:
            publish()
        if orphaned(ctx.master_pid):
            logger.warning("Worker stopped: its master (pid %d) is gone", ctx.master_pid)
    except AppLoadError as exc:
        logger.error("Could not load the application: %s", exc)
        return BOOT_FAILURE
    except Exception:
        if ready:
            raise
        logger.exception("Could not start the application")
        return BOOT_FAILURE
    if not ready and code == 0 and not server.should_exit:
        return BOOT_FAILURE
    return code
