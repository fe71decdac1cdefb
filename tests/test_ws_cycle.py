"""Unit tests of the shared ASGI WebSocket cycle over an in-memory transport, for both
implementations (websockets sans-IO, wsproto) and both HTTP parsers for the hand-off."""

from __future__ import annotations

from typing import Any

import pytest
from ws_support import (
    ACCEPT,
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    WS_IMPLS,
    WSHarness,
    close,
    close_code,
    frame,
    handshake,
    parse_frames,
    split_response,
    text,
)

from asgictl.protocols.websockets.connection import ClientDisconnected


@pytest.fixture(params=WS_IMPLS)
def ws(request: pytest.FixtureRequest) -> str:
    return request.param


class Recorder:
    """An app that accepts, echoes, and records what it received and what it raised."""

    def __init__(self, **accept: Any) -> None:
        self.accept = accept
        self.received: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.scope: dict[str, Any] = {}
        self.done = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        try:
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept", **self.accept})
            while True:
                message = await receive()
                self.received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") == "close please":
                    await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                    continue
                await send(
                    {"type": "websocket.send", **{k: message[k] for k in ("text", "bytes") if k in message}}
                )
        except Exception as exc:
            self.errors.append(exc)
            raise
        finally:
            self.done = True

    @property
    def disconnect(self) -> dict[str, Any] | None:
        return next((m for m in self.received if m["type"] == "websocket.disconnect"), None)


def opened(app: Any, ws: str, http: str = "httptools", extra: bytes = b"", **options: Any) -> WSHarness:
    h = WSHarness(app, ws, http=http, **options)
    h.feed(handshake(extra=extra))
    h.run_until(lambda: h.transport.data.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in h.transport.data)
    return h


@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_handoff_and_echo_text_and_bytes(ws: str, http: str) -> None:
    app = Recorder()
    h = opened(app, ws, http)
    head, _ = split_response(h.transport.data)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: " + ACCEPT in head
    assert b"\r\nserver: asgictl" in head
    assert app.scope["type"] == "websocket" and app.scope["scheme"] == "ws" and app.scope["path"] == "/"
    assert app.scope["extensions"] == {"websocket.http.response": {}}
    h.feed(text("hello") + frame(BINARY, b"\x00\x01"))
    h.run_until(lambda: len(h.frames()) == 2)
    assert h.frames() == [(TEXT, b"hello"), (BINARY, b"\x00\x01")]
    # The app's task is one the server's shutdown waits for (state.tasks), until it ends.
    assert len(h.state.tasks) == 1 and h.ws.busy()
    assert app.received[0] == {"type": "websocket.receive", "text": "hello"}
    assert app.received[1] == {"type": "websocket.receive", "bytes": b"\x00\x01"}
    # The peer closes: the server answers with its code, closes the TCP, the app is told.
    h.feed(close(4000, "done"))
    h.run_until(lambda: app.done)
    assert app.disconnect == {"type": "websocket.disconnect", "code": 4000, "reason": "done"}
    assert h.frames()[-1][0] == CLOSE and close_code(h.frames()[-1][1]) == 4000
    assert h.transport.closed
    assert h.state.active_requests == 0
    h.run_until(lambda: not h.state.tasks)
    assert not h.ws.busy()
    h.close()


def test_trailing_bytes_after_the_head_are_delivered(ws: str) -> None:
    app = Recorder()
    h = WSHarness(app, ws)
    h.feed(handshake() + text("early"))
    h.run_until(lambda: app.received)
    assert app.received[0]["text"] == "early"
    h.close()


def test_fragmented_message_and_interleaved_ping(ws: str) -> None:
    app = Recorder()
    h = opened(app, ws)
    h.feed(
        text("Hel", fin=False)
        + frame(PING, b"p")
        + frame(CONT, "lo ☃".encode(), fin=False)
        + frame(CONT, b"!")
    )
    h.run_until(lambda: len(h.frames()) == 2)
    assert h.frames() == [(PONG, b"p"), (TEXT, "Hello ☃!".encode())]
    h.close()


def test_subprotocol_and_extra_headers(ws: str) -> None:
    app = Recorder(subprotocol="chat", headers=[(b"x-extra", b"yes")])
    h = opened(app, ws, extra=b"Sec-WebSocket-Protocol: superchat, chat\r\n")
    head, _ = split_response(h.transport.data)
    assert b"Sec-WebSocket-Protocol: chat" in head and b"x-extra: yes" in head
    assert app.scope["subprotocols"] == ["superchat", "chat"]
    h.close()


@pytest.mark.parametrize("enabled", [True, False])
def test_per_message_deflate_negotiation(ws: str, enabled: bool) -> None:
    h = opened(
        Recorder(),
        ws,
        extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n",
        ws_per_message_deflate=enabled,
    )
    head, _ = split_response(h.transport.data)
    assert (b"permessage-deflate" in head) is enabled
    h.close()


