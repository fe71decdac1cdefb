"""The gunicorn_h1c (picohttpparser, in C) adapter: one call per request head.

gunicorn_h1c's ``parse_request_fast`` parses a whole head in C in one call and hands
over its fields as one list of (name, value) pairs (``asgi_headers``: names lower-cased,
values trimmed of SP/HTAB), built in C: no C-to-Python call per header field, which is
what a field costs with httptools. The head is parsed straight from the bytes read (a
memoryview after a pipelined request): nothing is copied into a parser's buffer.

What the binding checks: CRLF only (no bare LF or CR), no obs-fold, token names with
nothing before the colon, no control bytes in values, methods in upper case, only
HTTP/1.0 and 1.1, the request-target's form against the method, the line and
field-count limits (ours, with gunicorn's arithmetic, which is ours), repeated Host /
Content-Length / Content-Type, Content-Length with Transfer-Encoding, and unknown
transfer codings. What it lets through that the policy refuses: runs of spaces in the
request line and raw bytes above 0x7f in the target (both checked here), and everything
``strict.check_head`` decides, which runs on every head.

The binding parses heads only: the body is framed here, by the Content-Length or the
chunked coding the policy accepted. A chunked body is decoded by
:meth:`H1cConnection._chunked` (RFC 9112 7.1: chunk extensions without control bytes,
trailer fields by the head's grammar and checked against the policy's forbidden set).
A head split over reads is kept until its end arrives, and its end is looked for in the
new bytes only (the binding's ``last_len``).
"""

from __future__ import annotations

import re
from typing import Any

import gunicorn_h1c
from gunicorn_h1c import parse_request_fast
from gunicorn_h1c._parser_fast import IncompleteError

from asgictl.protocols.http.connection import HTTPConnection
from asgictl.protocols.http.fields import TCHAR
from asgictl.protocols.http.strict import (
    FRAMED,
    TRAILER_LINE,
    UPGRADE,
    InvalidRequest,
    check_request_line,
    check_trailer,
    check_transfer_encoding,
    skip_empty_lines,
)
from asgictl.protocols.state import ServerState

#: Decoded once instead of per request (CONNECT, which switches, is not among them).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
#: The most fields picohttpparser reads in a head (more: a parse error, for us 431).
_MAX_FIELDS = 256

#: A chunk-size line (RFC 9112 7.1): hex digits, then chunk extensions (their names and
#: values without control bytes, as llhttp reads them), CRLF.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?)\r\n")
#: What a head not yet complete starts with: a method so far, or a method and a space
#: (after the one empty line a request line may follow).
_START = re.compile(rb"(?:\r\n?)?(?:%s+ |%s*\Z)" % (TCHAR, TCHAR))
#: A request line with a well-formed version (for the 505 of an unsupported one).
_VERSIONED_LINE = re.compile(rb"[^ \r\n]+ [^ \r\n]+ (HTTP/[0-9]\.[0-9])\r\n")
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:[ \t]*([^\r\n]*)", re.IGNORECASE)

#: chunk_left's states besides a count of chunk-data bytes still to come
_SIZE_LINE = 0
_DATA_CRLF = -1
_TRAILERS = -2


