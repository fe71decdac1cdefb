"""One strictness policy for request heads, whichever parser read them.

httptools (llhttp) and h11 disagree on what they let through: h11 accepts bare-LF line
endings, obs-fold and control bytes in values; neither refuses Content-Length together
with Transfer-Encoding, a duplicated Host or an underscore spelling of a framing header.
Every one of those is a way for a request to mean one thing to a proxy in front and
another thing here (request smuggling). The adapters call :func:`check_head` on every
parsed head, and the h11 adapter also runs :func:`check_raw_head` on the bytes of the head,
so both parsers refuse the same requests with the same answers.

The fields the policy reads (Host, Content-Length, Transfer-Encoding, Connection,
Expect) are judged after optional whitespace (SP and HTAB, RFC 9110 5.6.3) is trimmed
around the value and around each list element, whichever parser read them; whether the
connection persists is decided here from the Connection tokens, not by either parser.

Refusals raise :class:`InvalidRequest` with the status to answer (400, 414, 431, 501,
505) and a short reason; the connection then answers and closes, and nothing after the
bad request is parsed.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from asgictl.protocols.http.fields import FORBIDDEN_TRAILERS, TCHAR, list_tokens


class InvalidRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: The methods llhttp knows; h11 accepts any token, so both are held to this list.
KNOWN_METHODS = frozenset(
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    "SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    "SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)

_HOST = 1
_CONTENT_LENGTH = 2
_TRANSFER_ENCODING = 3
_CONTENT_TYPE = 4
_EXPECT = 5
_FRAMING_ALIAS = 6
_FORWARDED = 7
_CONNECTION = 8
_UPGRADE = 9

#: check_head's result bits
EXPECT_CONTINUE = 1
FORWARDED = 2
#: the connection may carry another request after this one (RFC 9112 9.3)
KEEP_ALIVE = 4
#: the request has an Upgrade field (RFC 9110 7.8)
UPGRADE = 8
#: the request has a Content-Length or Transfer-Encoding field: a body may follow
#: (RFC 9112 6.3); without it the request ends with its head
FRAMED = 16

#: The answer to HTTP/2's connection preface (RFC 9113 3.4) while HTTP/2 is not served.
HTTP2_STATUS = 505
HTTP2_REASON = "HTTP/2 is not served here: use HTTP/1.1"
#: The answer to a PRI request that is not the exact preface, while HTTP/2 is served.
BAD_PREFACE_STATUS = 400
BAD_PREFACE_REASON = "Invalid HTTP/2 connection preface"
#: Header names that need a look; every other header costs one dict membership test.
_SPECIAL = {
    b"host": _HOST,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"content-type": _CONTENT_TYPE,
    b"expect": _EXPECT,
    # WSGI environ (and some proxies) map "_" to "-": these spellings would smuggle a
    # second framing header past a proxy that reads only the dashed one.
    b"content_length": _FRAMING_ALIAS,
    b"transfer_encoding": _FRAMING_ALIAS,
    b"x-forwarded-for": _FORWARDED,
    b"x-forwarded-proto": _FORWARDED,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
}
_HOST_NAME = b"host"


def check_head(
    method: str,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    limits: Any,
    head_size: int | None = None,
    line_checked: bool = False,
) -> int:
    """Refuse a head the policy forbids, else return bits: EXPECT_CONTINUE when the
    client waits for ``100 Continue``, FORWARDED when proxy headers are present,
    KEEP_ALIVE when the connection may carry another request, UPGRADE when it asks to
    switch protocols, FRAMED when a Content-Length or Transfer-Encoding field frames a
    body.

    ``headers`` are (lower-cased name, value) pairs whose values the parser trimmed of
    leading and trailing SP/HTAB. ``limits`` has the ``limit_*`` attributes of the
    ServerState. ``head_size``, when known, is at least the size in bytes of the part
    of the head that holds its fields: when it is no larger than
    ``limit_request_field_size`` no field can be past it, so the fields are not
    measured one by one. ``line_checked``: the parser already held the request line to
    ``limit_request_line``, the fields to ``limit_request_fields``, the version to 1.0
    or 1.1 and the method to KNOWN_METHODS, exactly as here (the h1c adapter, for a
    request line at the start of the head); those checks are then not made twice.
    """
    if not line_checked:
        if len(target) + len(method) + 10 > limits.limit_line:
            raise InvalidRequest(414, "request line too long")
        if len(headers) > limits.limit_fields:
            raise InvalidRequest(431, "too many header fields")
        if version != "1.1" and version != "1.0":
            if version == "0.9":  # llhttp's reading of a request line without a version
                raise InvalidRequest(400, "malformed request line")
            raise InvalidRequest(505, f"HTTP/{version} is not supported")
        if method not in KNOWN_METHODS:
            raise InvalidRequest(400, "unknown method")
    max_field = limits.limit_field_size - 4  # the field line counts ": " and its CRLF
    if head_size is not None and head_size <= max_field:
        # No field can be too large: only the fields that need a look are looked for,
        # and the first one other than Host hands the head to the full check.
        host = 0
        host_value = b""
        for name, value in headers:
            if name in _SPECIAL:
                if name != _HOST_NAME:
                    return _check_fields(method, target, version, headers, limits, 0)
                host += 1
                host_value = value
        if host != 1 and (host or version == "1.1"):
            _refuse_host(host)
        if host and host_value != _last_host[0]:
            check_host(host_value)
        if target[:1] != b"/":
            _check_target(method, target)
        return KEEP_ALIVE if version == "1.1" else 0
    return _check_fields(method, target, version, headers, limits, max_field)


def _check_fields(
    method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]], limits: Any, max_field: int
) -> int:
    """check_head's look at every field: sizes (unless ``max_field`` is 0), Host,
    framing, Content-Type, Expect, Connection, proxy headers; then the target."""
    host = length = encoding = content_type = closed = 0
    flags = KEEP_ALIVE if version == "1.1" else 0
    length_value = encoding_value = host_value = b""
    for name, value in headers:
        if max_field and len(name) + len(value) > max_field:
            raise InvalidRequest(431, "header field too large")
        if name not in _SPECIAL:
            continue
        kind = _SPECIAL[name]
        if kind == _HOST:
            host += 1
            host_value = value
        elif kind == _CONTENT_LENGTH:
            length += 1
            length_value = value
        elif kind == _TRANSFER_ENCODING:
            encoding += 1
            encoding_value = value
        elif kind == _CONTENT_TYPE:
            content_type += 1
        elif kind == _EXPECT:
            if value.lower() == b"100-continue":
                flags |= EXPECT_CONTINUE
        elif kind == _FORWARDED:
            flags |= FORWARDED
        elif kind == _CONNECTION:
            tokens = list_tokens(value)
            if b"close" in tokens:
                closed = 1
                flags &= ~KEEP_ALIVE
            elif b"keep-alive" in tokens and not closed:
                flags |= KEEP_ALIVE
        elif kind == _UPGRADE:
            flags |= UPGRADE
        else:
            raise InvalidRequest(400, f"ambiguous header name {name.decode('latin-1')!r}")
    if host != 1 and (host or version == "1.1"):
        _refuse_host(host)
    if host and host_value != _last_host[0]:
        check_host(host_value)
    if length or encoding:
        flags |= FRAMED
        _check_framing(version, length, length_value, encoding, encoding_value)
        if length and limits.limit_body is not None and int(length_value) > limits.limit_body:
            raise InvalidRequest(413, "request body too large")
    if content_type > 1:
        raise InvalidRequest(400, "duplicate Content-Type header")
    if target[:1] != b"/":
        _check_target(method, target)
    return flags


def _refuse_host(host: int) -> None:
    """One Host field per request, and one in every HTTP/1.1 request (RFC 9112 3.2)."""
    raise InvalidRequest(400, "exactly one Host header is required" if host else "missing Host header")


def _check_framing(
    version: str, length: int, length_value: bytes, encoding: int, encoding_value: bytes
) -> None:
    if length and encoding:
        raise InvalidRequest(400, "both Content-Length and Transfer-Encoding")
    if length:
        if length > 1:
            raise InvalidRequest(400, "duplicate Content-Length header")
        if not length_value.isdigit() or not length_value.isascii():
            raise InvalidRequest(400, "malformed Content-Length")
        return
    if encoding > 1 or version == "1.0":
        raise InvalidRequest(400, "Transfer-Encoding is not allowed here")
    check_transfer_encoding(encoding_value)


def framing_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The field line that frames the body of a request whose head check_head accepted
    (``content-length: N`` or ``transfer-encoding: chunked``), None without a body."""
    for name, value in headers:
        if name == b"content-length":
            return b"content-length: " + value if int(value) else None
        if name == b"transfer-encoding":
            return b"transfer-encoding: chunked"
    return None