def test_app_closes_with_code_and_reason(ws: str) -> None:
    app = Recorder()
    h = opened(app, ws)
    h.feed(text("close please"))
    h.run_until(lambda: any(op == CLOSE for op, _ in h.frames()))
    _, payload = h.frames()[-1]
    assert close_code(payload) == 4001 and payload[2:] == b"bye"
    assert not h.transport.closed  # waiting for the peer's close
    h.feed(close(4001))
    h.run_until(lambda: app.done and h.transport.closed)
    assert app.disconnect is not None and app.disconnect["code"] == 4001
    h.close()


def test_close_before_accept_is_403(ws: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close"})

    h = WSHarness(app, ws)
    h.feed(handshake())
    h.run_until(lambda: h.transport.closed)
    assert h.transport.data.startswith(b"HTTP/1.1 403 ")
    h.close()


def test_http_response_denial(ws: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"text/plain"), (b"x-why", b"no")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"away"})

    h = WSHarness(app, ws)
    h.feed(handshake())
    h.run_until(lambda: h.transport.closed)
    head, body = split_response(h.transport.data)
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n") and b"x-why: no" in head
    assert b"connection: close" in head and body == b"go away"
    h.close()


def test_http_response_denial_single_body_has_length(ws: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.http.response.start", "status": 418, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"teapot"})

    h = WSHarness(app, ws)
    h.feed(handshake())
    h.run_until(lambda: h.transport.closed)
    head, body = split_response(h.transport.data)
    assert head.startswith(b"HTTP/1.1 418 ") and b"content-length: 6" in head and body == b"teapot"
    h.close()


def test_messages_in_the_wrong_order_raise_in_the_app(ws: str) -> None:
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for message in ({"type": "websocket.send", "text": "too early"}, {"type": "http.response.start"}):
            try:
                await send(message)
            except RuntimeError as exc:
                seen.append(exc)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except RuntimeError as exc:
            seen.append(exc)

    h = WSHarness(app, ws)
    h.feed(handshake())
    h.run_until(lambda: len(seen) == 3)
    assert all(isinstance(e, RuntimeError) for e in seen)
    assert h.frames()[0][0] == CLOSE  # the server went on, and closed as the app asked
    h.close()


def test_send_after_the_peer_left_raises_oserror(ws: str) -> None:
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        assert message["type"] == "websocket.disconnect" and message["code"] == 1006
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            raised.append(exc)
        await send({"type": "websocket.close"})  # a close after the fact is no error

    h = opened(app, ws)
    h.transport.close()  # the peer vanished without a close frame
    h.run_until(lambda: raised)
    assert isinstance(raised[0], ClientDisconnected)
    h.run_until(lambda: h.state.active_requests == 0)
    h.close()


def test_app_exception_before_accept_is_500_after_accept_1011(ws: str) -> None:
    async def early(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    h = WSHarness(early, ws)
    h.feed(handshake())
    h.run_until(lambda: h.transport.closed)
    assert h.transport.data.startswith(b"HTTP/1.1 500 ")
    h.close()

    async def late(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise ValueError("boom")

    h = opened(late, ws)
    h.run_until(lambda: h.frames())
    assert h.frames()[0][0] == CLOSE and close_code(h.frames()[0][1]) == 1011
    h.close()


def test_invalid_handshake_is_refused_without_the_app(ws: str) -> None:
    called: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    h = WSHarness(app, ws)
    h.feed(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    h.run_until(lambda: h.transport.closed)
    assert h.transport.data.startswith(b"HTTP/1.1 400 ") and not called
    h.close()


@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_ws_none_answers_as_plain_http(http: str) -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})

    h = WSHarness(app, "none", http=http)
    h.feed(handshake())
    h.run_until(lambda: h.transport.data.endswith(b"plain"))
    assert scopes[0]["type"] == "http"
    assert h.transport.data.startswith(b"HTTP/1.1 200 ")
    # A declined upgrade is plain HTTP/1.1 (RFC 9110 7.8): the connection persists.
    assert not h.transport.closed and b"connection: close" not in h.transport.data
    h.feed(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    h.run_until(lambda: len(scopes) == 2 and h.transport.data.count(b"plain") == 2)
    assert scopes[1]["path"] == "/next"
    h.close()


def test_max_size_closes_with_1009(ws: str) -> None:
    app = Recorder()
    h = opened(app, ws, ws_max_size=16)
    h.feed(text("x" * 16))
    h.run_until(lambda: h.frames())
    h.feed(text("y" * 8, fin=False) + frame(CONT, b"y" * 9))
    h.run_until(lambda: app.done)
    frames = h.frames()
    assert frames[0] == (TEXT, b"x" * 16)
    assert frames[-1][0] == CLOSE and close_code(frames[-1][1]) == 1009
    assert app.disconnect is not None and app.disconnect["code"] == 1009
    assert h.transport.closed
    h.close()


def test_invalid_utf8_closes_with_1007(ws: str) -> None:
    app = Recorder()
    h = opened(app, ws)
    h.feed(frame(TEXT, b"ok \xff"))
    h.run_until(lambda: app.done)
    assert close_code(h.frames()[-1][1]) == 1007 and h.transport.closed
    h.close()


def test_max_queue_pauses_reading_until_the_app_catches_up(ws: str) -> None:
    got: list[str] = []
    go = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while not go:
            await __import__("asyncio").sleep(0.001)
        while len(got) < 5:
            got.append((await receive())["text"])

    h = opened(app, ws, ws_max_queue=3)
    for i in range(3):
        h.feed(text(f"m{i}"))
    assert not h.transport.reading  # the app has read none: stop reading the socket
    go.append(True)
    h.run_until(lambda: len(got) >= 1)
    assert h.transport.reading
    h.feed(text("m3") + text("m4"))
    h.run_until(lambda: len(got) == 5)
    assert got == ["m0", "m1", "m2", "m3", "m4"]
    h.close()


def test_keepalive_ping_and_timeout(ws: str) -> None:
    app = Recorder()
    h = opened(app, ws, ws_ping_interval=10.0, ws_ping_timeout=5.0)
    conn = h.ws
    now = h.loop.time()
    conn.check_idle(now + 1)
    assert h.frames() == []
    conn.check_idle(now + 11)
    ((op, payload),) = h.frames()
    assert op == PING
    h.feed(frame(PONG, payload))  # answered: no timeout
    conn.check_idle(now + 17)
    assert [op for op, _ in h.frames()] == [PING]
    conn.check_idle(now + 22)  # next ping, never answered
    assert [op for op, _ in h.frames()] == [PING, PING]
    conn.check_idle(now + 28)
    h.run_until(lambda: app.done)
    assert close_code(h.frames()[-1][1]) == 1011
    assert app.disconnect is not None and app.disconnect["code"] == 1011
    h.close()


@pytest.mark.parametrize("code", [1001, 1012])
def test_shutdown_closes_with_going_away_or_restart(ws: str, code: int) -> None:
    app = Recorder()
    h = opened(app, ws)
    h.state.close_code = code
    h.ws.shutdown()
    h.run_until(lambda: app.done)
    assert app.disconnect is not None and app.disconnect["code"] == code
    op, payload = h.frames()[-1]
    assert op == CLOSE and close_code(payload) == code
    h.feed(close(code))  # the peer answers: the server closes the TCP connection
    h.run_until(lambda: h.transport.closed)
    assert h.ws not in h.state.connections or h.transport.closed
    h.close()


def test_shutdown_before_accept_is_503(ws: str) -> None:
    outcome: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        while not h.ws.closing:
            await __import__("asyncio").sleep(0.001)
        try:
            await send({"type": "websocket.accept"})
        except OSError as exc:
            outcome.append(exc)

    h = WSHarness(app, ws)
    h.feed(handshake())
    h.run_until(lambda: h.state.active_requests == 1)
    h.ws.shutdown()
    h.run_until(lambda: outcome)
    assert h.transport.data.startswith(b"HTTP/1.1 503 ")
    h.close()


def test_registered_in_connections_and_counted(ws: str) -> None:
    h = opened(Recorder(), ws)
    assert h.ws in h.state.connections and h.state.active_requests == 1
    assert h.ws.busy()
    h.close()


def test_server_frames_parse(ws: str) -> None:
    # Sanity of the test helper itself on a long payload (16-bit length).
    h = opened(Recorder(), ws)
    h.feed(text("z" * 300))
    h.run_until(lambda: h.frames())
    assert parse_frames(split_response(h.transport.data)[1]) == [(TEXT, b"z" * 300)]
    h.close()


def test_ws_implementation_is_chosen_at_startup_and_imported_at_first_use(monkeypatch: Any) -> None:
    import importlib.util

    from asgictl.config import ConfigError
    from asgictl.protocols import websockets as ws

    assert ws.ws_protocol_factory("none") is None
    assert ws.ws_protocol_factory("auto").module.endswith("websockets_impl")  # type: ignore[union-attr]
    assert ws.ws_protocol_factory("wsproto").module.endswith("wsproto_impl")  # type: ignore[union-attr]

    real_find_spec = importlib.util.find_spec

    def without_websockets(name: str, *args: Any) -> Any:
        return None if name == "websockets" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_websockets)
    assert ws.ws_protocol_factory("auto").module.endswith("wsproto_impl")  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="websockets"):  # one line for the user, exit 2
        ws.ws_protocol_factory("websockets")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert ws.ws_protocol_factory("auto") is None
