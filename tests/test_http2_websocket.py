"""WebSockets over HTTP/2 (RFC 8441) through the in-memory transport: the same ASGI
websocket cycle as HTTP/1.1, for both ``--ws`` libraries and both HTTP/1.1 parsers
(the connection is handed over from either)."""

from __future__ import annotations

from typing import Any

import h2.events
import pytest
from h2client import H2Harness
from memory import PARSERS
from ws_support import WS_IMPLS, close, frame, parse_frames, text

pytestmark = pytest.mark.unit

CONNECT = [
    (b":method", b"CONNECT"),
    (b":protocol", b"websocket"),
    (b":scheme", b"http"),
    (b":path", b"/chat?room=1"),
    (b":authority", b"example"),
    (b"sec-websocket-version", b"13"),
    (b"sec-websocket-protocol", b"chat, superchat"),
]


@pytest.fixture(params=[(ws, http) for ws in WS_IMPLS for http in PARSERS], ids=lambda p: f"{p[0]}-{p[1]}")
def impl(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param


async def echo(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": "chat", "headers": [(b"x-app", b"1")]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 4000, "reason": "done"})
            return
        await send({"type": "websocket.send", **{k: v for k, v in message.items() if k in ("text", "bytes")}})


class Tunnel:
    """An extended CONNECT stream and the WebSocket frames both ways."""

    def __init__(self, h: H2Harness) -> None:
        self.h = h
        self.stream_id = h.client.get_next_available_stream_id()
        h.client.send_headers(self.stream_id, CONNECT)
        h.turn()
        self.headers: dict[bytes, bytes] = {}
        self.data = b""
        self.ended = False
        self.reset: int | None = None
        self.read()

    def send(self, data: bytes, end: bool = False) -> None:
        self.h.client.send_data(self.stream_id, data, end_stream=end)
        self.h.turn()
        self.read()

    def read(self) -> None:
        for _ in range(5):
            self.h.turn()
            for event in self.h.events():
                if getattr(event, "stream_id", None) != self.stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    self.headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    self.data += event.data
                    self.h.client.acknowledge_received_data(event.flow_controlled_length, self.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    self.reset = event.error_code

    def frames(self) -> list[tuple[int, bytes]]:
        return parse_frames(self.data)


def test_settings_offer_extended_connect(impl: tuple[str, str]) -> None:
    ws, http = impl
    h = H2Harness(echo, http, ws=ws)
    h.events()
    assert h.client.remote_settings.get(0x8) == 1  # SETTINGS_ENABLE_CONNECT_PROTOCOL
    h.close()
    h = H2Harness(echo, http, ws="none")
    h.events()
    assert not h.client.remote_settings.get(0x8)
    h.close()


def test_echo_and_close(impl: tuple[str, str]) -> None:
    ws, http = impl
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await echo(scope, receive, send)

    h = H2Harness(app, http, ws=ws, ws_per_message_deflate=False)
    t = Tunnel(h)
    assert t.headers[b":status"] == b"200"
    assert t.headers[b"sec-websocket-protocol"] == b"chat" and t.headers[b"x-app"] == b"1"
    assert b"sec-websocket-accept" not in t.headers and b"upgrade" not in t.headers
    scope = seen[0]
    assert scope["type"] == "websocket" and scope["http_version"] == "2"
    assert scope["path"] == "/chat" and scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["chat", "superchat"] and scope["scheme"] == "ws"
    assert not any(name == b"sec-websocket-key" for name, _ in scope["headers"])
    t.send(text("hello"))
    t.send(frame(0x2, b"\x00\x01"))
    assert t.frames() == [(0x1, b"hello"), (0x2, b"\x00\x01")]
    # The app's task is one the server's shutdown waits for, until it ends.
    assert len(h.state.tasks) == 1 and h.server.busy()
    t.send(text("bye"))
    assert t.frames()[-1] == (0x8, (4000).to_bytes(2, "big") + b"done")
    t.send(close(4000), end=True)
    h.settle()
    assert t.ended or t.reset == 0
    assert h.state.active_requests == 0 and not h.state.tasks
    h.close()


def test_client_close_is_disconnect(impl: tuple[str, str]) -> None:
    ws, http = impl
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    h = H2Harness(app, http, ws=ws)
    t = Tunnel(h)
    t.send(close(1001, "away"))
    h.settle()
    assert got == [{"type": "websocket.disconnect", "code": 1001, "reason": "away"}]
    h.close()


def test_reset_stream_is_1006(impl: tuple[str, str]) -> None:
    ws, http = impl
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())

    h = H2Harness(app, http, ws=ws)
    t = Tunnel(h)
    h.client.reset_stream(t.stream_id, 8)
    h.settle()
    assert got and got[0]["code"] == 1006
    h.close()


def test_close_before_accept_is_403(impl: tuple[str, str]) -> None:
    ws, http = impl

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})

    h = H2Harness(app, http, ws=ws)
    t = Tunnel(h)
    h.settle()
    t.read()
    assert t.headers[b":status"] == b"403" and t.ended
    h.close()


