"""The h11 (pure Python) adapter: h11 events become HTTPConnection calls.

h11 is used for parsing only; responses are written by the shared cycle. h11's
connection object models one request/response at a time, so after each complete
request a fresh one takes over the bytes that followed it (``trailing_data``).

h11 is lenient where the policy is not (bare LF, obs-fold, control bytes): the raw
bytes of each head are kept until h11 has parsed it and checked with
``strict.check_raw_head`` first. h11 stops after any request with an Upgrade field;
one the server declines is plain HTTP/1.1, and a fresh parser takes over the bytes
after it as after any other request.
"""

from __future__ import annotations

import h11

from asgictl.protocols.http.connection import HTTPConnection
from asgictl.protocols.http.strict import (
    InvalidRequest,
    check_raw_head,
    check_trailer,
    head_end,
    skip_empty_lines,
)
from asgictl.protocols.state import ServerState


class H11Connection(HTTPConnection):
    __slots__ = ("parser", "raw_head")

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.parser = self._new_parser()
        #: bytes of a head not yet parsed, or None while a body is being read
        self.raw_head: bytearray | None = bytearray()

    def _new_parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.state.h11_max_incomplete_event_size)

    def feed(self, data: bytes) -> None:
        data = self._check_head_bytes(data)
        if data:
            self.parser.receive_data(data)
            self._handle_events()

    def eof_received(self) -> bool | None:
        if not self.stopped:
            self.parser.receive_data(b"")
            self._handle_events()
        return super().eof_received()

    def _check_head_bytes(self, data: bytes) -> bytes:
        """``data`` to feed h11 (empty lines before a request line taken out: h11 refuses
        them), or b"" when there is nothing to feed or the head was refused."""
        raw = self.raw_head
        if raw is None:
            return data
        if not raw or raw == b"\r":  # no head yet (a lone CR held back: not fed to h11)
            if raw:
                data = b"\r" + data
                raw.clear()
            if data[:1] == b"\r":  # CR: an empty line, or bytes the policy refuses
                data = data[skip_empty_lines(data) :]
                if data == b"\r":
                    # An empty line's CR whose LF has not arrived: held back until it has.
                    raw += data
                    return b""
        raw += data
        end = head_end(raw)
        if end >= 0:
            try:
                check_raw_head(raw[:end])
            except InvalidRequest as exc:
                self._refuse(exc)
                return b""
        return data

    def _refuse(self, exc: InvalidRequest) -> None:
        self.stopped = True
        self.parse_error(exc.status, exc.reason)

    def _handle_events(self) -> None:
        while not self.stopped:
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as exc:
                self.stopped = True
                self.parse_error(exc.error_status_hint, f"Invalid HTTP request: {exc}")
                return
            kind = type(event)
            try:
                if kind is h11.Data:
                    self.request_body(event.data)  # type: ignore[union-attr]
                elif kind is h11.Request:
                    self.raw_head = None
                    self._on_request(event)  # type: ignore[arg-type]
                elif kind is h11.EndOfMessage:
                    for name, _ in event.headers:  # type: ignore[union-attr]
                        check_trailer(name)
                    self.end_of_request()
                    if self.parser.their_state is h11.MIGHT_SWITCH_PROTOCOL and self.upgrade(
                        self.parser.trailing_data[0]
                    ):
                        # A WebSocket handshake was handed over: what follows is not
                        # HTTP/1.1. A declined upgrade is plain HTTP/1.1 and parsing
                        # goes on below (a CONNECT has closing set: nothing follows).
                        self.stopped = True
                        return
                    if self.closing:
                        # Bytes after a request that closes the connection are never parsed.
                        self.stopped = True
                        return
                    data, closed = self.parser.trailing_data
                    self.parser = self._new_parser()
                    self.raw_head = bytearray()
                    if data:
                        data = self._check_head_bytes(data)
                        if self.stopped:
                            return
                        if data:
                            self.parser.receive_data(data)
                    if closed:
                        self.parser.receive_data(b"")
                elif event is h11.NEED_DATA or kind is h11.ConnectionClosed or event is h11.PAUSED:
                    # (h11 pauses only after a complete request, which is replaced above.)
                    return
            except InvalidRequest as exc:
                self._refuse(exc)
                return

    def _on_request(self, event: h11.Request) -> None:
        if event.method == b"PRI":  # reserved for HTTP/2's preface (RFC 9113 3.4)
            self.stopped = True
            self.http2_preface()
            return
        headers = list(event.headers)  # lower-cased names, trimmed values, as ASGI wants
        self.begin_request(
            event.method.decode("ascii"), event.target, event.http_version.decode("ascii"), headers
        )
