"""The httptools (llhttp, in C) adapter: parser callbacks become HTTPConnection calls.

llhttp is strict about line endings, folding and control bytes; what it lets through
that the policy refuses is checked by the shared ``strict.check_head``. Trailer fields
arrive through ``on_header`` after the head is complete: they are checked when the
message ends and dropped (ASGI has no request trailers).

Each header field costs a call from C into Python, so ``on_header`` does the least:
the name lower-cased, the value without trailing whitespace, the pair kept; the checks
run once per head.
"""

from __future__ import annotations

import httptools

from asgictl.protocols.http.connection import HTTPConnection
from asgictl.protocols.http.strict import InvalidRequest, check_request_line, check_trailer
from asgictl.protocols.state import ServerState

#: Decoded once instead of per request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class HttpToolsConnection(HTTPConnection):
    __slots__ = ("first_read", "headers", "parser", "stopped", "url")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        #: the read a request head started in, until the head is parsed
        self.first_read = b""
        #: the fields of the head being parsed; after the head, its trailer fields
        self.headers: list[tuple[bytes, bytes]] = []
        self.stopped = False

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        if self.parsing is None:
            head_bytes = self.head_bytes
            if not head_bytes and not self.url:
                # A head starts here (see on_headers_complete); unless a pipelined one
                # began at the end of the last read: llhttp has handed over its target
                # then, since it passes every partial span on when a read ends.
                self.first_read = data
            head_bytes += len(data)
            if head_bytes > self.state.limit_head:
                # Only the head counts: the same read may carry (much) body after it.
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    head_bytes -= len(data) - end - 4
                if head_bytes > self.state.limit_head:
                    self.stopped = True
                    self.parse_error(431, "request head too large")
                    return
            # Counted before parsing: begin_request resets it when the head is complete.
            self.head_bytes = head_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.stopped = True
            # The head ended at offset exc.args[0] of this chunk; what follows is the
            # new protocol's. A WebSocket handshake is handed over; any other upgrade
            # is answered as plain HTTP and nothing more is read.
            if self.upgrade(data[exc.args[0] :] if exc.args else b""):
                return
            self.closing = True
        except httptools.HttpParserCallbackError as exc:
            self.stopped = True
            refused = exc.__context__
            if not isinstance(refused, InvalidRequest):
                raise
            self.parse_error(refused.status, refused.reason)
        except httptools.HttpParserError as exc:
            self.stopped = True
            reason = _reason(exc)
            # A well-formed but unsupported version is 505, as the shared check says.
            self.parse_error(505 if "Invalid HTTP version" in reason else 400, reason)
        if self.cycle is None and self.pipeline:
            self.start_next()

    # ------------------------------------------------------------- parser callbacks

    # No on_message_begin: each Python callback costs a C-to-Python call per request,
    # so the per-message resets happen where a message ends instead.

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading whitespace of a value but keeps trailing (RFC 9110 5.5).
        # It refuses control bytes but HTAB in values, so rstrip() with no argument
        # (ASCII whitespace, its fast path) strips exactly SP and HTAB here.
        self.headers.append((name.lower(), value.rstrip()))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        headers = self.headers
        url = self.url
        self.headers = []  # the scope owns that list now
        self.url = b""
        # llhttp accepts runs of spaces in the request line where h11 and RFC 9112's
        # grammar do not: refuse them alike. With single spaces the line's CR sits
        # right after "METHOD SP target SP HTTP/x.y"; only when it does not is the
        # line looked at closely (also when it was split over reads).
        first, self.first_read = self.first_read, b""
        end = len(method) + len(url) + 10
        if len(first) <= end or first[end] != 13:
            check_request_line(first)
            version = parser.get_http_version()
        elif first.startswith(b"1.1", end - 3):
            # The line is "METHOD SP target SP HTTP/1.1": the version is read from it
            # instead of formatted by the parser (a str.format per request).
            version = "1.1"
        else:
            version = parser.get_http_version()
        # The reads since the head began bound its size (none is known for a head that
        # began inside a read, after a pipelined request).
        head_size = self.head_bytes if first else None
        self.begin_request(
            _METHODS.get(method) or method.decode("ascii"),
            url,
            version,
            headers,
            parser.should_keep_alive(),
            head_size,
        )

    def on_body(self, body: bytes) -> None:
        self.request_body(body)

    def on_message_complete(self) -> None:
        trailers = self.headers
        if trailers:
            # Fields after a chunked body: checked, then dropped.
            self.headers = []
            for name, _ in trailers:
                check_trailer(name)
        self.end_of_request()


def _reason(exc: Exception) -> str:
    return "Invalid HTTP request" + (f": {exc.args[0]}" if exc.args and exc.args[0] else "")
