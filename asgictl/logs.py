"""Logging setup for asgictl.

This module owns everything about how asgictl's log output looks and where it goes:

* the logger names the rest of the server logs to (``asgictl``, ``asgictl.error``, ``asgictl.access``)
  and the extra ``TRACE`` level (5);
* the formatters (:class:`DefaultFormatter` for server messages, :class:`AccessFormatter` for the
  one-line-per-request access log, :class:`JsonFormatter` for ``--log-format json``), usable
  from users' own log configs too; :func:`set_worker_id` names a supervised worker in JSON lines;
* the marks a line is logged with (``extra=ROUTINE``, ``RESTATED``, ``SERVING``) and
  :func:`marked`, so that filters never depend on a message's wording;
* :func:`configure_logging`, which applies either the built-in setup or a user's ``--log-config``
  file, then ``--log-level`` and ``--access-log``/``--no-access-log``;
* :func:`reopen_log_files`, which makes file handlers reopen their files after logrotate renamed them;
* :func:`plural`, the "1 worker" / "2 workers" of every message.

Other modules log to ``logging.getLogger("asgictl.error")`` (:data:`ERROR_LOGGER`) and
``logging.getLogger("asgictl.access")`` (:data:`ACCESS_LOGGER`) and import nothing else from
here but the marks, :func:`plural` and the access-line helpers.
"""

from __future__ import annotations

import json
import logging
import logging.config
import logging.handlers
import sys
import time
from collections.abc import Iterator, Mapping
from copy import copy
from types import MappingProxyType
from typing import Any, Literal, Protocol

__all__ = [
    "ACCESS_LOGGER",
    "ACCESS_MESSAGE",
    "ACCESS_MESSAGE_DISCONNECTED",
    "ERROR_LOGGER",
    "LOG_LEVELS",
    "MARK",
    "PARENT_LOGGER",
    "RESTATED",
    "ROUTINE",
    "SERVING",
    "TRACE_LEVEL",
    "AccessFormatter",
    "DefaultFormatter",
    "JsonFormatter",
    "LoggingOptions",
    "configure_logging",
    "marked",
    "plural",
    "reopen_log_files",
    "set_worker_id",
]

PARENT_LOGGER = "asgictl"
ERROR_LOGGER = "asgictl.error"
ACCESS_LOGGER = "asgictl.access"

TRACE_LEVEL = 5
# Registered at import time (not only in configure_logging) so a record logged at level 5 before
# logging is configured still shows "TRACE" rather than "Level 5".
logging.addLevelName(TRACE_LEVEL, "TRACE")

LOG_LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE_LEVEL,
}

# No %(asctime)s: under systemd/journald, docker or a process supervisor the collector timestamps
# each line already. Users who want a time add it with their own --log-config.
DEFAULT_FORMAT = "%(levelprefix)s %(message)s"
ACCESS_FORMAT = "%(levelprefix)s %(message)s"
# The message the server logs for each request, with args (client_addr, method, full_path,
# http_version, status_code, duration_ms). AccessFormatter recognises records by it. The
# second one is the same line for a request whose client left before the response ended.
ACCESS_MESSAGE = '%s - "%s %s HTTP/%s" %d %.1fms'
ACCESS_MESSAGE_DISCONNECTED = ACCESS_MESSAGE + " (client disconnected)"
_ACCESS_MESSAGES = (ACCESS_MESSAGE, ACCESS_MESSAGE_DISCONNECTED)


class LoggingOptions(Protocol):
    """The subset of the server config that :func:`configure_logging` reads."""

    log_config: str | None
    log_level: str
    access_log: bool
    use_colors: bool | None


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 worker"``, ``"2 workers"``: a count and its noun, for log lines and messages."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


# -- Marks: what a line is for ------------------------------------------------------------------------
# Set with ``extra=`` where a line is logged; a filter checks the mark, never the wording,
# so that rewording a line cannot silently change what a filter does with it.

#: The record attribute a mark is kept in.
MARK = "asgictl_mark"
#: A routine lifecycle line (a worker boots, is ready, exits as asked; the app starts):
#: dev mode (``--reload``) leaves it off the console unless ``--log-level debug``.
ROUTINE: Mapping[str, str] = MappingProxyType({MARK: "routine"})
#: An error that dev mode's one reload line says again, better: left off likewise.
RESTATED: Mapping[str, str] = MappingProxyType({MARK: "restated"})
#: "Asgictl running on URL": the server serves. A supervised worker drops its own, since
#: its master announces once every worker is ready (the line people and tests wait for).
SERVING: Mapping[str, str] = MappingProxyType({MARK: "serving"})


