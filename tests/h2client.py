"""An HTTP/2 client for tests: the ``h2`` library as the peer of the server's connection,
over the in-memory transport (``H2Harness``) or a real socket (``raw_frames``).

The client validates and normalizes nothing of what it sends, so that tests can send
what a broken or hostile peer sends; ``frames(...)`` reads the server's answer frame by
frame (hyperframe), for what the h2 client would refuse to parse; ``get_over(sock, ...)``
makes one request on a socket the test opened itself (a chosen source address, a
proxy in between).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from memory import Harness

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client_connection(**settings: int) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    if settings:
        conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    conn.initiate_connection()
    return conn


def request_headers(
    path: bytes = b"/", method: bytes = b"GET", authority: bytes = b"example", scheme: bytes = b"http"
) -> list[tuple[bytes, bytes]]:
    return [(b":method", method), (b":path", path), (b":scheme", scheme), (b":authority", authority)]


def frames(data: bytes) -> list[Frame]:
    """The frames in ``data`` (the server's bytes), parsed one by one."""
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def goaway(data: bytes) -> GoAwayFrame | None:
    found = [f for f in frames(data) if isinstance(f, GoAwayFrame)]
    return found[-1] if found else None


def resets(data: bytes) -> dict[int, int]:
    """stream id -> error code of every RST_STREAM in ``data``."""
    return {f.stream_id: f.error_code for f in frames(data) if isinstance(f, RstStreamFrame)}


def headers_frame(
    stream_id: int, fields: list[tuple[bytes, bytes]], encoder: hpack.Encoder, **kw: Any
) -> bytes:
    """A HEADERS frame (END_HEADERS, and END_STREAM unless ``end_stream=False``)."""
    flags = ["END_HEADERS"]
    if kw.get("end_stream", True):
        flags.append("END_STREAM")
    frame = HeadersFrame(stream_id, flags=flags)
    frame.data = encoder.encode(fields)
    return frame.serialize()


def get_over(sock: socket.socket, path: bytes = b"/", lead: bytes = b"") -> tuple[dict[bytes, bytes], bytes]:
    """One GET by prior knowledge on ``sock`` (after ``lead``): its headers and body."""
    client = client_connection()
    client.send_headers(1, request_headers(path), end_stream=True)
    sock.sendall(lead + client.data_to_send())
    headers: dict[bytes, bytes] = {}
    body = b""
    while True:
        data = sock.recv(65536)
        assert data, "the connection closed before the response was complete"
        for event in client.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                headers.update(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                client.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                return headers, body
        sock.sendall(client.data_to_send())


class H2Harness:
    """A server connection (through the HTTP/1.1 class ``http`` that hands it over) and an
    h2 client talking to it in memory. ``events()`` feeds the client what the server
    wrote since the last call and returns the client's events."""

    def __init__(self, app: Any, http: str = "httptools", lead: bytes = b"", **options: Any) -> None:
        """``lead``: bytes sent before the client's preface (a PROXY protocol header)."""
        # ASGICTL_TEST_HTTP2_ENGINE=zttp runs the HTTP/2 unit tests against that engine.
        options.setdefault("http2_engine", os.environ.get("ASGICTL_TEST_HTTP2_ENGINE", "auto"))
        self.harness = Harness(app, http=http, **options)
        self.transport = self.harness.transport
        self.state = self.harness.state
        self.client = client_connection()
        self.seen = 0
        self.send(lead + self.client.data_to_send())

    @property
    def server(self) -> Any:
        return self.transport.protocol

    def send(self, data: bytes) -> None:
        """Raw bytes to the server."""
        self.harness.feed(data)

    def flush(self) -> None:
        """What the client has to send, to the server."""
        data = self.client.data_to_send()
        if data:
            self.send(data)

    def settle(self, timeout: float = 5.0) -> None:
        """Until the apps have returned (or ``timeout``)."""
        self.flush()
        self.harness.settle(timeout)

    def turn(self, rounds: int = 5) -> None:
        """A few turns of the loop: for apps that are still waiting on purpose."""
        self.flush()

        async def spin() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)

        self.harness.loop.run_until_complete(spin())

    def written(self) -> bytes:
        """The server's bytes since the last events()/written() call."""
        data = self.transport.data[self.seen :]
        self.seen = len(self.transport.data)
        return data

    def events(self) -> list[Any]:
        events = self.client.receive_data(self.written())
        self.flush()
        return events

    def request(
        self, path: bytes = b"/", method: bytes = b"GET", body: bytes | None = None, **kw: Any
    ) -> int:
        stream_id = self.client.get_next_available_stream_id()
        headers = request_headers(path, method) + list(kw.get("headers", []))
        self.client.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            for start in range(0, len(body), 16384):
                piece = body[start : start + 16384]
                self.client.send_data(stream_id, piece, end_stream=start + len(piece) >= len(body))
        self.flush()
        return stream_id

    def response(self, stream_id: int, timeout: float = 5.0) -> tuple[dict[bytes, bytes], bytes, list[Any]]:
        """(headers, body, the events of that stream) once its response is complete."""
        headers: dict[bytes, bytes] = {}
        body = b""
        mine: list[Any] = []
        for _ in range(200):
            self.turn()
            for event in self.events():
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                mine.append(event)
                if isinstance(event, h2.events.ResponseReceived):
                    headers.update(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    headers.update({b"trailer:" + k: v for k, v in event.headers})
            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in mine):
                return headers, body, mine
        raise AssertionError(f"stream {stream_id} not complete: {mine}")

    def close(self) -> None:
        self.harness.close()
