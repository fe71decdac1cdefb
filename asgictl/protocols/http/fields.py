"""The grammar of the fields an app puts in a response, for every HTTP version.

RFC 9110 5.1: a field name is a token; 5.5: a field value is made of visible characters
(VCHAR), obs-text (0x80-0xFF), SP and HTAB. Anything else from the app would be written
as-is: a colon or a space in a name (``x-a: injected`` reads as a field of its own), CR or
LF (a second line, response splitting), NUL, other control bytes or DEL (read differently
by each client and proxy). A response with such a field is refused before it is written.

Ways to check, one grammar:

- names go through a cache, ``KNOWN_NAMES`` (:func:`learn_name` for a name not in it):
  an app uses a handful of names, so each is matched against the token grammar once,
  and afterwards costs one dict lookup, which also tells the framing whether the name
  is one it frames the response by.
- values go through a cache too, ``KNOWN_VALUES`` (:func:`check_value`, for a response
  head of either HTTP version; :func:`learn_value` for a value not in it): an app
  sends the same few content types, cache policies and the like on every response, so
  each is scanned once (``bytes.translate`` then ``bytes.count``, one
  C-level pass) and afterwards costs one set lookup; long values are scanned every time,
  and the cache stops growing at a bound.
- :func:`count_line_breaks` checks a whole joined header block in one such pass (the
  trailers of an HTTP/1.1 response).
- :func:`check_values` checks a list of values in the same single pass (joined by LF),
  and :func:`check_fields` a list of (name, value) pairs: for fields sent as a list
  (HTTP/2 trailers) or a few fields (a denial response).

The framing fields are held to one rule for every version: :func:`content_length`
(1*DIGIT, one value, identical repeats folded; RFC 9110 8.6) and
:func:`check_transfer_coding` (only ``chunked``, which asks the server to frame it).

Errors are :class:`InvalidField` (a RuntimeError, as for any ASGI message the server
cannot send): raised from the app's ``send``, so the app gets it and, if it lets it
escape, the server answers 500 (nothing was written) or cuts the connection (trailers,
after the body).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: A token (RFC 9110 5.6.2).
TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(TCHAR + rb"+")
#: One byte a field value must not hold (RFC 9110 5.5): controls but HTAB, and DEL.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: What a response field name means to the HTTP/1.1 cycle (0: nothing special).
ORDINARY = 0
CONTENT_LENGTH = 1
TRANSFER_ENCODING = 2
CONNECTION = 3
#: server or date: the app's replaces the server's default one
DEFAULT_FIELD = 4
_SPECIAL = {
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"server": DEFAULT_FIELD,
    b"date": DEFAULT_FIELD,
}

#: Names already found to be tokens, as the app spelled them, with their kind.
KNOWN_NAMES: dict[bytes, int] = dict(_SPECIAL)
#: Past this many names the cache stops growing (an app inventing names per request
#: then pays one regex match per field, and the memory stays bounded).
KNOWN_NAMES_MAX = 2048

#: Field values already found valid (RFC 9110 5.5), as the app gave them.
KNOWN_VALUES: set[bytes] = set()
#: Past this many values the cache stops growing; a value longer than
#: KNOWN_VALUE_SIZE is never kept (a cookie, a signed URL): bounded memory.
KNOWN_VALUES_MAX = 2048
KNOWN_VALUE_SIZE = 128

#: Fields a sender must not put in a trailer section (RFC 9110 6.5.1): framing, routing,
#: request modifiers, authentication, content handling. Used for requests and responses.
FORBIDDEN_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"trailer",
        b"te",
        b"expect",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"max-forwards",
        b"cache-control",
        b"range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
    }
)

# Every byte a field value may not hold, and CR, becomes LF; the rest stays as it is.
_NOT_IN_VALUES = bytes(c for c in range(32) if c != 0x09) + b"\x7f"
_TO_LF = bytes.maketrans(_NOT_IN_VALUES, b"\n" * len(_NOT_IN_VALUES))


class InvalidField(RuntimeError):
    """A response field the app gave breaks the grammar of RFC 9110 5.1/5.5."""


def learn_name(name: bytes) -> int:
    """Check a name not in the cache yet, and remember it if it is a token."""
    if type(name) is not bytes:
        raise TypeError(f"a header name must be bytes, not {type(name).__name__}")
    if _TOKEN.fullmatch(name) is None:
        raise InvalidField(f"Invalid HTTP header name {name!r}: not a token (RFC 9110 5.1)")
    kind = _SPECIAL.get(name.lower(), ORDINARY)
    if len(KNOWN_NAMES) < KNOWN_NAMES_MAX:
        KNOWN_NAMES[name] = kind
    return kind


def learn_value(value: bytes) -> None:
    """Check a field value not in the cache yet: InvalidField unless it is a
    field-value (RFC 9110 5.5), TypeError unless it is bytes (or bytearray, memoryview:
    checked, not kept). Remembered if short."""
    keep = type(value) is bytes
    if not keep:
        if not isinstance(value, (bytearray, memoryview)):
            raise TypeError(f"a header value must be bytes, not {type(value).__name__}")
        value = bytes(value)
    if count_line_breaks(value):
        raise invalid_block(value)
    if keep and len(value) <= KNOWN_VALUE_SIZE and len(KNOWN_VALUES) < KNOWN_VALUES_MAX:
        KNOWN_VALUES.add(value)


def check_value(value: bytes) -> None:
    """InvalidField unless ``value`` is a field-value (RFC 9110 5.5), TypeError unless it
    is bytes (bytearray, memoryview); a value in the cache costs one lookup. (HTTP/1.1's
    start_response has these lines inline.)"""
    try:
        if value in KNOWN_VALUES:
            return
    except TypeError:  # unhashable: a bytearray or memoryview, checked each time
        pass
    learn_value(value)


def count_line_breaks(block: bytes) -> int:
    """How many CR, LF and other bytes that no field value may hold ``block`` has, all
    together: a header block the server joined from ``n`` field lines (each ending with
    its own CRLF) and values that obey RFC 9110 5.5 has exactly ``2 * n``; any CR, LF,
    NUL, other control byte (HTAB excepted) or DEL inside a name or value makes it more.
    """
    return block.translate(_TO_LF).count(10)


def check_values(values: list[bytes]) -> None:
    """InvalidField unless every one of ``values`` is a field-value (RFC 9110 5.5): one
    C-level scan of the values joined by LF, as for a joined header block."""
    if values:
        joined = b"\n".join(values)
        if count_line_breaks(joined) != len(values) - 1:
            raise invalid_block(joined.replace(b"\n", b"\r\n"))


def check_fields(fields: Iterable[tuple[bytes, bytes]]) -> None:
    """Check (name, value) pairs: names are tokens, values field-values."""
    values = []
    for name, value in fields:
        if KNOWN_NAMES.get(name) is None:
            learn_name(name)
        values.append(value)
    check_values(values)


def content_length(value: bytes, seen: int | None) -> int:
    """The response's Content-Length once the field value ``value`` is read (``seen``:
    the value of an earlier Content-Length field, None if none). RFC 9110 8.6: 1*DIGIT
    ("+2", "1_0" or "2, 3" would be read differently by each client) and one value; an
    identical repeat is folded by the caller. InvalidField otherwise."""
    if not value.isdigit():
        raise InvalidField(f"Invalid Content-Length {value!r}: not 1*DIGIT (RFC 9110 8.6)")
    length = int(value)
    if seen is not None and length != seen:
        raise InvalidField("Differing Content-Length values (RFC 9110 8.6)")
    return length


def check_transfer_coding(value: bytes) -> None:
    """The app's Transfer-Encoding may only ask for ``chunked``: the server does the
    framing (RFC 9112 6.1), and any other coding could not be framed honestly."""
    if list_tokens(value) != [b"chunked"]:
        raise InvalidField(f"Unsupported response Transfer-Encoding {value!r}")


#: Content-Length and Transfer-Encoding in one response (RFC 9112 6.2).
BOTH_FRAMINGS = "Content-Length and Transfer-Encoding in one response (RFC 9112 6.2)"


def invalid_block(block: bytes) -> InvalidField:
    """The error for a joined block :func:`count_line_breaks` found wrong: it names the
    first offending byte (found again here; only a refused response pays for it)."""
    match = _BAD_VALUE_BYTE.search(block.replace(b"\r\n", b""))
    what = repr(match.group()) if match else "CR or LF"
    return InvalidField(f"Invalid HTTP header: {what} in a field value (RFC 9110 5.5)")


def check_trailer_name(name: bytes) -> None:
    """InvalidField for a field a trailer section must not hold (RFC 9110 6.5.1)."""
    if name.lower() in FORBIDDEN_TRAILERS:
        raise InvalidField(f"HTTP field {name!r} is not allowed in a trailer section (RFC 9110 6.5.1)")


def list_tokens(value: bytes) -> list[bytes]:
    """The lower-cased elements of a comma-separated list field (RFC 9110 5.6.1), each
    trimmed of optional whitespace (SP and HTAB, 5.6.3); empty elements are dropped."""
    return [t for t in (part.strip(b" \t").lower() for part in value.split(b",")) if t]
