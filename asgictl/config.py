"""Every option asgictl understands, defined once.

Each :class:`Option` names its type, default, help text and the commands that accept it.
From this one table come the typer command line (``cli.py``), the ``ASGICTL_<NAME>``
environment variables (plus uvicorn's ``WEB_CONCURRENCY`` and ``FORWARDED_ALLOW_IPS``),
the TOML configuration (``--config FILE`` or ``[tool.asgictl]`` in ``./pyproject.toml``)
and the keyword arguments of the Python :class:`Config`.

Precedence, highest first: command line, environment, configuration file, default.
A value that does not parse raises :class:`ConfigError` with one line naming the option.

This module imports nothing else of asgictl: every other layer reads it.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A bad option value or configuration file: its message is one line for the user."""


# --------------------------------------------------------------------------- converters
# Each converter takes what a user wrote (a string from the command line, the environment
# or a TOML string) or a typed value (TOML, the Python API) and returns the typed value,
# or raises ValueError with a short reason.

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def to_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not an integer")
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip(), 10)
    except ValueError:
        raise ValueError(f"{raw!r} is not an integer") from None


def to_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{raw!r} is not a number")
    if isinstance(raw, (int, float)):
        return float(raw)
    try:
        return float(str(raw).strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None


def to_str(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, os.PathLike):
        return os.fspath(raw)  # type: ignore[return-value]
    raise ValueError(f"{raw!r} is not a string")


# What --help shows for a value of each converter (click's names for the types).
to_int.metavar = "INTEGER"  # type: ignore[attr-defined]
to_float.metavar = "FLOAT"  # type: ignore[attr-defined]
to_str.metavar = "TEXT"  # type: ignore[attr-defined]


def non_negative(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(raw: Any) -> Any:
        value = convert(raw)
        if value < 0:
            raise ValueError(f"{value!r} must not be negative")
        return value

    check.metavar = getattr(convert, "metavar", None)  # type: ignore[attr-defined]
    return check


def positive(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(raw: Any) -> Any:
        value = convert(raw)
        if value <= 0:
            raise ValueError(f"{value!r} must be greater than zero")
        return value

    check.metavar = getattr(convert, "metavar", None)  # type: ignore[attr-defined]
    return check


def port_number(raw: Any) -> int:
    value = to_int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return value


port_number.metavar = "INTEGER"  # type: ignore[attr-defined]


def file_mode(raw: Any) -> int:
    """A Unix permission mode: an int, or an octal string such as ``660`` or ``0o660``."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        text = to_str(raw).strip().lower().removeprefix("0o")
        try:
            value = int(text, 8)
        except ValueError:
            raise ValueError(f"{raw!r} is not an octal file mode such as 660") from None
    if not 0 <= value <= 0o7777:
        raise ValueError(f"{raw!r} is not a file mode")
    return value


file_mode.metavar = "OCTAL"  # type: ignore[attr-defined]


def existing_file(raw: Any) -> str:
    path = to_str(raw)
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a readable file")
    return path


existing_file.metavar = "PATH"  # type: ignore[attr-defined]


def header_pair(raw: Any) -> tuple[str, str]:
    """``Name:Value`` as the ``--header`` option takes it (a pair is accepted too)."""
    if isinstance(raw, (tuple, list)) and len(raw) == 2:
        name, value = (to_str(part) for part in raw)
    else:
        name, sep, value = to_str(raw).partition(":")
        if not sep:
            raise ValueError(f"{raw!r} is not of the form Name:Value")
    name, value = name.strip(), value.strip()
    # A value holds no control byte but HTAB (RFC 9110 5.5): the server writes it as is.
    bad_value = any((c < " " and c != "\t") or c == "\x7f" for c in value)
    if not name or any(c in name for c in " \t\r\n:") or bad_value:
        raise ValueError(f"{raw!r} is not a valid header")
    return name, value


def choice(*choices: str) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        value = to_str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return value

    check.choices = choices  # type: ignore[attr-defined]
    return check


def pubsub_backend(raw: Any) -> str:
    """``--pubsub``: auto, local, master, or a Redis URL (redis://, rediss://, unix://)."""
    value = to_str(raw).strip()
    if value.lower() in ("auto", "local", "master"):
        return value.lower()
    if value.startswith(("redis://", "rediss://", "unix://")) and len(value) > len("unix://"):
        return value
    raise ValueError(f"{raw!r} is not auto, local, master or a redis://HOST:PORT/DB URL")


# ------------------------------------------------------------------------------ options

SERVE = "serve"
START = "start"
WORKER_COMMANDS = frozenset({SERVE, START})
#: The commands that talk to a running master over its control socket (no APP).
CONTROL_COMMANDS = frozenset({"status", "reload", "scale", "stop"})


@dataclass(frozen=True)
class Option:
    """One setting: how to parse it, where it may come from, and what it means."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    #: The value is a list; on the command line the option is repeatable, in the
    #: environment it is comma separated, in TOML it is an array.
    multiple: bool = False
    #: A ``--x/--no-x`` switch on the command line.
    flag: bool = False
    #: Command-line spellings besides ``--<name-with-dashes>``.
    aliases: tuple[str, ...] = ()
    #: Environment variables read besides ``ASGICTL_<NAME>``, lowest priority last.
    env_aliases: tuple[str, ...] = ()
    #: What --help shows for the value when the type's name (INTEGER, FLOAT, PATH,
    #: [a|b] for choices...) says less than a shape would (HOST:PORT, NAME:VALUE).
    metavar: str | None = None
    commands: frozenset[str] = WORKER_COMMANDS
    #: Not stored in TOML files (the --config option itself, for one).
    file: bool = True
    #: The help under the control commands (status, reload...), where the option names
    #: what to read rather than what to create; None: the same help everywhere.
    control_help: str | None = None

    @property
    def cli_name(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_names(self) -> tuple[str, ...]:
        return ("ASGICTL_" + self.name.upper(), *self.env_aliases)

    @property
    def choices(self) -> tuple[str, ...] | None:
        return getattr(self.convert, "choices", None)

    @property
    def value_name(self) -> str:
        """The value's name in --help: the metavar, ``[a|b|c]`` for choices, else the type."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "[" + "|".join(self.choices) + "]"
        return getattr(self.convert, "metavar", None) or "TEXT"

    def help_for(self, command: str) -> str:
        return self.control_help if self.control_help and command in CONTROL_COMMANDS else self.help

    def parse(self, raw: Any, source: str | None = None) -> Any:
        """Convert ``raw`` or raise ConfigError naming the option and the source."""
        where = f" (from {source})" if source else ""
        try:
            if raw is None:
                return None
            if self.multiple:
                if isinstance(raw, str):
                    items: Iterable[Any] = [p for p in raw.split(",") if p.strip()]
                elif isinstance(raw, (list, tuple)):
                    items = raw
                else:
                    raise ValueError(f"{raw!r} is not a list")
                return [self.convert(item) for item in items]
            return self.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.cli_name}{where}: {exc}") from None


def _opt(name: str, convert: Callable[[Any], Any], default: Any, help: str, **kw: Any) -> Option:
    return Option(name, convert, default, help, **kw)


OPTIONS: tuple[Option, ...] = (
    # -- the application
    _opt(
        "factory",
        to_bool,
        False,
        "Treat APP as an application factory: a () -> ASGI app callable.",
        flag=True,
    ),
    _opt(
        "app_dir",
        to_str,
        "",
        "Look for APP in this directory (added to sys.path). Default: the working directory.",
        metavar="PATH",
    ),
    _opt(
        "interface",
        choice("auto", "asgi3", "asgi2", "wsgi"),
        "auto",
        "Application interface. auto detects ASGI3, ASGI2 or WSGI.",
    ),
    # -- WSGI applications (gunicorn's --threads name and meaning)
    _opt(
        "threads",
        positive(to_int),
        8,
        "WSGI: threads per worker that run the app, so at most this many requests run it at "
        "once. Threads suit views that wait on a database or a service; CPU-bound apps "
        "gain nothing past a few (the GIL).",
    ),
    _opt(
        "wsgi_queue",
        non_negative(to_int),
        256,
        "WSGI: requests that may wait for a free thread; one more is answered 503 at once "
        "instead of waiting without bound.",
    ),
    _opt(
        "wsgi_inline",
        to_bool,
        False,
        "WSGI: run the app on the worker's event loop thread instead of a --threads thread "
        "(requests whose body is not all received yet still use the threads). No "
        "hand-off between threads, so the fastest for an app that never waits; but while "
        "the app runs nothing else in the worker runs: a view that waits on a database, "
        "a file or another service stalls every connection of the worker, and one that "
        "takes longer than --timeout gets the worker killed.",
        flag=True,
    ),
    _opt(
        "lifespan",
        choice("auto", "on", "off"),
        "auto",
        "Lifespan protocol: auto runs it if the app supports it.",
    ),
    _opt(
        "env_file",
        existing_file,
        None,
        "Load environment variables from this dotenv file (read by python-dotenv, as uvicorn does;"
        " ${VAR} expands; variables already set win) before starting.",
        metavar="PATH",
    ),
    # -- binding
    _opt(
        "host",
        to_str,
        "127.0.0.1",
        "Bind a TCP socket to this host (IPv4 or IPv6 address, or name).",
        metavar="HOST",
    ),
    _opt("port", port_number, 8000, "Bind to this TCP port. 0 picks a free port."),
    _opt(
        "uds",
        to_str,
        None,
        "Bind to a Unix domain socket at this path (a stale socket file is replaced).",
        metavar="PATH",
    ),
    _opt(
        "uds_mode",
        file_mode,
        None,
        "Permission bits of the --uds socket file, in octal (e.g. 660).",
    ),
    _opt(
        "fd",
        non_negative(to_int),
        None,
        "Serve on an already listening socket inherited as this file descriptor.",
    ),
    _opt("backlog", positive(to_int), 2048, "Maximum number of pending connections in the listen queue."),
    # -- protocols
    _opt(
        "loop", choice("auto", "asyncio", "uvloop"), "auto", "Event loop implementation. auto prefers uvloop."
    ),
    _opt(
        "http",
        choice("auto", "h1c", "httptools", "h11"),
        "auto",
        "HTTP/1.1 parser. auto prefers h1c (gunicorn_h1c), then httptools.",
    ),
    _opt(
        "http2",
        to_bool,
        True,
        "Serve HTTP/2: to TLS clients that choose it by ALPN, and on cleartext connections that"
        " start with the HTTP/2 preface (prior knowledge).",
        flag=True,
    ),
    _opt(
        "http2_engine",
        choice("auto", "h2", "zttp"),
        "auto",
        "HTTP/2 framing engine: h2 (python-hyper, the reference; what auto picks) or zttp (Zig,"
        " measured, not conformant yet: see the README).",
    ),
    _opt(
        "h2c_upgrade",
        to_bool,
        False,
        "Accept 'Upgrade: h2c' (RFC 7540 3.2): answer 101 and serve the request as stream 1 of"
        " HTTP/2. Off: such a request is plain HTTP/1.1.",
        flag=True,
    ),
    _opt(
        "http2_max_concurrent_streams",
        positive(to_int),
        100,
        "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have open; more are"
        " refused (REFUSED_STREAM).",
    ),
    # -- WebSocket (same names and defaults as uvicorn's)
    _opt(
        "ws",
        choice("auto", "none", "websockets", "wsproto"),
        "auto",
        "WebSocket implementation. auto prefers websockets (sans-IO); none answers upgrades as plain HTTP.",
    ),
    _opt(
        "ws_max_size",
        positive(to_int),
        16 * 1024 * 1024,
        "Largest WebSocket message accepted, in bytes; a larger one closes the connection with 1009.",
    ),
    _opt(
        "ws_max_queue",
        positive(to_int),
        32,
        "WebSocket messages queued for the app before the server stops reading from the client.",
    ),
    _opt(
        "ws_ping_interval",
        non_negative(to_float),
        20.0,
        "Send a WebSocket ping every this many seconds (0 disables keepalive pings).",
    ),
    _opt(
        "ws_ping_timeout",
        non_negative(to_float),
        20.0,
        "Close a WebSocket whose pong has not come back within this many seconds.",
    ),
    _opt(
        "ws_per_message_deflate",
        to_bool,
        True,
        "Offer the permessage-deflate WebSocket extension.",
        flag=True,
    ),
    _opt(
        "h11_max_incomplete_event_size",
        positive(to_int),
        16 * 1024,
        "For h11, the maximum number of bytes to buffer of an incomplete event.",
    ),
    _opt(
        "timeout_keep_alive",
        non_negative(to_float),
        5.0,
        "Close keep-alive connections idle for this many seconds.",
    ),
    _opt(
        "timeout_graceful_shutdown",
        non_negative(to_float),
        30.0,
        "Seconds to wait for in-flight requests on shutdown before closing them.",
    ),
    _opt(
        "limit_concurrency",
        positive(to_int),
        None,
        "Answer 503 past this many concurrent connections or requests.",
    ),
    _opt(
        "limit_max_requests",
        positive(to_int),
        None,
        "Stop the worker gracefully after serving this many requests (under start: the master"
        " recycles it, a replacement taking over first).",
    ),
    _opt(
        "root_path", to_str, "", "The ASGI root_path, for an app mounted below a URL prefix.", metavar="TEXT"
    ),
    # -- request limits and read deadlines (answers: 414, 431, 413, 408)
    _opt(
        "limit_request_line",
        positive(to_int),
        8190,
        "Longest request line (method, target, version) in bytes; longer gets 414.",
    ),
    _opt("limit_request_fields", positive(to_int), 100, "Most header fields in a request; more gets 431."),
    _opt(
        "limit_request_field_size",
        positive(to_int),
        8190,
        "Longest header field (name and value) in bytes; longer gets 431.",
    ),
    _opt(
        "limit_request_body",
        positive(to_int),
        None,
        "Largest request body in bytes, chunked or not; larger gets 413 (the excess is not read).",
    ),
    _opt(
        "timeout_header_read",
        positive(to_float),
        10.0,
        "Seconds a client has to send a complete request head, for every request (slowloris).",
    ),
    _opt(
        "timeout_body_read",
        positive(to_float),
        30.0,
        "Seconds the server waits for the next piece of a request body before closing.",
    ),
    _opt(
        "timeout_send",
        non_negative(to_float),
        60.0,
        "Close a connection whose client has taken none of the response bytes waiting for it"
        " for this many seconds (a client that stopped reading; nginx's send_timeout). 0: never.",
    ),
    _opt(
        "proxy_headers",
        to_bool,
        True,
        "Use X-Forwarded-For and X-Forwarded-Proto from trusted peers for the client address and scheme.",
        flag=True,
    ),
    _opt(
        "forwarded_allow_ips",
        to_str,
        "127.0.0.1,::1",
        "Comma separated IPs, CIDR networks or literals (a UDS path) trusted with proxy headers;"
        " '*' trusts all.",
        env_aliases=("FORWARDED_ALLOW_IPS",),
        metavar="IPS",
    ),
    _opt(
        "proxy_protocol",
        choice("off", "v1", "v2", "auto"),
        "off",
        "Read a PROXY protocol header (HAProxy's v1 text or v2 binary) at the start of each"
        " connection from a peer in --forwarded-allow-ips: the client and server addresses come"
        " from it. v1 or v2: the header is required; auto: either version, or none. A header"
        " from an untrusted peer, or a missing or malformed one where required, gets 400.",
    ),
    _opt("server_header", to_bool, True, "Send a default Server header.", flag=True),
    _opt("date_header", to_bool, True, "Send a default Date header.", flag=True),
    _opt(
        "headers",
        header_pair,
        [],
        "A default response header Name:Value (repeatable).",
        multiple=True,
        aliases=("--header",),
        metavar="NAME:VALUE",
    ),
    # -- TLS
    _opt("ssl_keyfile", existing_file, None, "TLS private key file.", metavar="PATH"),
    _opt("ssl_certfile", existing_file, None, "TLS certificate (chain) file.", metavar="PATH"),
    _opt("ssl_keyfile_password", to_str, None, "Password of the TLS private key.", metavar="TEXT"),
    _opt(
        "ssl_version",
        to_int,
        int(ssl.PROTOCOL_TLS_SERVER),
        "TLS protocol (the stdlib ssl module's PROTOCOL_* number).",
    ),
    _opt(
        "ssl_cert_reqs",
        choice("0", "1", "2"),
        "0",
        "Client certificates: 0 none, 1 optional, 2 required (ssl.CERT_*).",
    ),
    _opt("ssl_ca_certs", existing_file, None, "CA certificates file to verify clients with.", metavar="PATH"),
    _opt(
        "ssl_ciphers", to_str, None, "TLS ciphers (OpenSSL cipher list). Default: OpenSSL's.", metavar="TEXT"
    ),
    # -- logging
    _opt(
        "log_config",
        existing_file,
        None,
        "Logging configuration file: .json, .yaml/.yml (PyYAML) or .ini.",
        metavar="PATH",
    ),
    _opt("log_level", choice("critical", "error", "warning", "info", "debug", "trace"), "info", "Log level."),
    _opt("access_log", to_bool, True, "Log one line per request.", flag=True),
    _opt(
        "access_log_format",
        to_str,
        None,
        "Access line format in gunicorn's atoms, e.g. '%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s"
        ' "%(f)s" "%(a)s"\' (atoms h l u t r m U q H s B b f a T M D L p X, {header}i,'
        " {header}o, {variable}e). Default: asgictl's line, 'CLIENT - \"REQUEST\" STATUS 0.3ms'.",
        metavar="FORMAT",
    ),
    _opt(
        "use_colors",
        to_bool,
        None,
        "Colored log output. Default: when the log goes to a terminal.",
        flag=True,
    ),
    _opt(
        "log_format",
        choice("text", "json"),
        "text",
        "Log line format: text, or json (one object per line, with the worker id under start).",
    ),
    # -- the supervisor (asgictl start)
    _opt(
        "workers",
        positive(to_int),
        1,
        "Number of worker processes. Default: $WEB_CONCURRENCY, else 1.",
        env_aliases=("WEB_CONCURRENCY",),
        commands=frozenset({START}),
    ),
    _opt(
        "bind",
        to_str,
        [],
        "A listener: tcp://HOST:PORT, unix:///PATH or fd://N (repeatable; replaces --host/--port).",
        multiple=True,
        metavar="URL",
        commands=frozenset({START}),
    ),
    _opt(
        "timeout",
        positive(to_float),
        30.0,
        "Kill (after dumping its stacks) a worker whose event loop has not beaten for this many seconds.",
        commands=frozenset({START}),
    ),
    _opt(
        "max_requests_jitter",
        non_negative(to_int),
        0,
        "Add a random 0..N to --limit-max-requests per worker, so workers do not recycle together.",
        aliases=("--limit-max-requests-jitter",),
        commands=frozenset({START}),
    ),
    _opt(
        "max_worker_memory",
        positive(to_float),
        None,
        "Recycle a worker whose RSS exceeds this many MB (sampled with psutil).",
        commands=frozenset({START}),
    ),
    _opt(
        "max_worker_lifetime",
        positive(to_float),
        None,
        "Recycle a worker after this many seconds (plus up to 10% jitter).",
        commands=frozenset({START}),
    ),
    _opt(
        "balance",
        choice("reuseport", "shared"),
        "reuseport",
        "How new TCP connections are spread over the workers. reuseport: each worker has its"
        " own SO_REUSEPORT socket on the port and the kernel hands each connection to a random"
        " ready worker (an even spread whatever the load; a worker busy with a long CPU-bound"
        " request delays the connections it was given). shared: one socket every worker"
        " accepts from (the first free worker takes it). Unix sockets, --fd and systemd's"
        " sockets are always shared; reuseport needs Linux.",
        commands=frozenset({START}),
    ),
    _opt(
        "preload",
        to_bool,
        False,
        "Import the app once in the master before forking (workers share it copy-on-write).",
        flag=True,
        commands=frozenset({START}),
    ),
    _opt(
        "pid_file",
        to_str,
        None,
        "The master's PID file: start writes it (atomically; removed on exit) and puts the control"
        " socket beside it (app.pid: app.ctl); status|reload|scale|stop read the PID there to find"
        " the master.",
        metavar="PATH",
        commands=frozenset({START}) | CONTROL_COMMANDS,
        control_help="Where to read the master's PID: the --pid-file the master was started with;"
        " its control socket is found next to it (app.pid: app.ctl).",
    ),
    _opt(
        "control_socket",
        to_str,
        None,
        "The master's control socket (Unix, mode 0600) for asgictl status|reload|scale|stop."
        " Default: beside --pid-file, else $XDG_RUNTIME_DIR/asgictl/PID.ctl (without"
        " XDG_RUNTIME_DIR: /tmp/asgictl-UID/PID.ctl), where the control commands find every master.",
        metavar="PATH",
        commands=frozenset({START}) | CONTROL_COMMANDS,
    ),
    _opt(
        "metrics_bind",
        to_str,
        None,
        "Serve Prometheus metrics (per worker) at http://HOST:PORT/metrics from the master. Default: off.",
        metavar="HOST:PORT",
        commands=frozenset({START}),
    ),
    _opt(
        "timeout_worker_boot",
        positive(to_float),
        60.0,
        "Kill a worker that is not serving this many seconds after it was forked.",
        commands=frozenset({START}),
    ),
    # -- dev mode (asgictl start --reload, asgictl dev): same names and defaults as uvicorn's
    _opt(
        "reload",
        to_bool,
        False,
        "Watch files and roll the workers onto new code when they change (dev mode; shortens"
        " --timeout-graceful-shutdown to 3 s unless set).",
        flag=True,
        commands=frozenset({START}),
    ),
    _opt(
        "reload_dirs",
        to_str,
        [],
        "With --reload, watch this directory (repeatable). Default: the working directory.",
        multiple=True,
        aliases=("--reload-dir",),
        metavar="PATH",
        commands=frozenset({START}),
    ),
    _opt(
        "reload_includes",
        to_str,
        [],
        "With --reload, also watch files matching this glob (repeatable; *.py always is).",
        multiple=True,
        aliases=("--reload-include",),
        metavar="GLOB",
        commands=frozenset({START}),
    ),
    _opt(
        "reload_excludes",
        to_str,
        [],
        "With --reload, ignore files or folders matching this glob (repeatable; besides the"
        " defaults .* .py[cod] .sw.* ~*).",
        multiple=True,
        aliases=("--reload-exclude",),
        metavar="GLOB",
        commands=frozenset({START}),
    ),
    _opt(
        "reload_delay",
        non_negative(to_float),
        0.25,
        "With --reload, start reloads at least this many seconds apart; changes in between are"
        " batched into the next reload (debounce).",
        commands=frozenset({START}),
    ),
    # -- pub/sub (asgictl.pubsub)
    _opt(
        "pubsub",
        pubsub_backend,
        "auto",
        "Pub/sub backend of asgictl.pubsub: local (this process), master (the master relays between"
        " workers; auto picks it under start, local under serve) or redis://HOST:PORT/DB (many hosts).",
        metavar="[auto|local|master|redis://...]",
    ),
    _opt(
        "pubsub_max_queue",
        positive(to_int),
        1024,
        "Pub/sub messages queued per subscriber; past it, that subscriber gets an Overflow error.",
    ),
    # -- the configuration file itself
    _opt(
        "config",
        existing_file,
        None,
        "Read options from this TOML file (top-level keys or [tool.asgictl]).",
        metavar="PATH",
        file=False,
    ),
)

BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


def options_for(command: str) -> list[Option]:
    return [opt for opt in OPTIONS if command in opt.commands]


# ------------------------------------------------------------------------------ sources


def read_env_file(path: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a dotenv file, read by python-dotenv as uvicorn's ``--env-file`` is.

    Every form python-dotenv knows (``export``, single, double and unquoted values, escapes
    in double quotes, multi-line quoted values, comments, UTF-8 text) gives what it gives
    under uvicorn, and ``${VAR}`` / ``${VAR:-default}`` expand as ``load_dotenv()`` expands
    them: from ``environ`` (default ``os.environ``: variables already set win) or from the
    file's earlier lines. A line dotenv cannot parse is skipped with dotenv's warning; a
    key without ``=`` has no value and sets nothing.
    """
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    raw = dotenv_values(path, interpolate=False, encoding="utf-8")
    values: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        # load_dotenv(override=False) semantics: the environment beats earlier file values.
        values[key] = _expand(value, {**values, **environ})
    return values


_applied_env_files: set[str] = set()


def apply_env_file(path: str, environ: Any = None) -> None:
    """Set the file's variables in ``environ`` (default ``os.environ``) unless already set,
    as ``load_dotenv()`` does; once per file and process (a second call, from the app
    loader after the command line applied it, repeats neither the work nor its warnings)."""
    environ = os.environ if environ is None else environ
    key = os.path.abspath(path)
    if environ is os.environ and key in _applied_env_files:
        return
    for name, value in read_env_file(path, environ).items():
        environ.setdefault(name, value)
    if environ is os.environ:
        _applied_env_files.add(key)


def _expand(value: str, known: Mapping[str, str]) -> str:
    from dotenv.variables import parse_variables

    return "".join(atom.resolve(known) for atom in parse_variables(value))  # type: ignore[arg-type]


def read_config_file(path: str, *, pyproject: bool = False) -> dict[str, Any]:
    """Options from a TOML file: ``[tool.asgictl]`` if present, else the top level.

    In a pyproject.toml only ``[tool.asgictl]`` counts.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    section = data.get("tool", {}).get("asgictl")
    if section is None:
        section = {} if pyproject else data
    if not isinstance(section, dict):
        raise ConfigError(f"--config: {path}: [tool.asgictl] is not a table")
    values: dict[str, Any] = {}
    for key, value in section.items():
        name = key.replace("-", "_")
        opt = BY_NAME.get(name) or (BY_NAME["headers"] if name == "header" else None)
        if name == "app":
            values["app"] = value
            continue
        if opt is None or not opt.file:
            raise ConfigError(f"--config: {path}: unknown option {key!r}")
        values[opt.name] = opt.parse(value, source=path)
    return values


# ------------------------------------------------------------------------------ Config


class Config:
    """The resolved settings of a server: one attribute per option of :data:`OPTIONS`
    (same name, typed value, the option's default when not given), plus ``app``.

    ``Config(app, port=0, http="h11")`` is the Python API (as uvicorn's); the command line,
    the environment and configuration files build one through :func:`resolve`. ``app`` is
    an ASGI/WSGI callable or an import string ``"module:attr"`` (imported later, by the
    worker: nothing is imported here). Keyword values go through the option's converter,
    so ``"8000"`` and ``8000`` are the same port; None means "not given".

    Raises TypeError for a keyword that names no option, and ConfigError (one line, naming
    the option) for a bad value or options that cannot go together (:meth:`validate`).
    A Config is not changed after it is made: :meth:`replace` returns a copy.
    """

    app: Any
    # Attributes named after every option are set in __init__; listed for type checkers.
    factory: bool
    app_dir: str
    interface: str
    threads: int
    wsgi_queue: int
    wsgi_inline: bool
    lifespan: str
    env_file: str | None
    host: str
    port: int
    uds: str | None
    uds_mode: int | None
    fd: int | None
    backlog: int
    loop: str
    http: str
    http2: bool
    http2_engine: str
    h2c_upgrade: bool
    http2_max_concurrent_streams: int
    h11_max_incomplete_event_size: int
    ws: str
    ws_max_size: int
    ws_max_queue: int
    ws_ping_interval: float
    ws_ping_timeout: float
    ws_per_message_deflate: bool
    timeout_keep_alive: float
    timeout_graceful_shutdown: float
    limit_concurrency: int | None
    limit_max_requests: int | None
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_body: int | None
    timeout_header_read: float
    timeout_body_read: float
    timeout_send: float
    root_path: str
    proxy_headers: bool
    forwarded_allow_ips: str
    proxy_protocol: str
    server_header: bool
    date_header: bool
    headers: list[tuple[str, str]]
    ssl_keyfile: str | None
    ssl_certfile: str | None
    ssl_keyfile_password: str | None
    ssl_version: int
    ssl_cert_reqs: str
    ssl_ca_certs: str | None
    ssl_ciphers: str | None
    log_config: str | None
    log_level: str
    access_log: bool
    access_log_format: str | None
    use_colors: bool | None
    config: str | None
    workers: int
    bind: list[str]
    timeout: float
    max_requests_jitter: int
    max_worker_memory: float | None
    max_worker_lifetime: float | None
    balance: str
    preload: bool
    pid_file: str | None
    timeout_worker_boot: float
    reload: bool
    reload_dirs: list[str]
    reload_includes: list[str]
    reload_excludes: list[str]
    reload_delay: float
    control_socket: str | None
    metrics_bind: str | None
    log_format: str
    pubsub: str
    pubsub_max_queue: int

    def __init__(self, app: Any, **kwargs: Any) -> None:
        self.app = app
        unknown = set(kwargs) - set(BY_NAME)
        if unknown:
            noun = "option" if len(unknown) == 1 else "options"
            raise TypeError(f"Config() got unknown {noun}: {', '.join(sorted(unknown))}")
        for opt in OPTIONS:
            if opt.name in kwargs and kwargs[opt.name] is not None:
                value = opt.parse(kwargs[opt.name])
            else:
                value = list(opt.default) if opt.multiple else opt.default
            setattr(self, opt.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-option checks: each failure is one line naming the options."""
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError("--ssl-keyfile: needs --ssl-certfile as well")
        if self.uds_mode is not None and not self.uds:
            raise ConfigError("--uds-mode: only applies with --uds")
        if self.uds and self.fd is not None:
            raise ConfigError("--uds and --fd: choose one listener")
        if self.reload and self.preload:
            raise ConfigError("--reload: cannot be combined with --preload (the master imports no app code)")

    @property
    def is_ssl(self) -> bool:
        return bool(self.ssl_certfile)

    def as_dict(self) -> dict[str, Any]:
        return {opt.name: getattr(self, opt.name) for opt in OPTIONS}

    def replace(self, **changes: Any) -> Config:
        """A copy with some options (or ``app``) changed."""
        app = changes.pop("app", self.app)
        values = {k: v for k, v in self.as_dict().items() if v is not None}
        values.update(changes)
        return Config(app, **values)

    def __repr__(self) -> str:
        return f"Config(app={self.app!r})"


def resolve(
    command: str,
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config from the command line (``cli``: option name -> raw value or None),
    the environment and the configuration file, in that order of precedence; then
    ``defaults`` (a mode's own defaults, e.g. dev mode's), then the options' defaults.

    ``--env-file`` is applied to ``os.environ`` first (when ``environ`` is the real
    environment), so the app and the ASGICTL_ variables it sets both see it.
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    applicable = options_for(command)

    def env_value(opt: Option) -> tuple[Any, str] | None:
        for env_name in opt.env_names:
            if env_name in environ:
                return environ[env_name], env_name
        return None

    def early(name: str) -> Any:
        opt = BY_NAME[name]
        if cli.get(name) is not None:
            return opt.parse(cli[name])
        found = env_value(opt)
        return opt.parse(found[0], source=found[1]) if found else None

    env_file = early("env_file")
    if env_file and (isinstance(environ, dict) or environ is os.environ):
        apply_env_file(env_file, environ)

    config_path = early("config")
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = read_config_file(config_path)
    else:
        pyproject = os.path.join(cwd, "pyproject.toml")
        if os.path.isfile(pyproject):
            file_values = read_config_file(pyproject, pyproject=True)

    file_app = file_values.pop("app", None)
    app = cli.get("app") or environ.get("ASGICTL_APP") or file_app
    if not app and command not in CONTROL_COMMANDS:  # status & co. talk to a master, no APP
        raise ConfigError("APP: missing; give it as module:attribute (e.g. main:app)")

    values: dict[str, Any] = {}
    for opt in applicable:
        if cli.get(opt.name) is not None and cli.get(opt.name) != []:
            values[opt.name] = opt.parse(cli[opt.name])
        elif (found := env_value(opt)) is not None:
            values[opt.name] = opt.parse(found[0], source=found[1])
        elif opt.name in file_values:
            values[opt.name] = file_values[opt.name]
        elif defaults and opt.name in defaults:
            values[opt.name] = opt.parse(defaults[opt.name])
    # File keys of options another command takes (``workers`` under ``serve``) are left
    # alone: one [tool.asgictl] table serves every command.
    return Config(app, **values)