def test_denial_response(impl: tuple[str, str]) -> None:
    ws, http = impl

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(
            {"type": "websocket.http.response.start", "status": 401, "headers": [(b"www-authenticate", b"x")]}
        )
        await send({"type": "websocket.http.response.body", "body": b"who are you?"})

    h = H2Harness(app, http, ws=ws)
    t = Tunnel(h)
    h.settle()
    t.read()
    assert t.headers[b":status"] == b"401" and t.headers[b"www-authenticate"] == b"x"
    assert t.data == b"who are you?" and t.ended
    h.close()


def test_message_too_big_is_1009(impl: tuple[str, str]) -> None:
    ws, http = impl
    h = H2Harness(echo, http, ws=ws, ws_max_size=1000, ws_per_message_deflate=False)
    t = Tunnel(h)
    t.send(frame(0x2, b"x" * 5000))
    h.settle()
    t.read()
    assert t.frames()[-1][0] == 0x8 and t.frames()[-1][1][:2] == (1009).to_bytes(2, "big")
    h.close()


def test_http_requests_alongside(impl: tuple[str, str]) -> None:
    """A WebSocket stream and ordinary requests on one connection."""
    ws, http = impl

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await echo(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})

    h = H2Harness(app, http, ws=ws, ws_per_message_deflate=False)
    t = Tunnel(h)
    _, body, _ = h.response(h.request())
    assert body == b"plain"
    t.send(text("still here"))
    assert t.frames() == [(0x1, b"still here")]
    h.close()


def test_extended_connect_needs_ws(impl: tuple[str, str]) -> None:
    _, http = impl
    h = H2Harness(echo, http, ws="none")
    stream_id = h.client.get_next_available_stream_id()
    h.client.send_headers(stream_id, CONNECT)
    _, _, events = h.response(stream_id)
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == 1 for e in events)
    h.close()


def test_the_clock_ticks_over_a_websocket_on_a_stream(impl: tuple[str, str]) -> None:
    """The worker's once-a-second clock (keepalive, --timeout-send) reaches the
    WebSocket over a stream too; a peer that never opens its window is cut after
    --timeout-send with RST_STREAM CANCEL, and the app hears 1006."""
    ws, http = impl
    heard: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "bytes": b"x" * 200_000})
        message = await receive()
        heard.append(message.get("code", 0))

    h = H2Harness(app, http, ws=ws, timeout_send=5)
    stream_id = h.client.get_next_available_stream_id()
    h.client.send_headers(stream_id, CONNECT)
    h.turn()
    events = h.events()  # read, never acknowledged: the windows stay shut
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)
    now = h.state.loop.time()
    h.state.tick()  # with bytes waiting for the window
    for second in (1, 4):
        for conn in list(h.state.connections):
            conn.check_idle(now + second)
    assert not any(isinstance(e, h2.events.StreamReset) for e in h.events())
    for conn in list(h.state.connections):
        conn.check_idle(now + 6)
    h.settle()
    resets = [e.error_code for e in h.events() if isinstance(e, h2.events.StreamReset)]
    assert resets == [0x8] and heard == [1006]
    h.close()
