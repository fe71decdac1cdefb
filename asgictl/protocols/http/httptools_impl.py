"""The httptools (llhttp, in C) adapter: parser callbacks become HTTPConnection calls."""

from __future__ import annotations

import httptools

from asgictl.protocols.http.connection import HTTPConnection
from asgictl.protocols.state import ServerState

#: Decoded once instead of per request.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class HttpToolsConnection(HTTPConnection):
    __slots__ = ("expect_continue", "headers", "parser", "stopped", "url")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.stopped = False

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch is offered here: the request was answered as plain
            # HTTP, and whatever follows it is not HTTP/1.1, so nothing more is read.
            self.stopped = True
            self.closing = True
        except httptools.HttpParserError as exc:
            self.stopped = True
            self.parse_error(400, _reason(exc))
        self.after_feed()

    # ------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        self.begin_request(
            _METHODS.get(method) or method.decode("ascii"),
            self.url,
            parser.get_http_version(),
            self.headers,
            parser.should_keep_alive(),
            self.expect_continue,
        )

    def on_body(self, body: bytes) -> None:
        self.request_body(body)

    def on_message_complete(self) -> None:
        self.end_of_request()


def _reason(exc: Exception) -> str:
    return "Invalid HTTP request" + (f": {exc.args[0]}" if exc.args and exc.args[0] else "")
