"""The access line: one per HTTP response and per WebSocket handshake answer.

Every protocol that answers requests (the HTTP/1.1 cycle, HTTP/2 streams, the WebSocket
handshake) hands its finished exchange to :class:`AccessLog`, built once per server
when the access log is on (``ServerState.access_log``; None when it is off, so a
disabled log costs one attribute test per response and nothing else).

Two shapes of line:

* the default (``--access-log-format`` not given) is asgictl's own line, logged as
  ``ACCESS_MESSAGE`` with six arguments (client, method, path, HTTP version, status,
  duration in ms), exactly as cheap as it always was; a request whose client went away
  before the response was complete is logged with ``ACCESS_MESSAGE_DISCONNECTED``
  (the same line ending in ``(client disconnected)``);
* ``--access-log-format`` takes gunicorn's atoms in ``%(name)s`` syntax. The format is
  parsed once: only the atoms it names are computed per request, and an unknown atom
  is a configuration error at start. The line is the record's message, and the
  request's fields ride along as ``record.access`` (an :class:`AccessFields`), so JSON
  lines (``--log-format json``) keep their fields whatever the format.

=========== ================================================================
atom        meaning
=========== ================================================================
``h``       remote address (the client's host, after trusted proxy headers)
``l``       ``-``
``u``       user name of HTTP Basic authentication, else ``-``
``t``       time of the request, ``[10/Oct/2000:13:55:36 -0700]``
``r``       request line as received, ``GET /a%20b?q=1 HTTP/1.1``
``m``       request method
``U``       URL path (percent-decoded), without the query string
``q``       query string
``H``       protocol, ``HTTP/1.1``
``s``       status
``B``       response body size in bytes
``b``       response body size in bytes, ``-`` for none (CLF)
``f``       referer
``a``       user agent
``T``       request time in whole seconds
``M``       request time in whole milliseconds
``D``       request time in whole microseconds
``L``       request time in decimal seconds, ``0.000312``
``p``       process id, ``<12345>``
``X``       connection status at the end of the response (Apache's ``%X``):
            ``X`` the client disconnected before it was complete, ``+`` the
            connection is kept alive, ``-`` it is closed
``{name}i`` request header ``name`` (case-insensitive; ``-`` when absent)
``{name}o`` response header ``name``
``{name}e`` environment variable ``name`` of the worker process
=========== ================================================================

The request time runs from the complete request head to the end of the response,
measured with ``time.perf_counter`` (sub-millisecond: the event loop's clock under
uvloop only moves in whole milliseconds).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from asgictl.config import ConfigError
from asgictl.logs import ACCESS_LOGGER, ACCESS_MESSAGE, ACCESS_MESSAGE_DISCONNECTED

__all__ = ["ATOMS", "AccessFields", "AccessLog", "compile_format"]

access_logger = logging.getLogger(ACCESS_LOGGER)

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

_ATOM = re.compile(r"%\(([^)]*)\)")

#: The single-letter atoms, in gunicorn's order (plus Apache's ``X``); ``{name}i|o|e`` besides.
ATOM_LETTERS = "hlutrmUqHsBbfaTMDLpX"
ATOMS = frozenset(ATOM_LETTERS)
#: The atoms that need what the app sent (its headers, its body size).
_RESPONSE_ATOMS = frozenset("Bb")
#: Plausible values of every atom, to check a format once at start.
_SAMPLE: dict[str, Any] = {
    "h": "127.0.0.1",
    "l": "-",
    "u": "-",
    "t": "[01/Jan/2026:00:00:00 +0000]",
    "r": "GET / HTTP/1.1",
    "m": "GET",
    "U": "/",
    "q": "",
    "H": "HTTP/1.1",
    "s": 200,
    "B": 0,
    "b": "-",
    "f": "-",
    "a": "-",
    "T": 0,
    "M": 0,
    "D": 0,
    "L": "0.000000",
    "p": "<1>",
    "X": "+",
}


class AccessFields(NamedTuple):
    """What JSON lines and log formatters read of every access line (``record.access``)."""

    client: str
    method: str
    path: str
    http_version: str
    status: int
    duration_ms: float
    disconnected: bool


def compile_format(fmt: str) -> tuple[str, frozenset[str]]:
    """Check a ``--access-log-format`` and return ``(format, atoms it uses)``.

    Header atoms are lower-cased (``%({User-Agent}i)s`` finds ``user-agent``). Raises
    :class:`ConfigError` (one line) for an unknown atom or a format that does not apply.
    """
    names: set[str] = set()

    def normalise(match: re.Match[str]) -> str:
        name = match.group(1)
        if len(name) > 3 and name[0] == "{" and name[-2] == "}" and name[-1] in "ioe":
            if name[-1] != "e":  # environment variables keep their case
                name = name.lower()
        elif name not in ATOMS:
            raise ConfigError(
                f"--access-log-format: unknown atom %({name})s; known: "
                f"{' '.join(ATOM_LETTERS)}, {{header}}i, {{header}}o, {{variable}}e"
            )
        names.add(name)
        return f"%({name})"

    text = _ATOM.sub(normalise, fmt)
    sample = {name: _SAMPLE.get(name, "-") for name in names}
    try:
        text % sample  # checks conversions such as %(s)d, and a stray %
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"--access-log-format: {fmt!r} does not apply: {exc}") from None
    return text, frozenset(names)


class _Response:
    """What the app sent, for the ``B``, ``b`` and ``{name}o`` atoms."""

    __slots__ = ("headers", "sent")

    def __init__(self) -> None:
        self.headers: Iterable[tuple[bytes, bytes]] = ()
        self.sent = 0


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    values = [value.decode("latin-1") for key, value in headers if key.lower() == name]
    return ",".join(values) if values else "-"


def _basic_user(headers: Iterable[tuple[bytes, bytes]]) -> str:
    for key, value in headers:
        if key.lower() == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() != b"basic":
                return "-"
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return "-"
            return decoded.partition(":")[0] or "-"
    return "-"


class AccessLog:
    """Writes the access lines of one server (built when ``--access-log`` is on).

    ``fmt`` is ``--access-log-format`` (None: asgictl's default line). Call
    :meth:`response` for every finished HTTP exchange and :meth:`websocket` for every
    answered WebSocket handshake.
    """

    __slots__ = ("format", "atoms", "needs_response", "_responses", "_pid", "_environ")

    def __init__(self, fmt: str | None = None) -> None:
        self.format: str | None = None
        self.atoms: frozenset[str] = frozenset()
        if fmt is not None:
            self.format, self.atoms = compile_format(fmt)
        #: The format reads what the app sent: the app's ``send`` is watched (see wrap).
        self.needs_response = bool(self.atoms & _RESPONSE_ATOMS) or any(a[-1] == "o" for a in self.atoms)
        self._responses: dict[int, _Response] = {}
        self._pid = f"<{os.getpid()}>"
        self._environ = {name: os.environ.get(name[1:-2], "-") for name in self.atoms if name[-1] == "e"}

    # -------------------------------------------------------------------- the calls

    def response(
        self,
        scope: dict[str, Any],
        status: int,
        started_at: float,
        keep_alive: bool = True,
        disconnected: bool = False,
    ) -> None:
        """One finished HTTP exchange.

        ``started_at`` is the ``time.perf_counter()`` of the complete request head;
        ``keep_alive``: the connection stays open after it (the ``X`` atom);
        ``disconnected``: the client went away before the response was complete.
        """
        duration_ms = (time.perf_counter() - started_at) * 1000
        fmt = self.format
        if fmt is None:
            client = scope.get("client")
            path = scope["path"]
            query = scope["query_string"]
            if query:
                path = f"{path}?{query.decode('latin-1')}"
            access_logger.info(
                ACCESS_MESSAGE_DISCONNECTED if disconnected else ACCESS_MESSAGE,
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                path,
                scope["http_version"],
                status,
                duration_ms,
            )
            return
        self._formatted(scope, scope["method"], status, duration_ms, keep_alive, disconnected)

    def websocket(self, scope: dict[str, Any], status: int, started_at: float) -> None:
        """One answered WebSocket handshake (101 accepted, or the app's denial)."""
        fmt = self.format
        if fmt is None:
            client = scope.get("client")
            path = scope["path"]
            if scope["query_string"]:
                path = f"{path}?{scope['query_string'].decode('latin-1')}"
            access_logger.info(
                '%s - "WebSocket %s" %d', f"{client[0]}:{client[1]}" if client else "-", path, status
            )
            return
        duration_ms = (time.perf_counter() - started_at) * 1000
        self._formatted(scope, "GET", status, duration_ms, status == 101, False)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app``, watched for what it sends when the format needs it (else ``app`` itself)."""
        if not self.needs_response:
            return app
        responses = self._responses

        async def watched(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            record = responses[id(scope)] = _Response()

            head = scope["method"] == "HEAD"  # a body the server does not send

            async def send_watched(message: dict[str, Any]) -> None:
                # Recorded before sending: the last body message writes the access line.
                kind = message["type"]
                if kind == "http.response.body":
                    if not head:
                        record.sent += len(message.get("body", b""))
                elif kind == "http.response.start":
                    record.headers = message.get("headers") or ()
                elif kind == "http.response.pathsend" and not head:
                    record.sent += os.path.getsize(message["path"])
                await send(message)

            try:
                await app(scope, receive, send_watched)
            finally:
                responses.pop(id(scope), None)

        return watched

    # -------------------------------------------------------------------- formatting

    def _formatted(
        self,
        scope: dict[str, Any],
        method: str,
        status: int,
        duration_ms: float,
        keep_alive: bool,
        disconnected: bool,
    ) -> None:
        client = scope.get("client")
        path = scope["path"]
        query = scope["query_string"].decode("latin-1")
        version = scope.get("http_version", "1.1")
        fields = AccessFields(
            f"{client[0]}:{client[1]}" if client else "-",
            method,
            f"{path}?{query}" if query else path,
            version,
            status,
            duration_ms,
            disconnected,
        )
        line = self.format % self._atoms(scope, fields, keep_alive)  # type: ignore[operator]
        access_logger.info(line, extra={"access": fields})

    def _atoms(self, scope: dict[str, Any], fields: AccessFields, keep_alive: bool) -> dict[str, Any]:
        headers = scope.get("headers", ())
        response = self._responses.get(id(scope))
        micros = int(fields.duration_ms * 1000)
        atoms: dict[str, Any] = {}
        for name in self.atoms:
            if name == "h":
                client = scope.get("client")
                value: Any = client[0] if client else "-"
            elif name == "l":
                value = "-"
            elif name == "u":
                value = _basic_user(headers)
            elif name == "t":
                value = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")
            elif name == "r":  # the target as received (gunicorn's RAW_URI): one token, no decoding
                raw = scope.get("raw_path")
                target = raw.decode("latin-1") if raw is not None else scope["path"]
                query = scope["query_string"]
                if query:
                    target = f"{target}?{query.decode('latin-1')}"
                value = f"{fields.method} {target} HTTP/{fields.http_version}"
            elif name == "m":
                value = fields.method
            elif name == "U":
                value = scope["path"]
            elif name == "q":
                value = scope["query_string"].decode("latin-1")
            elif name == "H":
                value = f"HTTP/{fields.http_version}"
            elif name == "s":
                value = fields.status
            elif name == "B":
                value = response.sent if response is not None else 0
            elif name == "b":
                value = response.sent if response is not None and response.sent else "-"
            elif name == "f":
                value = _header(headers, b"referer")
            elif name == "a":
                value = _header(headers, b"user-agent")
            elif name == "T":
                value = micros // 1_000_000
            elif name == "M":
                value = micros // 1000
            elif name == "D":
                value = micros
            elif name == "L":
                value = f"{micros / 1_000_000:.6f}"
            elif name == "p":
                value = self._pid
            elif name == "X":
                value = "X" if fields.disconnected else "+" if keep_alive else "-"
            elif name[-1] == "i":
                value = _header(headers, name[1:-2].encode("latin-1"))
            elif name[-1] == "o":
                value = _header(response.headers, name[1:-2].encode("latin-1")) if response else "-"
            else:  # {name}e
                value = self._environ[name]
            atoms[name] = value
        return atoms
