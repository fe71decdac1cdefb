"""An HTTP/2 request's fields: checked (RFC 9113 8.2-8.3, then the shared policy) and
turned into an ASGI scope.

:func:`build_scope` raises :class:`MalformedRequest` for what RFC 9113 8.1.1 calls a
malformed request (the connection resets the stream with PROTOCOL_ERROR) and
:class:`~asgictl.protocols.http.strict.InvalidRequest` for what the policy HTTP/1.1
requests are held to refuses (the stream is answered with its status: 400, 413, 431).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from asgictl.protocols.http.connection import SCOPE_TEMPLATE
from asgictl.protocols.http.fields import FORBIDDEN_TRAILERS
from asgictl.protocols.http.strict import check_head
from asgictl.protocols.http2.stream import CONNECTION_FIELDS

if TYPE_CHECKING:
    from asgictl.protocols.http2.connection import HTTP2Connection


class MalformedRequest(Exception):
    """RFC 9113 8.1.1: a stream error of type PROTOCOL_ERROR."""


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9a-z]+"
#: Field names joined by LF: lowercase tokens only (RFC 9113 8.2, RFC 9110 5.1).
FIELD_NAMES = re.compile(rb"%s(?:\n%s)*" % (_TOKEN, _TOKEN))
_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})
#: A field value may not hold NUL, CR or LF, nor start or end with whitespace (8.2.1).
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
#: In the values joined by LF (see _check_regular): whitespace at a value's edge.
_EDGE_SPACE = re.compile(rb"(?:^|\n)[ \t]|[ \t](?:\n|$)")


#: Request heads a connection remembers as checked (forgotten all at once past this),
#: and the most fields, and bytes of fields, such a head has: what a peer can make a
#: connection hold stays small.
MAX_CHECKED = 8
MAX_CHECKED_FIELDS = 64
MAX_CHECKED_SIZE = 8192

#: A head that passed the checks: method, scheme, target, the regular fields (host
#: first when it came as :authority), whether it is an extended CONNECT.
_Checked = tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bool]


def build_scope(conn: HTTP2Connection, fields: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], bool]:
    """The ``http`` scope of a request whose decoded header block is ``fields``, and
    whether it is an extended CONNECT for a WebSocket (RFC 8441 4).

    The checks depend on the fields and the server's options only: a connection
    remembers the heads that passed them (``conn.checked``), and a client repeating its
    request (the same fields, as HPACK lets it send them again for a byte each) is not
    checked again."""
    key = tuple(fields)
    checked = conn.checked.get(key)
    if checked is None:
        checked = _check(conn, fields)
        if (
            len(key) <= MAX_CHECKED_FIELDS
            and sum([len(name) + len(value) for name, value in key]) <= MAX_CHECKED_SIZE
        ):
            if len(conn.checked) >= MAX_CHECKED:
                conn.checked.clear()
            conn.checked[key] = checked
    method, scheme, target, headers, websocket = checked
    return _scope(conn, method, scheme, target, headers.copy()), websocket


def _check(conn: HTTP2Connection, fields: list[tuple[bytes, bytes]]) -> _Checked:
    """RFC 9113 8.2-8.3, then the policy HTTP/1.1 requests are held to."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    for name, value in fields:
        if name[:1] == b":":
            if headers:
                raise MalformedRequest("pseudo-header field after a regular field")
            if name not in _PSEUDO or name in pseudo:
                raise MalformedRequest(f"invalid or repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        if name in CONNECTION_FIELDS:
            raise MalformedRequest(f"connection-specific field {name!r}")
        if name == b"te" and value != b"trailers":
            raise MalformedRequest("TE other than trailers")
        if name == b"host":
            if host is not None:
                raise MalformedRequest("repeated host field")
            host = value
        headers.append((name, value))
    if headers:
        _check_regular(headers)
    method = pseudo.get(b":method")
    if not method:
        raise MalformedRequest("no :method")
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    if method == b"CONNECT" and protocol is None:
        if b":scheme" in pseudo or b":path" in pseudo or not authority:
            raise MalformedRequest("CONNECT takes :authority only")
        target = authority
        scheme = b""
    else:
        if protocol is not None and (method != b"CONNECT" or conn.state.ws_protocol is None):
            # Extended CONNECT (RFC 8441) is offered only with --ws (and only for CONNECT).
            raise MalformedRequest(":protocol outside an extended CONNECT")
        if protocol is not None and protocol != b"websocket":
            raise MalformedRequest(f"unknown :protocol {protocol!r}")
        target = pseudo.get(b":path", b"")
        scheme = pseudo.get(b":scheme", b"")
        if not target or not scheme:
            raise MalformedRequest("no :path or :scheme")
        if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
            raise MalformedRequest("invalid :path")
    if authority is not None:
        if _BAD_VALUE.search(authority) is not None or b"@" in authority:
            raise MalformedRequest("invalid :authority")
        if host is None:
            # HTTP/1.1 apps look for the authority in Host (RFC 9113 8.3.1).
            headers.insert(0, (b"host", authority))
        elif host != authority:
            raise MalformedRequest("host and :authority differ")
    method_str = method.decode("ascii", "surrogateescape")
    check_head(method_str, target, "1.1", headers, conn.state)
    return method_str, scheme, target, headers, protocol is not None


def check_trailers(fields: list[tuple[bytes, bytes]]) -> None:
    """A request's trailer section: regular fields only (RFC 9113 8.1), the grammar of
    8.2 and none of the fields a trailer may not carry (RFC 9110 6.5.1)."""
    for name, _ in fields:
        if name[:1] == b":":
            raise MalformedRequest("pseudo-header field in trailers")
        if name in CONNECTION_FIELDS or name in FORBIDDEN_TRAILERS:
            raise MalformedRequest(f"field {name!r} in trailers")
    if fields:
        _check_regular(fields)


def _check_regular(headers: list[tuple[bytes, bytes]]) -> None:
    """Names are lowercase tokens (RFC 9113 8.2, RFC 9110 5.1); values hold no NUL, CR
    or LF and do not start or end with whitespace (8.2.1). One scan of the joined names
    and values instead of a check per field."""
    values = b"\n".join([value for _, value in headers])
    if FIELD_NAMES.fullmatch(b"\n".join([name for name, _ in headers])) is None:
        raise MalformedRequest("invalid field name")
    if (
        values.count(b"\n") != len(headers) - 1
        or b"\r" in values
        or b"\0" in values
        or _EDGE_SPACE.search(values) is not None
    ):
        raise MalformedRequest("invalid field value")


def _scope(
    conn: HTTP2Connection,
    method: str,
    scheme: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
) -> dict[str, Any]:
    state = conn.state
    raw_path, _, query = target.partition(b"?")
    path = raw_path.decode("ascii", "surrogateescape")
    if b"%" in raw_path:
        path = unquote(path)
    if state.root_path:
        path = state.root_path + path
        raw_path = state.root_path_bytes + raw_path
    scope = SCOPE_TEMPLATE.copy()
    scope["http_version"] = "2"
    scope["root_path"] = state.root_path
    scope["server"] = conn.server
    scope["client"] = conn.client
    scope["scheme"] = "https" if scheme == b"https" else "http" if scheme == b"http" else conn.scheme
    scope["method"] = method
    scope["path"] = path
    scope["raw_path"] = raw_path
    scope["query_string"] = query
    scope["headers"] = headers
    scope["state"] = state.lifespan_state.copy()
    if conn.trusted and state.trusted is not None:
        scope["client"], scope["scheme"] = state.trusted.forwarded(headers, scope["client"], scope["scheme"])
    return scope