def marked(record: logging.LogRecord, mark: Mapping[str, str]) -> bool:
    """Whether ``record`` was logged with ``extra=mark``."""
    return getattr(record, MARK, None) == mark[MARK]


# -- ANSI styling ------------------------------------------------------------------------------------

_RESET = "\033[0m"
_BOLD = "\033[1m"
_BLUE = "\033[34m"
_CYAN = "\033[36m"
_GREEN = "\033[32m"
_YELLOW = "\033[33m"
_RED = "\033[31m"
_BRIGHT_RED = "\033[91m"
_BRIGHT_WHITE = "\033[97m"

_LEVEL_COLORS: dict[int, str] = {
    TRACE_LEVEL: _BLUE,
    logging.DEBUG: _CYAN,
    logging.INFO: _GREEN,
    logging.WARNING: _YELLOW,
    logging.ERROR: _RED,
    logging.CRITICAL: _BRIGHT_RED,
}

# Keyed by status class (status // 100).
_STATUS_COLORS: dict[int, str] = {
    1: _BRIGHT_WHITE,
    2: _GREEN,
    3: _YELLOW,
    4: _RED,
    5: _BRIGHT_RED,
}


def _style(text: str, code: str | None) -> str:
    return f"{code}{text}{_RESET}" if code else text


def _isatty(stream: Any) -> bool:
    # sys.stdout/sys.stderr can be None (pythonw, closed fds) or replaced by objects without isatty.
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# -- Formatters --------------------------------------------------------------------------------------


class _LevelPrefixFormatter(logging.Formatter):
    """Adds ``%(levelprefix)s``: the level name and a colon, padded to 9 characters, colored if wanted."""

    # Which standard stream decides use_colors=None ("auto"); the default handlers write there.
    _auto_color_stream: Literal["stdout", "stderr"] = "stderr"

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        use_colors: bool | None = None,
    ) -> None:
        if use_colors is None:
            use_colors = _isatty(getattr(sys, self._auto_color_stream, None))
        self.use_colors: bool = use_colors
        super().__init__(fmt=fmt if fmt is not None else DEFAULT_FORMAT, datefmt=datefmt, style=style)

    def _levelprefix(self, record: logging.LogRecord) -> str:
        # Pad before coloring so the escape codes do not count towards the width:
        # "INFO:" + 4 spaces, "CRITICAL:" + nothing.
        padding = " " * max(0, 8 - len(record.levelname))
        levelname = record.levelname
        if self.use_colors:
            levelname = _style(levelname, _LEVEL_COLORS.get(record.levelno))
        return f"{levelname}:{padding}"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Work on a copy: other handlers may format the same record with other formatters, and must
        # not see our (possibly colored) extra fields.
        record = copy(record)
        record.levelprefix = self._levelprefix(record)
        return super().formatMessage(record)


class DefaultFormatter(_LevelPrefixFormatter):
    """Formatter for server messages (``asgictl.error``); by default ``"INFO:     message"``.

    ``use_colors=None`` means: colors when stderr is a terminal.
    """

    _auto_color_stream = "stderr"


