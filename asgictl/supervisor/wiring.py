"""``asgictl start``'s process, wired: what the master is made of and who follows it.

:func:`run_master` checks the pid file, binds the listeners (before any fork), imports
the worker's runtime once (uvloop, the parser: shared by every fork), makes the app's
metrics directory, preloads the app if asked, and builds the master from its parts: its
loop, the Pub/Sub broker, the metrics table. Then it opens what serves beside the
workers (the control socket, the metrics listener, the file watcher) and subscribes,
in one list, everything that follows the master's life (:class:`MasterHooks`). The pid
file is written last, once every resource is held. :func:`exit_process` ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

from asgictl.config import Config
from asgictl.pubsub.backends import MASTER as PUBSUB_MASTER
from asgictl.pubsub.backends import mode as pubsub_mode
from asgictl.supervisor import upgrade
from asgictl.supervisor.broker import Broker
from asgictl.supervisor.child import set_title
from asgictl.supervisor.control import serving_control
from asgictl.supervisor.hooks import MasterHooks
from asgictl.supervisor.listeners import INHERIT_ENV, INHERIT_GROUPS_ENV, Listeners, open_listeners
from asgictl.supervisor.loop import Loop
from asgictl.supervisor.master import CELLS, Master
from asgictl.supervisor.metrics import MetricsServer, MetricsTable, app_metrics_dir
from asgictl.supervisor.notify import SystemdHooks
from asgictl.supervisor.observe import Sampler
from asgictl.supervisor.pidfile import PidFile
from asgictl.supervisor.reload import reloading
from asgictl.worker.loader import import_app
from asgictl.worker.server import import_runtime

logger = logging.getLogger("asgictl.error")


@contextlib.contextmanager
def serving_metrics(master: Master, table: MetricsTable, sampler: Sampler) -> Iterator[MetricsServer]:
    """``--metrics-bind``: the HTTP listener of the shared per-response counters, open
    while the master runs."""
    metrics = MetricsServer(master, table, sampler, master.config.metrics_bind or "")
    logger.info("Metrics: %s", metrics.url)
    try:
        yield metrics
    finally:
        metrics.close()


def run_master(config: Config) -> int:
    """``asgictl start``: bind, (preload), supervise until stopped; returns the exit code.

    Raises ConfigError (bad listener, a running master's pid file, a control socket in
    use) and AppLoadError (--preload) for the CLI to print. The CLI then ends the process
    with :func:`exit_process`.
    """
    pid_file = PidFile(config.pid_file) if config.pid_file else None
    if pid_file is not None:
        pid_file.check(predecessor=upgrade.predecessor(pop=False))  # before anything is bound
    listeners = open_listeners(config)
    for name in (INHERIT_ENV, INHERIT_GROUPS_ENV):
        os.environ.pop(name, None)  # neither workers nor the app need to see them
    try:
        import_runtime(config)
        # --metrics-bind: the app's prometheus_client metrics go to a directory shared by
        # the workers, set before anything imports the library (a preloaded app included).
        with app_metrics_dir(config):
            return _supervise(config, listeners, pid_file)
    except BaseException:
        listeners.close()
        raise


def _supervise(config: Config, listeners: Listeners, pid_file: PidFile | None) -> int:
    """The master's life once the listeners are held: preload, wire, run."""
    # --preload: the app imported (its factory called) once, shared copy-on-write.
    preloaded = import_app(config) if config.preload else None
    set_title(f"asgictl: master {config.app if isinstance(config.app, str) else 'app'}")
    try:
        loop = Loop()
        broker = None
        if pubsub_mode(config.pubsub, supervised=True) == PUBSUB_MASTER:
            broker = Broker(loop.add_reader, loop.remove_reader, loop.add_writer, loop.remove_writer)
        table = MetricsTable(CELLS) if config.metrics_bind else None
        master = Master(config, listeners, preloaded, loop=loop, broker=broker, metrics=table)
        # sd_notify when NOTIFY_SOCKET is set (systemd Type=notify): READY, RELOADING...
        notify = SystemdHooks.from_environ(old_master=master.upgrade.predecessor)
        sampler = Sampler(master)  # psutil and req/s samples, for status and metrics
        # The control socket (and --metrics-bind) first: bound before anything else runs.
        with contextlib.ExitStack() as stack:
            control = stack.enter_context(serving_control(master, sampler))
            metrics = None
            if table is not None:
                metrics = stack.enter_context(serving_metrics(master, table, sampler))
                control.metrics_url = metrics.url
            reloader = stack.enter_context(reloading(master))  # --reload's file watcher
            # Who follows the master's life, in the order they hear of it.
            subscribers: list[MasterHooks | None] = [notify, reloader, sampler, control, metrics, broker]
            for hooks in subscribers:
                if hooks is not None:
                    master.subscribe(hooks)
            if pid_file is not None:
                pid_file.write()  # last: every resource is held
            return master.run()
    finally:
        if pid_file is not None:
            pid_file.remove()


def exit_process(code: int | str | None) -> NoReturn:
    """End ``asgictl start``'s process once the master's work is done (or it was refused).

    Flushes the logs and the standard streams, then ``os._exit``: a non-daemon thread the
    app started at import (``--preload`` runs the import in the master) would otherwise
    keep the process alive after its "exits" line, the interpreter waiting for it. As in
    the workers, atexit handlers do not run: the master's own cleanup is explicit.
    """
    with contextlib.suppress(Exception):
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
