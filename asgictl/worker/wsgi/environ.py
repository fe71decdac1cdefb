"""The WSGI ``environ`` of an ASGI ``http`` scope (PEP 3333), and ``wsgi.input``.

:func:`build_environ` maps the scope to CGI variables (native strings, ``HTTP_*`` keys
for the request's fields, names with ``_`` dropped); :class:`WSGIInput` is the request
body read from the app's thread as it arrives, when it was not read whole beforehand.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from asgictl.worker.wsgi.bridge import ClientGone, Environ, LoopBridge, Receive, Scope

# Headers that become CONTENT_TYPE / CONTENT_LENGTH instead of HTTP_* variables.
_CGI_HEADERS = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class WSGIInput:
    """``wsgi.input``: the request body, read from the worker thread as it arrives.

    Each read pulls ``http.request`` messages from ``receive`` only until it can be
    answered, so the body is never read ahead of the app. ``http.disconnect`` (or an
    aborted request) ends the input: reads then return what is buffered, then ``b""``.
    """

    def __init__(self, bridge: LoopBridge, receive: Receive) -> None:
        self._bridge = bridge
        self._receive = receive
        self._buffer = bytearray()
        self._eof = False

    def _pull(self) -> None:
        """Append the next body message to the buffer, or mark the end of the input."""
        try:
            message = self._bridge.call(self._receive)
        except ClientGone:
            self._eof = True
            return
        if message["type"] == "http.request":
            self._buffer += message.get("body", b"")
            if not message.get("more_body", False):
                self._eof = True
        else:
            # http.disconnect: nobody will read the response either, so the next send
            # stops the response instead of computing it for no one.
            self._eof = True
            self._bridge.close()

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        # Deleting from the front of a bytearray is cheap in CPython (no full copy).
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while not self._eof:
                self._pull()
            return self._take(len(self._buffer))
        while len(self._buffer) < size and not self._eof:
            self._pull()
        return self._take(min(size, len(self._buffer)))

    def readline(self, limit: int | None = -1) -> bytes:
        if limit is None:
            limit = -1
        searched = 0  # the buffer before this offset holds no newline
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                size = newline + 1
                break
            if self._eof or 0 <= limit <= len(self._buffer):
                size = len(self._buffer)
                break
            searched = len(self._buffer)
            self._pull()
        if limit >= 0:
            size = min(size, limit)
        return self._take(size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The server owns the input; closing it does nothing (as in other servers)."""


def _wsgi_str(value: str) -> str:
    """A PEP 3333 "native string": the UTF-8 bytes of ``value`` decoded as latin-1.

    ``surrogateescape`` round-trips bytes that a server decoded from invalid UTF-8 that way.
    """
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("latin-1")


#: Header name (as the parser gives it) -> environ key, or None for a name that is
#: dropped; filled as names are seen, up to a bound (a client may invent names).
_HEADER_KEYS: dict[bytes, str | None] = {}
_HEADER_KEYS_MAX = 512


def _header_key(raw_name: bytes) -> str | None:
    name = raw_name.decode("latin-1").lower()
    if "_" in name:
        # "X_Forwarded_For" and "X-Forwarded-For" would both become
        # HTTP_X_FORWARDED_FOR: a client could spoof a header set by a proxy. Drop
        # them, as nginx and gunicorn do by default.
        key = None
    else:
        key = _CGI_HEADERS.get(name) or "HTTP_" + name.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _HEADER_KEYS_MAX:
        _HEADER_KEYS[raw_name] = key
    return key


#: The environ entries that are the same for every request.
_CONSTANT: Environ = {
    "wsgi.version": (1, 0),
    # The input ends where the request body ends, so apps may read it to EOF without a
    # Content-Length (chunked uploads); Werkzeug honours this mod_wsgi/gunicorn flag.
    "wsgi.input_terminated": True,
    "wsgi.multithread": True,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}


def build_environ(scope: Scope, body: Any) -> Environ:
    """The WSGI environ of an ASGI ``http`` scope, with ``body`` as ``wsgi.input``."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    # Strip root_path only on a segment boundary: "/app" is not a prefix of "/apple".
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("", "/"):
        path = path[len(root_path) :]
    scheme: str = scope.get("scheme", "http")

    environ = _CONSTANT.copy()
    environ["REQUEST_METHOD"] = scope["method"]
    environ["SCRIPT_NAME"] = _wsgi_str(root_path) if root_path else ""
    environ["PATH_INFO"] = _wsgi_str(path)
    environ["QUERY_STRING"] = scope.get("query_string", b"").decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + scope.get("http_version", "1.1")
    environ["wsgi.url_scheme"] = scheme
    environ["wsgi.input"] = body
    environ["wsgi.errors"] = sys.stderr
    environ["asgi.scope"] = scope

    server = scope.get("server")
    if server is None or server[1] is None:
        # No server address, or a unix socket ((path, None)): a socket path is no host
        # name, and frameworks build URLs from SERVER_NAME:SERVER_PORT without a Host.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = _DEFAULT_PORTS.get(scheme, "80")
    else:
        environ["SERVER_NAME"] = str(server[0])
        environ["SERVER_PORT"] = str(server[1])

    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        if client[1] is not None:
            environ["REMOTE_PORT"] = str(client[1])

    keys = _HEADER_KEYS
    for raw_name, raw_value in scope.get("headers", ()):
        key = keys[raw_name] if raw_name in keys else _header_key(raw_name)
        if key is None:
            continue
        value = raw_value.decode("latin-1")
        if key in environ:
            # HTTP/2 splits Cookie into several fields, to be joined with "; " (RFC 9113
            # 8.2.3); other repeated fields are joined with "," (RFC 9110 5.3).
            separator = "; " if key == "HTTP_COOKIE" else ","
            value = environ[key] + separator + value
        environ[key] = value
    return environ
