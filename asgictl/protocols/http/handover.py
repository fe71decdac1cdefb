"""Leaving HTTP/1.1: the handover of a connection's transport to another protocol.

:func:`hand_over` is the one way a transport changes hands: to a WebSocket after an
accepted handshake, or to HTTP/2 (``state.h2_protocol``) when TLS ALPN chose ``h2``,
when the first bytes are the client preface (prior knowledge, RFC 9113 3.3), or, with
``--h2c-upgrade``, when a request asks for ``Upgrade: h2c`` (RFC 7540 3.2): then the 101
is written here and the request becomes stream 1 of the new connection.

The HTTP/2 connection inherits what the HTTP/1.1 one knew: its peer (from the socket,
or from a PROXY protocol header read before), scheme and trust, and the clock of its
first request head (from accept: the preface and the first HEADERS are that head).
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING

from asgictl.protocols.http.fields import list_tokens

if TYPE_CHECKING:
    from asgictl.protocols.http.connection import HTTPConnection
    from asgictl.protocols.http2.connection import HTTP2Connection

#: The HTTP/2 client connection preface (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"


def hand_over(conn: HTTPConnection, protocol: asyncio.Protocol) -> None:
    """``protocol`` takes ``conn``'s transport (connection_made), reading resumed; the
    HTTP/1.1 connection is done and no longer one of the server's connections."""
    conn.closing = True
    conn.state.connections.discard(conn)
    transport = conn.transport
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if conn.read_paused:
        conn.read_paused = False
        transport.resume_reading()


def switch_to_http2(conn: HTTPConnection, data: bytes) -> None:
    """Hand the transport to an HTTP/2 connection, with the bytes read so far."""
    _to_http2(conn).start(data)


def _to_http2(conn: HTTPConnection) -> HTTP2Connection:
    factory = conn.state.h2_protocol
    assert factory is not None
    protocol = factory(conn.state)
    protocol.server, protocol.client = conn.server, conn.client
    protocol.scheme, protocol.trusted = conn.scheme, conn.trusted
    protocol.headers_since = conn.head_since
    hand_over(conn, protocol)
    return protocol


def upgrade_h2c(conn: HTTPConnection, trailing: bytes) -> bool:
    """``Upgrade: h2c`` (RFC 7540 3.2): answer 101 and hand the transport to HTTP/2,
    the request becoming its stream 1, its body read first. False (served as HTTP/1.1)
    for anything else, or when the body cannot be read before switching (chunked,
    or not all received yet)."""
    pipeline = conn.pipeline
    if conn.cycle is not None or len(pipeline) != 1 or conn.transport.is_closing():
        return False
    cycle = pipeline[0]
    settings = h2c_settings(cycle.scope["headers"])
    if settings is None or cycle.more_body or conn.state.shutting_down:
        return False
    body = cycle.body
    length = _content_length(cycle.scope["headers"])
    if length is None or len(body) > length:
        return False
    if len(body) < length:
        # httptools stops at the head of an upgrade: the body is in what followed.
        need = length - len(body)
        if len(trailing) < need:
            return False
        body, trailing = body + trailing[:need], trailing[need:]
    pipeline.clear()
    conn.parsing = None
    conn.transport.write(_SWITCHING)
    _to_http2(conn).start_upgrade(settings, cycle.scope, body, trailing)
    return True


def h2c_settings(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The HTTP2-Settings of a valid h2c upgrade request (``Upgrade: h2c``, ``Connection:
    Upgrade, HTTP2-Settings``, exactly one well-formed HTTP2-Settings), padded for base64
    decoding; None for any other request."""
    upgrade = connection = 0
    settings: list[bytes] = []
    for name, value in headers:
        if name == b"upgrade":
            upgrade |= b"h2c" in list_tokens(value)
        elif name == b"connection":
            tokens = set(list_tokens(value))
            connection |= (b"upgrade" in tokens) | (b"http2-settings" in tokens) << 1
        elif name == b"http2-settings":
            settings.append(value.strip())
    if not upgrade or connection != 3 or len(settings) != 1:
        return None
    value = settings[0] + b"=" * (-len(settings[0]) % 4)
    try:
        payload = base64.urlsafe_b64decode(value)
    except ValueError:
        return None
    return value if len(payload) % 6 == 0 else None


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's body length: its Content-Length, 0 without one, None when chunked."""
    length = 0
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            return None
    return length