def check_transfer_encoding(value: bytes) -> None:
    """Only ``chunked`` is decoded here: it must come last and once (400, RFC 9112
    6.1), alone (501 for any other coding)."""
    # Empty list elements are refused here, though RFC 9110 5.6.1 lets a recipient
    # skip them: parsers differ on them in the one field that frames the body.
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    if codings[-1] != b"chunked" or b"chunked" in codings[:-1] or b"" in codings:
        raise InvalidRequest(400, "Transfer-Encoding must end with chunked, once")
    if len(codings) > 1:
        raise InvalidRequest(501, f"transfer coding {codings[0].decode('latin-1')!r} is not implemented")


def _check_target(method: str, target: bytes) -> None:
    if target == b"*":
        if method != "OPTIONS":
            raise InvalidRequest(400, "the asterisk target is only for OPTIONS")
        return
    if method == "CONNECT":
        # authority-form (RFC 9112 3.2.3): uri-host ":" port, both present
        host, sep, port = target.rpartition(b":")
        if not sep or not host or not port or not _valid_authority(target):
            raise InvalidRequest(400, "CONNECT needs a host:port target")
        return
    # absolute-form (RFC 9112 3.2.2): an http(s) URI with a host (userinfo, which a
    # server only SHOULD refuse, RFC 9110 4.2.4, is let through as before)
    scheme, sep, rest = target.partition(b"://")
    authority = rest
    for end in (b"/", b"?", b"#"):
        authority = authority.partition(end)[0]
    authority = authority.rpartition(b"@")[2]
    if (
        not sep
        or scheme.lower() not in (b"http", b"https")
        or not authority
        or authority[:1] == b":"
        or not _valid_authority(authority)
        or not rest.isascii()
    ):
        raise InvalidRequest(400, "invalid request target")


