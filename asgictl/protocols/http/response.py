"""Pre-encoded pieces of HTTP/1.1 responses, and the one way to write a small one.

Status lines for every code are built once at import. The answers the server writes on
its own behalf (400, 413, 500, 503, ... from the protocols; the metrics listener's
scrapes and health checks) are complete byte strings made by :func:`simple_response`.
"""

from __future__ import annotations

import http

#: b"HTTP/1.1 200 OK\r\n" and friends, for every code the stdlib knows, and 100-599.
STATUS_LINES: dict[int, bytes] = {code: f"HTTP/1.1 {code} \r\n".encode("ascii") for code in range(100, 600)}
STATUS_LINES.update({s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in http.HTTPStatus})

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Statuses whose responses never carry a body (RFC 9110 6.4.1).
NO_BODY_STATUSES = frozenset({*range(100, 200), 204, 304})

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    try:
        return STATUS_LINES[status]
    except KeyError:
        raise ValueError(f"invalid HTTP status code {status!r}") from None


TEXT_PLAIN = b"text/plain; charset=utf-8"


def simple_response(
    status: int, body: bytes, default_headers: bytes, *, content_type: bytes = TEXT_PLAIN, head: bool = False
) -> bytes:
    """A complete response the server writes on its own behalf, after which the
    connection closes: the status line (``status``: 100-599, else KeyError), then
    ``default_headers`` (field lines, each ending in CRLF: the Date/Server defaults, or
    any extra fields), Content-Type, Content-Length and ``connection: close``, then
    ``body``. With ``head`` (the answer to a HEAD request) the fields are the same and
    the body is left out (RFC 9110 9.3.2)."""
    return b"".join(
        (
            STATUS_LINES[status],
            default_headers,
            b"content-type: %b\r\n" % content_type,
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            CRLF,
            b"" if head else body,
        )
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
