"""The httptools (llhttp, in C) adapter: parser callbacks become HTTPConnection calls.

llhttp is strict about line endings, folding and control bytes; what it lets through
that the policy refuses is checked by the shared ``strict.check_head``. Trailer fields
arrive through ``on_header`` after the head is complete: they are checked as they come
and dropped (ASGI has no request trailers).

Each header field costs a call from C into Python, so ``on_header`` does the least:
the name lower-cased, the value without trailing whitespace, the pair appended to
``headers`` (after a head, a sink that checks trailer fields and keeps none); the
checks of the head run once, on the whole list.

Two places where llhttp stops and the policy does not, and parsing is resumed with a
fresh parser that is first fed a made-up head carrying only the request's framing
(``Content-Length: N`` or ``Transfer-Encoding: chunked``), so that llhttp reads the rest
of that request's body and then whatever follows it:

- an Upgrade the server declines (anything but a WebSocket handshake it accepts):
  llhttp skips the body of any request asking to switch protocols and pauses, but the
  request is plain HTTP/1.1 (RFC 9110 7.8): its body goes to the app and pipelined
  requests behind it are answered;
- ``Transfer-Encoding: chunked`` followed by an HTAB (optional whitespace, RFC 9110
  5.6.3): llhttp reads the HTAB as part of a coding and refuses the request after the
  head, where h11 and the policy read ``chunked``.
"""

from __future__ import annotations

import httptools

from asgictl.protocols.http.connection import HTTPConnection
from asgictl.protocols.http.cycle import HTTPCycle
from asgictl.protocols.http.strict import (
    InvalidRequest,
    check_request_line,
    check_trailer,
    framing_of,
)
from asgictl.protocols.state import ServerState

#: Decoded once instead of per request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_TE_REFUSED = "Request has invalid `Transfer-Encoding`"
#: What feed_data raises when llhttp stops (an upgrade pause is no HttpParserError).
_STOPS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _TrailerCheck:
    """Stands in for the field list between a head and the end of its message: a
    trailer field (after a chunked body) is checked and dropped, so a long trailer
    section costs no memory and the fields of a head no test of where they are."""

    __slots__ = ()

    def append(self, field: tuple[bytes, bytes]) -> None:
        check_trailer(field[0])


_TRAILERS = _TrailerCheck()