# uri-host [ ":" port ] (RFC 9112 3.2 and 7230's Host, RFC 3986 3.2.2): an IP-literal
# in brackets (checked by ipaddress), or a reg-name (IPv4 addresses included) of
# unreserved characters, sub-delims and %XX escapes, possibly empty.
_AUTHORITY = re.compile(
    rb"(?:\[(?P<literal>[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::(?P<port>[0-9]*))?"
)
#: Host values found valid (most servers see a handful, and mostly the one they saw
#: last: a comparison with that one is cheaper than hashing the value for the set).
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 1024
_last_host = [b""]


def _valid_authority(value: bytes) -> bool:
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return False
    literal = match.group("literal")
    if literal is not None and not literal.startswith(b"v"):
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    port = match.group("port")
    return not port or int(port) <= 65535


def check_host(value: bytes) -> None:
    """A Host value must be ``uri-host [ ":" port ]`` (RFC 9112 3.2, RFC 3986 3.2.2):
    else 400 (RFC 9112 3.2: "a Host header field with an invalid field value").
    An empty value is valid (a target without authority, e.g. with absolute-form)."""
    if value not in _VALID_HOSTS:
        if not _valid_authority(value):
            raise InvalidRequest(400, "invalid Host header")
        if len(_VALID_HOSTS) < _VALID_HOSTS_MAX:
            _VALID_HOSTS.add(value)
    _last_host[0] = value


