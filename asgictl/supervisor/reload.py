"""Dev mode: ``--reload`` watches files in the master and rolls the workers onto new code.

This module owns everything ``--reload`` adds to the master:

* :class:`ChangeFilter` decides which changed paths matter (``--reload-include`` and
  ``--reload-exclude`` globs, uvicorn's defaults; VCS, cache and virtualenv folders never);
* :class:`Reloader` runs ``watchfiles.watch`` in a thread of the master. The thread only
  hands each batch of changes to the master's loop (``call_soon_threadsafe``); every
  decision (start a rolling reload, queue the next one, report) is taken in the loop,
  like every other decision of the master. Its ``stop()`` is bounded by a deadline;
* :class:`DevLogFilter` keeps a dev console to one line per reload: the routine
  lifecycle lines of the master and of every worker (which say the same thing N times)
  are dropped unless ``--log-level debug``; warnings and errors always pass;
* :data:`DEV_DEFAULTS`: the defaults dev mode changes (a short graceful deadline, so an
  open stream or WebSocket delays the old worker's exit by seconds, not half a minute).

The rolling restart itself is the master's (:meth:`Master.reload`): each new worker
takes over only once ready, and one that fails to boot (SyntaxError, ImportError, a
failing lifespan startup) aborts the reload, leaving the previous workers serving. Since
only one new worker boots at a time, a broken app prints its traceback once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import PurePath
from types import TracebackType
from typing import TYPE_CHECKING, Any

from asgictl.config import Config, ConfigError
from asgictl.logs import RESTATED, ROUTINE, marked, plural
from asgictl.supervisor.hooks import MasterHooks

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master

logger = logging.getLogger("asgictl.error")

#: uvicorn's defaults. ``*.py`` is always included; user globs are added to these.
DEFAULT_INCLUDES: tuple[str, ...] = ("*.py",)
DEFAULT_EXCLUDES: tuple[str, ...] = (".*", ".py[cod]", ".sw.*", "~*")
#: Folders whose contents never trigger a reload, whatever the globs say.
IGNORED_DIRS = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        "node_modules",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".idea",
        ".vscode",
    }
)
#: What ``--reload`` (and ``asgictl dev``) changes when the option is set nowhere else.
DEV_DEFAULTS: dict[str, Any] = {"timeout_graceful_shutdown": 3.0}
#: How long ``stop()`` waits for the watcher thread (the rust side checks its stop event
#: every ``step``, at most ``--reload-delay``).
STOP_DEADLINE = 3.0
#: watchfiles' longest grouping of a continuous stream of changes, in ms.
MAX_DEBOUNCE_MS = 1600
#: watchfiles' quiet period that ends a batch of changes (its default), in ms.
STEP_MS = 50

_GREEN = "\033[32m"
_RED = "\033[31m"
_BOLD = "\033[1m"
_RESET = "\033[0m"


# --------------------------------------------------------------------------- filtering


class ChangeFilter:
    """Whether a changed path triggers a reload: ``watchfiles``' ``watch_filter`` protocol.

    A path counts when its name (or, for a glob with a ``/``, its path) matches an
    include glob and neither its name nor any folder between the watched directory and
    it matches an exclude glob. An exclude naming an existing directory excludes
    everything under it. What the user names wins over the defaults: a path matched by a
    ``--reload-include`` glob is excluded only by the user's own ``--reload-exclude``
    globs (``--reload-include .env`` watches ``.env`` although the default ``.*``
    matches it), never by a default exclude. :data:`IGNORED_DIRS` always apply.
    """

    def __init__(
        self, dirs: Sequence[str], includes: Sequence[str] = (), excludes: Sequence[str] = ()
    ) -> None:
        self.dirs = [os.path.abspath(d) for d in dirs]
        self.includes = list(dict.fromkeys([*DEFAULT_INCLUDES, *includes]))
        self.user_includes = list(dict.fromkeys(includes))
        excluded = [p for p in DEFAULT_EXCLUDES if p not in includes]
        self.excludes = list(dict.fromkeys([*excluded, *excludes]))
        self.user_excludes = list(dict.fromkeys(excludes))
        # Exclude globs that name an existing directory: everything under it is excluded.
        self.excluded_dirs = {p: os.path.abspath(p) + os.sep for p in self.excludes if os.path.isdir(p)}

    def __call__(self, change: Any, path: str) -> bool:
        return self.matches(path)

    def matches(self, path: str) -> bool:
        path = os.path.abspath(path)
        folders = self._folders(path)
        if any(part in IGNORED_DIRS for part in folders):
            return False
        if any(self._match(path, pattern) for pattern in self.user_includes):
            return not self._excluded(path, folders, self.user_excludes)
        if not any(self._match(path, pattern) for pattern in self.includes):
            return False
        return not self._excluded(path, folders, self.excludes)

    def _excluded(self, path: str, folders: Sequence[str], excludes: Sequence[str]) -> bool:
        """Whether an exclude glob matches the path, its name or a folder on the way to it
        (a glob naming an existing directory excludes everything under it)."""
        for pattern in excludes:
            directory = self.excluded_dirs.get(pattern)
            if directory is not None and path.startswith(directory):
                return True
            if "/" not in pattern and any(_glob(part, pattern) for part in folders):
                return True
            if self._match(path, pattern):
                return True
        return False

    def _folders(self, path: str) -> list[str]:
        """The folder names between the watched directory holding ``path`` and it."""
        for root in self.dirs:
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return PurePath(os.path.relpath(path, root)).parts[:-1]  # type: ignore[return-value]
        return list(PurePath(path).parts[1:-1])

    @staticmethod
    def _match(path: str, pattern: str) -> bool:
        if "/" in pattern:
            return PurePath(path).match(pattern)
        return _glob(os.path.basename(path), pattern)


def _glob(name: str, pattern: str) -> bool:
    # Case-sensitive, as the file system is: "*.py" does not match "APP.PY" on Linux.
    return fnmatch.fnmatchcase(name, pattern)


def watched_dirs(config: Config) -> list[str]:
    """``--reload-dir`` values (default: the working directory), absolute, checked, deduplicated."""
    dirs = []
    for raw in config.reload_dirs or [os.getcwd()]:
        path = os.path.abspath(raw)
        if not os.path.isdir(path):
            raise ConfigError(f"--reload-dir: {raw!r} is not a directory")
        dirs.append(path)
    # A directory inside another is watched through it already (recursive watch).
    unique = []
    for path in sorted(set(dirs), key=len):
        if not any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in unique):
            unique.append(path)
    return unique


# --------------------------------------------------------------------------- logging

#: Where the frames of asgictl's own machinery live: a traceback of the user's broken
#: app starts below them (the import system and the event loop are not the news either).
_INTERNAL_PREFIXES = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
    "<frozen ",
)


class DevLogFilter(logging.Filter):
    """Keeps a dev console short: one story, told once.

    Installed on the ``asgictl.error`` logger in the master before any fork, so every
    worker inherits it. It drops the lines logged with the :data:`~asgictl.logs.ROUTINE`
    mark below WARNING (N workers would print the same startup story N times) and those
    with the :data:`~asgictl.logs.RESTATED` mark (errors the reload line says again);
    with ``--log-level debug`` they all pass. A traceback keeps only the app's frames
    (from the first frame outside asgictl, importlib and asyncio).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if marked(record, RESTATED) or (marked(record, ROUTINE) and record.levelno < logging.WARNING):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if record.exc_info and record.exc_info[2] is not None and not record.exc_text:
            kind, value, tb = record.exc_info
            record.exc_info = (kind, value, _user_frames(tb))
        return True


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    start = tb
    while start is not None:
        filename = start.tb_frame.f_code.co_filename
        if not filename.startswith(_INTERNAL_PREFIXES) and "uvloop" not in filename:
            return start
        start = start.tb_next
    # Only machinery (a SyntaxError: its own lines say where): no frames at all.
    return None