class AccessFormatter(_LevelPrefixFormatter):
    """Formatter for the access log (``asgictl.access``).

    With the default line the server logs each request as::

        logger.info('%s - "%s %s HTTP/%s" %d %.1fms',
                    client_addr, method, full_path, http_version, status_code, duration_ms)

    (``ACCESS_MESSAGE``, or ``ACCESS_MESSAGE_DISCONNECTED`` when the client left first);
    with ``--access-log-format`` the message is the formatted line and the fields come as
    ``record.access`` (see ``asgictl.protocols.access.AccessFields``).

    For such records this formatter sets ``%(client_addr)s``, ``%(request_line)s``,
    ``%(status_code)s`` and ``%(duration_ms)s`` for use in custom formats, and with colors on it
    bolds the request line and colors the status code by class in the default line. Any other
    record is formatted as-is, and the four fields are ``"-"`` (unless given via ``extra=``).

    ``use_colors=None`` means: colors when stdout is a terminal.
    """

    _auto_color_stream = "stdout"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record = copy(record)
        record.levelprefix = self._levelprefix(record)
        fields = access_fields(record)
        if fields is None:
            for name in ("client_addr", "request_line", "status_code", "duration_ms"):
                if not hasattr(record, name):
                    setattr(record, name, "-")
        else:
            client_addr, method, full_path, http_version, status, duration_ms, disconnected = fields
            request_line = f"{method} {full_path} HTTP/{http_version}"
            status_code = str(status)
            if self.use_colors:
                status_color = _STATUS_COLORS.get(status // 100)
                request_line = _style(request_line, _BOLD)
                status_code = _style(status_code, status_color)
                # Rebuild the message with the colored parts (same text as getMessage() otherwise),
                # but only for the server's own message: another 6-arg message keeps its text.
                if record.msg in _ACCESS_MESSAGES:
                    suffix = record.msg[len(ACCESS_MESSAGE) :]
                    record.message = (
                        f'{client_addr} - "{request_line}" {status_code} {duration_ms:.1f}ms{suffix}'
                    )
            record.client_addr = client_addr
            record.request_line = request_line
            record.status_code = status_code
            # Rounded like the message: "%(duration_ms)s" then prints "12.3", not "12.345678901".
            record.duration_ms = round(duration_ms, 1)
            record.disconnected = disconnected
        # Skip _LevelPrefixFormatter.formatMessage: the record is already copied and prefixed.
        return logging.Formatter.formatMessage(self, record)


def access_fields(record: logging.LogRecord) -> tuple[Any, Any, Any, Any, int, float, bool] | None:
    """``(client, method, path, http_version, status, duration_ms, disconnected)`` of an access
    line: from the six arguments of the default line, or from ``record.access`` (a
    formatted ``--access-log-format`` line); None for any other record."""
    args = record.args
    if type(args) is tuple and len(args) == 6:  # the default line: checked first, it is the common one
        client_addr, method, full_path, http_version, status_code, duration_ms = args
        try:
            status = int(status_code)  # type: ignore[call-overload]
            duration = float(duration_ms)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        disconnected = record.msg == ACCESS_MESSAGE_DISCONNECTED
        return client_addr, method, full_path, http_version, status, duration, disconnected
    given = record.__dict__.get("access")
    if isinstance(given, tuple) and len(given) == 7:
        return given  # type: ignore[return-value]
    return None


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line, for log collectors.

    Every line has ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and ``pid``;
    lines of a supervised worker add ``worker`` (its id, see :func:`set_worker_id`);
    access lines add ``client``, ``method``, ``path``, ``http_version``, ``status``,
    ``duration_ms`` (to 0.1 ms) and ``disconnected`` (the client left before the
    response was complete), whatever ``--access-log-format`` makes of the message; a logged
    exception adds ``exc_info`` (the traceback as text).
    """

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if _worker_id is not None:
            data["worker"] = _worker_id
        if record.msg in _ACCESS_MESSAGES or hasattr(record, "access"):
            fields = access_fields(record)
            if fields is not None:
                client, method, path, version, status, duration, disconnected = fields
                data.update(
                    client=client,
                    method=method,
                    path=path,
                    http_version=version,
                    status=status,
                    duration_ms=round(duration, 1),
                    disconnected=disconnected,
                )
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


#: The id of the supervised worker this process is (None in a master or under ``serve``).
_worker_id: int | None = None


def set_worker_id(worker_id: int | None) -> None:
    """Name the worker in every JSON log line of this process (called once after fork)."""
    global _worker_id
    _worker_id = worker_id


# -- Configuration -----------------------------------------------------------------------------------


def _set_handlers(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    # Replace rather than append, so calling configure_logging() twice does not double every line.
    for old in logger.handlers[:]:
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        logger.addHandler(handler)


def _configure_defaults(use_colors: bool | None, log_format: str = "text") -> None:
    # Built by hand rather than through dictConfig(): dictConfig() closes every handler in the
    # process, which would break an application that set up its own logging before embedding us.
    error_handler = logging.StreamHandler(sys.stderr)
    access_handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        error_handler.setFormatter(JsonFormatter())
        access_handler.setFormatter(JsonFormatter())
    else:
        error_handler.setFormatter(DefaultFormatter(DEFAULT_FORMAT, use_colors=use_colors))
        access_handler.setFormatter(AccessFormatter(ACCESS_FORMAT, use_colors=use_colors))

    # The stderr handler sits on the parent, so "asgictl.error" and any other "asgictl.*" module
    # logger reach it; nothing goes on to the root logger (the app's own logging stays separate).
    parent = logging.getLogger(PARENT_LOGGER)
    _set_handlers(parent, [error_handler])
    parent.propagate = False

    error = logging.getLogger(ERROR_LOGGER)
    _set_handlers(error, [])
    error.propagate = True

    access = logging.getLogger(ACCESS_LOGGER)
    _set_handlers(access, [access_handler])
    access.propagate = False


def _one_line(exc: BaseException) -> str:
    # YAML and configparser errors span several lines; the CLI prints a single line.
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_log_config(path: str) -> None:
    if path.endswith((".yaml", ".yml")):
        # PyYAML is optional: import it only when a YAML config is actually used.
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"--log-config: PyYAML is not installed (needed for {path!r}); "
                "install it or use a .json or .ini log config"
            ) from None
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as file:
                loaded = json.load(file)
        elif path.endswith((".yaml", ".yml")):
            with open(path, encoding="utf-8") as file:
                loaded = yaml.safe_load(file)
        else:
            # fileConfig() on Python < 3.12 silently ignores a missing file and then fails with an
            # obscure KeyError; open it ourselves for a clear error.
            with open(path, encoding="utf-8") as file:
                logging.config.fileConfig(file, disable_existing_loggers=False)
            return
        if not isinstance(loaded, dict):
            raise TypeError(f"expected a mapping at the top level, got {type(loaded).__name__}")
        # Unless the file says otherwise, keep loggers created before this point (other modules
        # create theirs at import time) working.
        loaded.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(loaded)
    except Exception as exc:
        # Anything can come out of a user's config (OSError, JSON/YAML/configparser errors, and the
        # ValueError/TypeError/ImportError dictConfig raises for bad handler classes or arguments).
        raise ValueError(f"--log-config: cannot load {path!r}: {_one_line(exc)}") from exc


def configure_logging(config: LoggingOptions) -> None:
    """Set up asgictl's loggers from the server config.

    Raises ``ValueError`` with a one-line message starting with ``"--log-config: "`` (or
    ``"--log-level: "``) if the configuration cannot be applied.
    """
    logging.addLevelName(TRACE_LEVEL, "TRACE")

    level = LOG_LEVELS.get(str(config.log_level).lower())
    if level is None:
        raise ValueError(
            f"--log-level: unknown level {config.log_level!r}; expected one of {', '.join(LOG_LEVELS)}"
        )

    if config.log_config:
        _load_log_config(config.log_config)
        if config.use_colors is not None:
            # An explicit --use-colors/--no-use-colors also reaches our formatters in the user's
            # config; INI files have no way to pass use_colors to a formatter themselves.
            for handler in _all_handlers():
                if isinstance(handler.formatter, _LevelPrefixFormatter):
                    handler.formatter.use_colors = config.use_colors
    else:
        # getattr: LoggingOptions predates --log-format; older option objects lack it.
        _configure_defaults(config.use_colors, getattr(config, "log_format", "text"))

    # Applied after --log-config, like uvicorn: --log-level wins over levels set in the file.
    for name in (PARENT_LOGGER, ERROR_LOGGER, ACCESS_LOGGER):
        logging.getLogger(name).setLevel(level)

    if not config.access_log:
        access = logging.getLogger(ACCESS_LOGGER)
        _set_handlers(access, [])
        access.propagate = False
        # Without handlers, logging's "last resort" handler would still print WARNING+ records to
        # stderr; a level above CRITICAL silences the logger and makes isEnabledFor() a cheap False.
        access.setLevel(logging.CRITICAL + 1)


# -- Log file reopening ------------------------------------------------------------------------------


def _all_handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    loggers: list[logging.Logger] = [logging.getLogger()]
    # Snapshot the dict: another thread may create loggers while we iterate.
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):  # skip PlaceHolder entries
            loggers.append(logger)
    for logger in loggers:
        for handler in list(logger.handlers):
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def reopen_log_files() -> None:
    """Reopen the file of every ``logging.FileHandler`` attached to any logger.

    After logrotate renames ``server.log`` to ``server.log.1``, handlers keep writing to the renamed
    file through their open descriptor; reopening makes them create ``server.log`` again.
    Call it from the event loop (``loop.add_signal_handler``), not from a raw signal handler, so
    it never runs in the middle of another log call on the same thread.
    """
    failures: list[str] = []
    for handler in _all_handlers():
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            # Close just the stream, not the handler: Handler.close() would mark the handler closed
            # and unregister its name for good.
            stream, handler.stream = handler.stream, None  # type: ignore[assignment]
            if stream is None:
                # delay=True and nothing logged yet: it opens the original path on first use anyway.
                continue
            try:
                try:
                    stream.flush()
                finally:
                    stream.close()
            except OSError as exc:
                # Lines lost to e.g. a full disk must not keep us from reopening.
                failures.append(f"{handler.baseFilename}: closing: {exc}")
            try:
                handler.stream = handler._open()
            except OSError as exc:
                # Leave stream None: FileHandler.emit() retries opening on the next record.
                failures.append(f"{handler.baseFilename}: {exc}")
                continue
            if isinstance(handler, logging.handlers.WatchedFileHandler):
                # Refresh its remembered dev/inode, or it would reopen the file again on next emit.
                handler._statstream()
        finally:
            handler.release()
    if failures:
        # Logged after all locks are released; a handler that failed to reopen reports via handleError.
        logging.getLogger(ERROR_LOGGER).warning("Could not reopen log files: %s", "; ".join(failures))