def check_trailer(name: bytes) -> None:
    if name in FORBIDDEN_TRAILERS:
        raise InvalidRequest(400, f"field {name.decode('latin-1')!r} is not allowed in a trailer")


# ---------------------------------------------------------------- raw head (h11 path)

_REQUEST_LINE = rb"%s+ [\x21-\x7e\x80-\xff]+ HTTP/[0-9]\.[0-9]\r\n" % TCHAR
# A field line: a token, a colon, optional whitespace, a value of visible characters
# (obs-text allowed) and inner spaces/tabs, optional whitespace, CRLF. No obs-fold, no
# whitespace before the colon, no control bytes, no bare CR or LF.
_FIELD_VALUE = rb"[ \t]*(?:[\x21-\x7e\x80-\xff](?:[\x20\x09\x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?[ \t]*"
_FIELD_LINE = rb"%s+:%s\r\n" % (TCHAR, _FIELD_VALUE)
#: A trailer field line, its CRLF excluded: the grammar of a head's (RFC 9112 7.1.2, 5);
#: the name is group 1. For an adapter that reads the chunked coding itself.
TRAILER_LINE = re.compile(rb"(%s+):%s" % (TCHAR, _FIELD_VALUE))
_HEAD = re.compile(rb"%s(?:%s)*\r\n" % (_REQUEST_LINE, _FIELD_LINE))
# h11 folds "Content-Length: 5, 5" and repeated equal lengths into one value, and
# answers a Transfer-Encoding it does not know with its own status: the raw fields are
# checked first so that both parsers refuse them alike (RFC 9112 6.1, 6.3).
_FRAMING_FIELD = re.compile(rb"\n(content-length|transfer-encoding):[ \t]*([^\r\n]*)", re.IGNORECASE)


def check_request_line(data: bytes) -> None:
    """The request line at the start of ``data`` has single spaces (for llhttp, which
    parses on whitespace boundaries where h11 and the grammar do not). The httptools
    adapter calls it with the read the head started in, only when the line's CR is not
    where single spaces would put it."""
    end = data.find(b"\r\n", 0, 16384)
    spaces = data.count(b" ", 0, end if end >= 0 else 16384)
    if spaces != 2 and (end >= 0 or spaces > 2):
        raise InvalidRequest(400, "malformed request line")


def skip_empty_lines(data: bytes | bytearray, pos: int = 0) -> int:
    """The offset past the empty lines (CRLF) at ``data[pos:]``'s start: a server SHOULD
    ignore at least one before a request line (RFC 9112 2.2); llhttp ignores any number,
    and so does every adapter. A bare LF is not an empty line here."""
    while data.startswith(b"\r\n", pos):
        pos += 2
    return pos


def head_end(data: bytes | bytearray) -> int:
    """Offset just past the head (its blank line) in ``data``, or -1 if not complete.

    A bare-LF blank line counts as an end too, so that the malformed head is seen and
    refused instead of waited on.
    """
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf + 2):
        return lf + 2
    return crlf + 4 if crlf >= 0 else -1


def check_raw_head(head: bytes | bytearray) -> None:
    """Refuse a head whose bytes break RFC 9112's grammar where h11 is lenient."""
    if _HEAD.fullmatch(head) is None:
        raise InvalidRequest(400, "malformed request head")
    lengths = 0
    for name, value in _FRAMING_FIELD.findall(head):
        if name.lower() == b"content-length":
            lengths += 1
            if lengths > 1 or not value.strip().isdigit():
                raise InvalidRequest(400, "malformed or repeated Content-Length")
        elif not head.startswith(b"HTTP/1.0", head.find(b"HTTP/")):
            check_transfer_encoding(value)
