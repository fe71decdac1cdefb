"""The checks of a WebSocket opening handshake (RFC 6455 4.2.1, 4.2.2), done once here.

The HTTP protocol hands a request over only if it is a GET of HTTP/1.1 with ``Upgrade:
websocket`` and ``Connection: upgrade`` tokens, a Host and no body. What is left to
check is the same whichever library frames the connection, and the libraries disagree
on it (wsproto takes a key of any length, answers a wrong version with a message about
a missing header and no ``Sec-WebSocket-Version``, fails on a host that is not IDNA or a
target with obs-text, crashes on a non-numeric deflate parameter, and lets a later
extension offer override an earlier one): so :func:`check_handshake` judges the
request, and the library is given a canonical request built from what passed, never
the client's bytes. Every refusal is the same for both:

- 400 for a ``Sec-WebSocket-Key`` that is missing, repeated, not base64 or does not
  decode to 16 bytes, a repeated ``Sec-WebSocket-Version``, or a
  ``Sec-WebSocket-Protocol`` / ``Sec-WebSocket-Extensions`` that breaks its grammar
  (1#token; RFC 6455 9.1);
- 426 with ``Sec-WebSocket-Version: 13`` for a version that is missing or not 13.

Of the extension offers, only the first ``permessage-deflate`` offer whose parameters
are valid for RFC 7692 (7.1: each known parameter at most once, window bits 9-15; 8 is
refused by zlib) is passed on, rendered canonically; the others are declined, as a
server may decline any offer.
"""

from __future__ import annotations

import base64
import binascii
import re

from asgictl.protocols.http.fields import TCHAR

#: An extension-list element: a token and ;-separated token[=token|quoted-string]
#: parameters, with optional whitespace around the separators (RFC 6455 9.1).
_QUOTED = rb'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x09\x20-\x7e\x80-\xff])*"'
_PARAM = rb"%s+(?:[ \t]*=[ \t]*(?:%s+|%s))?" % (TCHAR, TCHAR, _QUOTED)
_EXTENSION = re.compile(rb"[ \t]*(%s+)((?:[ \t]*;[ \t]*%s)*)[ \t]*" % (TCHAR, _PARAM))
_PARAM_RE = re.compile(rb"(%s+)(?:[ \t]*=[ \t]*(%s+|%s))?" % (TCHAR, TCHAR, _QUOTED))
_TOKEN = re.compile(rb"%s+" % TCHAR)
_DEFLATE_FLAGS = (b"server_no_context_takeover", b"client_no_context_takeover")
_DEFLATE_BITS = (b"server_max_window_bits", b"client_max_window_bits")

VERSION = b"13"


class HandshakeRefused(Exception):
    """The request is no valid opening handshake: answer ``status`` (400 or 426)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: header lines the refusal carries (426: the versions the server speaks)
        self.extra = b"sec-websocket-version: 13\r\n" if status == 426 else b""


def check_handshake(headers: list[tuple[bytes, bytes]], deflate: bool) -> list[tuple[bytes, bytes]]:
    """The canonical handshake request's fields for the framing library, from a
    request's (lower-cased name, trimmed value) pairs; HandshakeRefused if RFC 6455
    4.2.1 says no. ``deflate``: whether permessage-deflate may be negotiated."""
    keys: list[bytes] = []
    versions: list[bytes] = []
    protocols: list[bytes] = []
    offer: bytes | None = None
    for name, value in headers:
        if name == b"sec-websocket-key":
            keys.append(value)
        elif name == b"sec-websocket-version":
            versions.append(value)
        elif name == b"sec-websocket-protocol":
            protocols += _tokens(value, "Sec-WebSocket-Protocol")
        elif name == b"sec-websocket-extensions":
            found = _deflate_offer(value)
            if offer is None:
                offer = found
    if len(keys) != 1:
        raise HandshakeRefused(400, "Sec-WebSocket-Key repeated" if keys else "Sec-WebSocket-Key is missing")
    if not _is_key(keys[0]):
        raise HandshakeRefused(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    if len(versions) > 1:
        raise HandshakeRefused(400, "Sec-WebSocket-Version repeated")
    if not versions or versions[0] != VERSION:
        raise HandshakeRefused(426, "Sec-WebSocket-Version must be 13")
    fields = [
        (b"host", b"localhost"),  # the library needs one, and checks nothing of it
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", keys[0]),
        (b"sec-websocket-version", VERSION),
    ]
    if protocols:
        fields.append((b"sec-websocket-protocol", b", ".join(protocols)))
    if deflate and offer is not None:
        fields.append((b"sec-websocket-extensions", offer))
    return fields


def _is_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _tokens(value: bytes, field: str) -> list[bytes]:
    """The elements of a 1#token list (empty elements skipped, RFC 9110 5.6.1)."""
    out = []
    for part in value.split(b","):
        part = part.strip(b" \t")
        if not part:
            continue
        if _TOKEN.fullmatch(part) is None:
            raise HandshakeRefused(400, f"{field} is not a list of tokens")
        out.append(part)
    if not out:
        raise HandshakeRefused(400, f"{field} is empty")
    return out


def _deflate_offer(value: bytes) -> bytes | None:
    """Check a Sec-WebSocket-Extensions value (HandshakeRefused if it breaks the
    grammar); its first usable permessage-deflate offer, canonical, or None."""
    found: bytes | None = None
    for element in _split_list(value):
        match = _EXTENSION.fullmatch(element)
        if match is None:
            raise HandshakeRefused(400, "Sec-WebSocket-Extensions is malformed")
        if found is None and match.group(1).lower() == b"permessage-deflate":
            found = _deflate_params(match.group(2))
    return found


def _split_list(value: bytes) -> list[bytes]:
    """Split on commas outside quoted strings; empty elements are skipped."""
    parts: list[bytes] = []
    start = 0
    quoted = escaped = False
    for i, byte in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and byte == 0x5C:
            escaped = True
        elif byte == 0x22:
            quoted = not quoted
        elif byte == 0x2C and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    elements = [p for p in parts if p.strip(b" \t")]
    if not elements:
        raise HandshakeRefused(400, "Sec-WebSocket-Extensions is empty")
    return elements


def _deflate_params(params: bytes) -> bytes | None:
    """One permessage-deflate offer's parameters, canonical, or None if RFC 7692 7.1
    rules it out (an unknown or repeated parameter, a bad window size)."""
    seen: dict[bytes, bytes | None] = {}
    for match in _PARAM_RE.finditer(params):
        name = match.group(1).lower()
        raw = match.group(2)
        value = raw[1:-1].replace(b"\\", b"") if raw is not None and raw[:1] == b'"' else raw
        if name in seen:
            return None
        if name in _DEFLATE_FLAGS:
            if value is not None:
                return None
        elif name in _DEFLATE_BITS:
            if value is None:
                if name == b"server_max_window_bits":
                    return None  # a value is required here (7.1.2.1)
            elif not (value.isdigit() and value[:1] != b"0" and 9 <= int(value) <= 15):
                return None
        else:
            return None
        seen[name] = value
    canonical = [b"permessage-deflate"]
    for name, value in seen.items():
        canonical.append(name if value is None else name + b"=" + value)
    return b"; ".join(canonical)
