"""Pre-encoded pieces of HTTP/1.1 responses.

Status lines for every code are built once at import. Server-generated answers (400,
500, 503, ...) are complete byte strings made here, with ``connection: close`` when the
connection will not be reused.
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


def simple_response(
    status: int, body: bytes, default_headers: bytes, *, close: bool = True, head: bool = False
) -> bytes:
    """A complete plain-text response the server writes on its own behalf."""
    return b"".join(
        (
            STATUS_LINES[status],
            default_headers,
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n" if close else b"",
            CRLF,
            b"" if head else body,
        )
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