def _colors(config: Config) -> bool:
    if config.use_colors is not None:
        return config.use_colors
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        return False


# --------------------------------------------------------------------------- the watcher


class Reloader(MasterHooks):
    """Watches files in a thread; reloads the master's workers on a change.

    One reload at a time, and at most one per ``--reload-delay``: changes seen while a
    reload runs (or sooner than that after the last one started) are gathered and start
    the next reload as soon as allowed, so the workers always end up on the newest code
    and a save storm does not queue a reload per save.
    """

    def __init__(self, master: Master, config: Config) -> None:
        self.master = master
        self.config = config
        self.dirs = watched_dirs(config)
        self.filter = ChangeFilter(self.dirs, config.reload_includes, config.reload_excludes)
        self.colors = _colors(config)
        # Loop-side state (touched only in the master's loop).
        self.current: tuple[list[str], float] | None = None  # files, monotonic time seen
        self.pending: list[str] = []
        self.pending_since = 0.0
        self.last_begin = -1e9
        self._timer: threading.Timer | None = None
        # Thread side.
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        import watchfiles  # noqa: F401 - fail here, in the master, if it is missing

        self._thread = threading.Thread(target=self._watch, name="asgictl-reload", daemon=True)
        self._thread.start()
        logger.info(
            "Watching for changes in %s (include %s; exclude %s)",
            ", ".join(self.dirs),
            " ".join(self.filter.includes),
            " ".join(self.filter.excludes),
        )

    def stop(self, deadline: float = STOP_DEADLINE) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        thread = self._thread
        if thread is not None:
            thread.join(deadline)
            if thread.is_alive():  # daemon: it cannot keep the master alive
                logger.warning("The file watcher did not stop within %.1f s", deadline)

    def _watch(self) -> None:
        import watchfiles

        # step: watchfiles yields once no new change arrived for this long (an editor's
        # save is several events). It also polls at that period, so it is the latency
        # floor: kept short; --reload-delay spaces reloads apart instead (see _flush).
        step = max(min(int(self.config.reload_delay * 1000), STEP_MS), 5)
        try:
            for changes in watchfiles.watch(
                *self.dirs,
                watch_filter=self.filter,
                debounce=max(MAX_DEBOUNCE_MS, step),
                step=step,
                stop_event=self._stop,
                rust_timeout=1000,
                raise_interrupt=False,
            ):
                seen = time.monotonic()
                paths = sorted({path for _, path in changes})
                call = self.master.loop.call_soon_threadsafe
                call(lambda paths=paths, seen=seen: self.changed(paths, seen))
        except Exception:
            if not self._stop.is_set():
                logger.exception("The file watcher failed: --reload is off from now on")

    # ------------------------------------------------------------------ loop side

    def changed(self, paths: list[str], seen: float) -> None:
        """A batch of changes (in the master's loop)."""
        if self.master.stopping:
            return
        _invalidate_bytecode(paths)
        # Gathered first: a reload may be running, or --reload-delay not over yet; the
        # next reload then takes every file changed since.
        if not self.pending:
            self.pending_since = seen
        self.pending.extend(p for p in paths if p not in self.pending)
        self._flush()

    def _flush(self) -> None:
        """Start a reload of the pending changes, if none runs and --reload-delay is over."""
        master = self.master
        if not self.pending or master.stopping or self.current is not None or master.reloading is not None:
            return
        wait = self.last_begin + self.config.reload_delay - time.monotonic()
        if wait > 0:
            if self._timer is None or not self._timer.is_alive():
                self._timer = threading.Timer(wait, lambda: master.loop.call_soon_threadsafe(self._flush))
                self._timer.daemon = True
                self._timer.start()
            return
        paths, self.pending = self.pending, []
        self.last_begin = time.monotonic()
        if master.held:  # the app never booted: start it again rather than roll workers
            logger.info(self._paint(f"{self._describe(paths)} changed: starting the app again", _GREEN))
            master.resume()
            return
        self.current = (paths, self.pending_since)
        master.reload()
        if master.reloading is None:  # stopping: nothing started
            self.current = None

    def reloading(self, master: Master) -> None:
        """A rolling reload starts: ours, or one asked for otherwise (HUP, ``asgictl reload``)."""
        if self.current is None:
            self.current = ([], time.monotonic())

    def reloaded(self, master: Master) -> None:
        """The master's rolling reload ended, complete or aborted (in the master's loop)."""
        current, self.current = self.current, None
        if current is not None:
            self._report(*current)
        self._flush()

    def _report(self, paths: list[str], seen: float) -> None:
        master = self.master
        elapsed = time.monotonic() - seen
        ready = master.ready_workers(within_target=True)
        ok = bool(ready) and all(w.generation == master.generation for w in ready)
        what = f"{self._describe(paths)} changed" if paths else "reload requested"
        if ok:
            text = f"Reloaded in {elapsed:.2f} s: {what} ({plural(len(ready), 'worker')} on new code)"
            logger.info(self._paint(text, _GREEN))
        else:
            text = (
                f"Reload failed after {elapsed:.2f} s: {what}; the previous workers keep"
                " serving (error above). Save a fix to reload."
            )
            logger.error(self._paint(text, _RED))

    def _describe(self, paths: list[str]) -> str:
        names = [self._relative(p) for p in paths]
        if len(names) > 3:
            return f"{', '.join(names[:3])} and {len(names) - 3} more"
        return ", ".join(names)

    def _relative(self, path: str) -> str:
        for root in self.dirs:
            if path.startswith(root.rstrip(os.sep) + os.sep):
                return os.path.relpath(path, root)
        return path

    def _paint(self, text: str, color: str) -> str:
        return f"{_BOLD}{color}{text}{_RESET}" if self.colors else text


def _invalidate_bytecode(paths: list[str]) -> None:
    """Remove the cached bytecode of changed modules.

    Python trusts a ``.pyc`` whose recorded source mtime (whole seconds) and size match:
    an edit within the same second that keeps the size ("v1" -> "v2") would otherwise
    be served as the old code by the new workers.
    """
    for path in paths:
        if not path.endswith(".py"):
            continue
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            os.unlink(importlib.util.cache_from_source(path))


@contextlib.contextmanager
def reloading(master: Master) -> Iterator[Reloader | None]:
    """Watch files while the master runs (when ``--reload``); stop the watcher after."""
    config = master.config
    if not config.reload:
        yield None
        return
    reloader = Reloader(master, config)
    quiet = DevLogFilter()
    error_logger = logging.getLogger("asgictl.error")
    error_logger.addFilter(quiet)
    reloader.start()
    try:
        yield reloader
    finally:
        reloader.stop()
        error_logger.removeFilter(quiet)


__all__ = [
    "DEV_DEFAULTS",
    "ChangeFilter",
    "DevLogFilter",
    "Reloader",
    "reloading",
    "watched_dirs",
]