class H1cConnection(HTTPConnection):
    __slots__ = ("body_left", "chunk_left", "chunk_line", "chunk_trailers", "partial", "switching")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        #: the start of a head whose end has not arrived yet
        self.partial: bytearray | None = None
        #: Content-Length body bytes still to come
        self.body_left = 0
        #: None, or where the decoding of a chunked body is: chunk-data bytes still to
        #: come (> 0), _SIZE_LINE, _DATA_CRLF or _TRAILERS
        self.chunk_left: int | None = None
        #: the start of a chunk-size or trailer line not complete in the last read
        self.chunk_line = b""
        self.chunk_trailers = 0
        #: the request asks to switch protocols (Upgrade) or is a CONNECT
        self.switching = False

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        state = self.state
        while True:
            if self.parsing is not None:
                # A body: framed by Content-Length, or chunked.
                pos = self._body(data, pos) if self.body_left else self._chunked(data, pos)
                if pos < 0:
                    return
            else:
                # A head, parsed in one call (the part kept from earlier reads first).
                partial = self.partial
                if partial is None:
                    if data[pos] == 13:  # CR: an empty line, or bytes the parser refuses
                        # Empty lines before a request line are ignored, any number of
                        # them as llhttp does (picohttpparser skips one).
                        pos = skip_empty_lines(data, pos)
                        if pos == end:
                            return
                    last = 0
                    head: bytes | bytearray | memoryview = memoryview(data)[pos:] if pos else data
                else:
                    last = len(partial)
                    partial += memoryview(data)[pos:] if pos else data
                    if partial[0] == 13:
                        # An empty line's CR kept from the last read, its LF in this one
                        # (and maybe more empty lines): ignored, as within one read.
                        skip = skip_empty_lines(partial)
                        if skip:
                            del partial[:skip]
                            last -= skip  # (pos below stays an offset into data)
                            if not partial:
                                self.partial = None
                                return
                    head = partial
                try:
                    # A field's size is judged by the policy on the complete head, as
                    # with the other parsers (--limit-head bounds the head meanwhile).
                    request = parse_request_fast(
                        head, last if last > 0 else 0, state.limit_line, state.limit_fields, state.limit_head
                    )
                except IncompleteError:
                    if partial is None:
                        self.partial = partial = bytearray(head)
                    self._check_partial(partial)
                    return
                except ValueError as exc:  # the base of its refusals (each module has one)
                    self.partial = None
                    self.stopped = True
                    self._refused(exc, bytes(head))
                    return
                self.partial = None
                consumed = request.consumed
                method = request.method
                target = request.path
                # picohttpparser allows runs of spaces in the request line: with single
                # ones the line's CR sits right after "METHOD SP target SP HTTP/1.x",
                # and the byte before it is the minor version (the binding accepts 1.0
                # and 1.1 only). Else the line is looked at closely, if the head opens
                # with it (not after the one empty line the binding skips before it).
                line_end = len(method) + len(target) + 10
                try:
                    if head[line_end] == 13:
                        version = "1.1" if head[line_end - 1] == 49 else "1.0"
                        # The binding measured this very line against --limit-request-line
                        # and counted the fields against --limit-request-fields.
                        line_checked = True
                    else:
                        version = _request_line(request, head, consumed)
                        line_checked = False
                    if not target.isascii():
                        # picohttpparser passes bytes above 0x7f in the target: RFC 3986
                        # wants them percent-encoded, and llhttp and h11 refuse them.
                        raise InvalidRequest(400, "invalid request target")
                    name = _METHODS.get(method)
                    if name is None:
                        line_checked = False  # the policy judges the method
                        if method == b"PRI":  # reserved for HTTP/2's preface (RFC 9113 3.4)
                            self.stopped = True
                            self.http2_preface()
                            return
                        name = method.decode("ascii")
                        self.switching = name == "CONNECT"
                    # The head's exact size bounds its fields.
                    headers = request.asgi_headers
                    flags = self.begin_request(name, target, version, headers, consumed, line_checked)
                    if flags & UPGRADE:
                        self.switching = True
                except InvalidRequest as exc:
                    self.stopped = True
                    self.parse_error(exc.status, exc.reason)
                    return
                pos += consumed - last
                # The binding's framing is read only when the policy saw a framing
                # field: a request without one ends with its head (two lookups less).
                if flags & FRAMED:
                    if request.has_chunked:
                        self.chunk_left = _SIZE_LINE
                        self.chunk_trailers = 0
                        continue
                    length = request.content_length
                    if length > 0:
                        # The body's first part is in this read, usually all of it.
                        stop = pos + length
                        if stop > end:
                            self.body_left = stop - end
                            if pos < end:
                                self.request_body(data[pos:])
                                if self.parsing is None:  # too large: answered and closed
                                    self.stopped = True
                            return
                        self.request_body(data[pos:stop])
                        if self.parsing is None:
                            self.stopped = True
                            return
                        pos = stop
            # A request ended at pos: end_of_request, inline (a call less per request).
            cycle = self.parsing
            if cycle is not None:
                self.parsing = None
                cycle.more_body = False
                if cycle.waiter is not None:
                    cycle.wake()
            if self.switching:
                # A WebSocket handshake is handed over with the bytes after it; a
                # declined upgrade is plain HTTP/1.1, and what follows is parsed (a
                # CONNECT has closing set: nothing follows).
                self.switching = False
                if self.upgrade(data[pos:]):
                    self.stopped = True
                    return
            if self.closing:
                # Bytes after a request that closes the connection are never parsed.
                self.stopped = True
                return
            if pos == end:
                return

    def _body(self, data: bytes, pos: int) -> int:
        """Content-Length body bytes from ``data[pos:]``: the offset just past the
        body's end, or -1 when all of ``data`` was taken (the body goes on) or the body
        was too large (answered and closed)."""
        left = self.body_left
        stop = pos + left
        end = len(data)
        if stop >= end:
            self.body_left = stop - end
            self.request_body(data[pos:] if pos else data)
            stop = end
        else:
            self.body_left = 0
            self.request_body(data[pos:stop])
        if self.parsing is None:
            self.stopped = True
            return -1
        return -1 if self.body_left else stop

    def _check_partial(self, partial: bytearray) -> None:
        """A head not complete yet: refuse now what can never become a request."""
        if not _START.match(partial):
            # picohttpparser waits for a head's end before it judges its bytes: bytes
            # that cannot start a request (a TLS hello...) are refused now, as llhttp
            # and h11 do, not when the client stops.
            self.stopped = True
            self.parse_error(400, "Invalid HTTP request: not a request line")
        elif (
            len(partial) > self.state.limit_line + 1 and partial.find(b"\n", 0, self.state.limit_line + 2) < 0
        ):
            # Its request line is already too long (and would be scanned again on every
            # read until --limit-head).
            self.stopped = True
            self.parse_error(414, "request line too long")

    def _refused(self, exc: Exception, head: bytes) -> None:
        """The binding refused ``head``: the policy's answer."""
        if head.startswith(b"PRI "):
            self.http2_preface()  # reserved for HTTP/2's preface (RFC 9113 3.4)
            return
        status, reason = 400, f"Invalid HTTP request: {exc}"
        if isinstance(exc, gunicorn_h1c.LimitRequestLine):
            status, reason = 414, "request line too long"
        elif isinstance(exc, gunicorn_h1c.LimitRequestHeaders) or _field_lines(head) > _MAX_FIELDS:
            status, reason = 431, "too many header fields"
        else:
            line = _VERSIONED_LINE.match(head)
            if line is not None and line.group(1) not in (b"HTTP/1.1", b"HTTP/1.0"):
                status, reason = 505, f"{line.group(1).decode()} is not supported"
            elif isinstance(exc, gunicorn_h1c.InvalidHeader):
                # An unknown transfer coding: 501 where the policy says so, not 400.
                coding = _TRANSFER_ENCODING.search(head)
                if coding is not None:
                    try:
                        check_transfer_encoding(coding.group(1).strip(b" \t"))
                    except InvalidRequest as refused:
                        status, reason = refused.status, refused.reason
        self.parse_error(status, reason)

    # ------------------------------------------------------------- chunked bodies

    def _chunked(self, data: bytes, pos: int) -> int:
        """Decode chunked body bytes from ``data[pos:]`` (RFC 9112 7.1): the offset
        just past the body's end, or -1 when all of ``data`` was taken (the body goes on)
        or the request was refused."""
        line = self.chunk_line
        #: what turns an offset in the bytes decoded here into one in this read's
        shift = 0
        if line:
            # The start of a line came in the last read: joined with this one's rest
            # (lines are short: a size line, or a trailer field bounded below).
            shift = pos - len(line)
            data = line + data[pos:]
            pos = 0
            self.chunk_line = b""
        end = len(data)
        limit = self.state.limit_field_size
        while pos < end:
            left = self.chunk_left
            assert left is not None
            if left > 0:
                stop = min(end, pos + left)
                self.request_body(data if pos == 0 and stop == end else data[pos:stop])
                if self.parsing is None:  # the body was too large: answered and closed
                    self.stopped = True
                    return -1
                left -= stop - pos
                self.chunk_left = left or _DATA_CRLF
                pos = stop
                continue
            eol = data.find(b"\n", pos)
            if eol < 0:
                if end - pos > limit or (left == _DATA_CRLF and end - pos > 1):
                    return self._bad_chunk("chunk line too long" if left != _DATA_CRLF else "missing CRLF")
                self.chunk_line = data[pos:]
                return -1
            if left == _DATA_CRLF:
                if eol != pos + 1 or data[pos] != 13:
                    return self._bad_chunk("missing CRLF after chunk data")
                self.chunk_left = _SIZE_LINE
                pos = eol + 1
            elif left == _SIZE_LINE:
                size = _CHUNK_LINE.fullmatch(data, pos, eol + 1)
                if size is None:
                    return self._bad_chunk("invalid chunk size line")
                pos = eol + 1
                chunk = int(size.group(1), 16)
                self.chunk_left = chunk or _TRAILERS
            else:
                if eol == pos + 1 and data[pos] == 13:
                    # The empty line: the message ends here.
                    self.chunk_left = None
                    return eol + 1 + shift
                field = TRAILER_LINE.fullmatch(data, pos, eol - 1) if data[eol - 1] == 13 else None
                if field is None or eol - pos > limit:
                    return self._bad_chunk("invalid trailer field")
                self.chunk_trailers += 1
                if self.chunk_trailers > self.state.limit_fields:
                    return self._bad_chunk("too many trailer fields")
                try:
                    check_trailer(field.group(1).lower())
                except InvalidRequest as exc:
                    return self._bad_chunk(exc.reason)
                pos = eol + 1
        return -1

    def _bad_chunk(self, reason: str) -> int:
        self.chunk_left = None
        self.stopped = True
        self.parse_error(400, f"Invalid HTTP request: {reason}")
        return -1


def _request_line(request: Any, head: bytes | bytearray | memoryview, size: int) -> str:
    """The version of a head whose request line is not "METHOD SP target SP HTTP/1.x"
    CRLF at its start: refused if the line has runs of spaces (InvalidRequest)."""
    first = bytes(head[:size])
    check_request_line(first if first.startswith(request.method) else b"")
    return "1.1" if request.minor_version else "1.0"


def _field_lines(head: bytes) -> int:
    """How many lines the head at the start of ``head`` has (all of it if incomplete)."""
    end = head.find(b"\r\n\r\n")
    return head.count(b"\n", 0, end if end >= 0 else len(head))