class HttpToolsConnection(HTTPConnection):
    __slots__ = ("first_read", "headers", "parser", "stopped", "url")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        #: the read a request head started in, until its message ends
        self.first_read = b""
        #: the fields of the head being parsed (between heads, the trailer check)
        self.headers: list[tuple[bytes, bytes]] | _TrailerCheck = []
        self.stopped = False

    def data_received(self, data: bytes) -> None:
        if self.preface is not None:
            data = self.sniff(data)
            if not data:
                return
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
        except _STOPS as exc:
            self._stopped(data, exc)
        if self.cycle is None and self.pipeline:
            self.start_next()

    def _stopped(self, data: bytes, exc: Exception) -> None:
        """llhttp stopped in ``data``: answer, or resume with a fresh parser (as many
        times as the rest of ``data`` makes it stop again)."""
        while True:
            resumed = self._after_stop(data, exc)
            if resumed is None:
                return
            data = resumed
            try:
                self.parser.feed_data(data)
                return
            except _STOPS as again:
                exc = again

    def _after_stop(self, data: bytes, exc: Exception) -> bytes | None:
        """The bytes a fresh parser must be fed to go on, or None (handed over, or
        answered and stopped)."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            # The head ended at offset exc.args[0] of this chunk; llhttp skipped its
            # body. A WebSocket handshake is handed over; a declined upgrade is plain
            # HTTP/1.1 and parsing goes on (upgrade()).
            rest = data[exc.args[0] :] if exc.args else b""
            if self.upgrade(rest):
                self.stopped = True
                return None
            return self._resume(rest)
        self.stopped = True
        if isinstance(exc, httptools.HttpParserCallbackError):
            refused = exc.__context__
            if not isinstance(refused, InvalidRequest):
                raise exc
            self.parse_error(refused.status, refused.reason)
            return None
        reason = _reason(exc)
        resumed = self._after_refused_head(data, reason)
        if resumed is not None:
            self.stopped = False
            return resumed
        if "PRI/Upgrade" in reason or "HTTP/2 Connection Preface" in reason:
            self.http2_preface()  # llhttp knows the preface (and the PRI method)
        else:
            # A well-formed but unsupported version is 505, as the shared check says.
            self.parse_error(505 if "Invalid HTTP version" in reason else 400, reason)
        return None

    def _resume(self, rest: bytes) -> bytes | None:
        """After a declined upgrade: the bytes a fresh parser must be fed (the made-up
        head for the request's body, then ``rest``), or None to read nothing more."""
        if self.closing or not self.pipeline:
            self.stopped = True
            return None
        cycle = self.pipeline[-1]  # the upgrade request: llhttp paused right after it
        return self._fresh_parser(cycle) + rest

    def _after_refused_head(self, data: bytes, reason: str) -> bytes | None:
        """llhttp refused, after the head, a ``Transfer-Encoding`` the policy read as
        ``chunked`` (with an HTAB after it): the bytes to resume with, or None (any
        other error, or a head whose start in ``data`` is not known exactly)."""
        cycle = self.parsing
        if (
            cycle is None
            or reason.find(_TE_REFUSED) < 0
            or self.first_read is not data
            or not data.startswith(cycle.scope["method"].encode("ascii") + b" ")
        ):
            return None
        # No other head completed in this read before this one, and the read opens
        # with its request line (or, had the head begun in an earlier read, at least
        # inside it and not in the middle of its final CRLF CRLF). llhttp allows no
        # empty line inside a head: the first one in the read ends it.
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        return self._fresh_parser(cycle) + data[end + 4 :]

    def _fresh_parser(self, cycle: HTTPCycle) -> bytes:
        """A fresh parser takes over after ``cycle``'s head: the made-up head it must be
        fed first to read the rest of that request's body (b"" when it has none); its
        callbacks are ignored (see on_headers_complete)."""
        self.parser = httptools.HttpRequestParser(self)
        self.headers = []
        self.url = b""
        framing = framing_of(cycle.scope["headers"])
        if framing is None:
            return b""
        cycle.more_body = True
        self.parsing = cycle
        return b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n"

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
        if self.parsing is not None:
            # The made-up head of a resumed body (_fresh_parser): nothing to begin.
            self.headers = _TRAILERS
            self.url = b""
            return
        parser = self.parser
        method = parser.get_method()
        headers = self.headers
        url = self.url
        self.headers = _TRAILERS  # the scope owns that list now
        self.url = b""
        # llhttp accepts runs of spaces in the request line where h11 and RFC 9112's
        # grammar do not: refuse them alike. With single spaces the line's CR sits
        # right after "METHOD SP target SP HTTP/x.y"; only when it does not is the
        # line looked at closely, if the read the head started in opens with it (a
        # read that began inside the head of a request pipelined behind another
        # does not, and is left alone).
        first = self.first_read  # cleared when the message ends (on_message_complete)
        end = len(method) + len(url) + 10
        if len(first) <= end or first[end] != 13:
            check_request_line(first if first.startswith(method) else b"")
            version = parser.get_http_version()
        elif first.startswith(b" HTTP/1.1", end - 9):
            # The line is "METHOD SP target SP HTTP/1.1": the version is read from it
            # instead of formatted by the parser (a str.format per request).
            version = "1.1"
        else:
            version = parser.get_http_version()
        # The reads since the head began hold all its fields, and bound their sizes
        # (nothing is known of a head that began inside a read after another message).
        head_size = self.head_bytes if first else None
        self.begin_request(
            _METHODS.get(method) or method.decode("ascii"),
            url,
            version,
            headers,
            head_size,
        )

    def on_body(self, body: bytes) -> None:
        self.request_body(body)

    def on_message_complete(self) -> None:
        self.headers = []
        self.first_read = b""
        self.end_of_request()


def _reason(exc: Exception) -> str:
    return "Invalid HTTP request" + (f": {exc.args[0]}" if exc.args and exc.args[0] else "")
