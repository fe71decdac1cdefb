"""Unit tests of HTTP/2 through the in-memory transport: negotiation by prior knowledge,
the ASGI semantics over streams, flow control both ways, and graceful shutdown, for a
connection handed over by either HTTP/1.1 parser."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.events
import hpack
import pytest
from h2client import H2Harness, client_connection, frames, goaway, headers_frame, request_headers, resets
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, SettingsFrame
from memory import PARSERS, Harness
from support import Collect

from asgictl.logs import ACCESS_LOGGER, ACCESS_MESSAGE, ACCESS_MESSAGE_DISCONNECTED
from asgictl.protocols.http2.connection import HTTP2Connection

pytestmark = pytest.mark.unit


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["h2", "zttp"])
def engine(request: pytest.FixtureRequest) -> str:
    """The framing engines: the ASGI semantics must not depend on which one frames."""
    if request.param == "zttp":
        pytest.importorskip("zttp")
    return str(request.param)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_prior_knowledge_hello(http: str, engine: str) -> None:
    h = H2Harness(hello, http, http2_engine=engine)
    assert isinstance(h.server, HTTP2Connection)
    headers, body, _ = h.response(h.request())
    assert headers[b":status"] == b"200"
    assert body == b"Hello, world!"
    assert headers[b"content-length"] == b"13"
    assert headers[b"server"] == b"asgictl" and b"date" in headers
    h.close()


def test_scope(http: str, engine: str) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    h = H2Harness(app, http, root_path="/api", http2_engine=engine)
    h.response(h.request(b"/a%20b/c?x=1&y=2", headers=[(b"x-thing", b"1")]))
    scope = seen[0]
    assert scope["type"] == "http" and scope["http_version"] == "2"
    assert scope["method"] == "GET" and scope["scheme"] == "http"
    assert scope["path"] == "/api/a b/c" and scope["raw_path"] == b"/api/a%20b/c"
    assert scope["query_string"] == b"x=1&y=2" and scope["root_path"] == "/api"
    assert scope["headers"][0] == (b"host", b"example")
    assert (b"x-thing", b"1") in scope["headers"]
    assert scope["client"] == ("127.0.0.1", 50000) and scope["server"] == ("127.0.0.1", 8000)
    assert "http.response.trailers" in scope["extensions"]
    h.close()


def test_state_tasks_hold_a_running_stream_until_it_ends(http: str, engine: str) -> None:
    # The server's shutdown waits for, then cancels, what state.tasks holds.
    release: list[asyncio.Future[None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        release.append(asyncio.get_running_loop().create_future())
        await release[0]
        await hello(scope, receive, send)

    h = H2Harness(app, http, http2_engine=engine)
    stream_id = h.request()
    h.turn()
    assert len(h.state.tasks) == 1 and h.server.busy()
    release[0].set_result(None)
    h.settle()
    assert h.response(stream_id)[1] == b"Hello, world!"
    assert not h.state.tasks and not h.server.busy()
    h.close()


def test_preface_split_over_reads(http: str) -> None:
    h = Harness(hello, http=http)
    from h2client import client_connection

    client = client_connection()
    data = client.data_to_send()
    for i in range(0, len(data), 5):
        h.feed(data[i : i + 5])
    assert isinstance(h.transport.protocol, HTTP2Connection)
    h.close()


def test_no_http2_answers_the_preface_as_http11(http: str) -> None:
    h = Harness(hello, http=http, http2=False)
    from h2client import client_connection

    h.feed(client_connection().data_to_send())
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert h.transport.closed
    h.close()


def test_http11_still_served(http: str) -> None:
    h = Harness(hello, http=http)
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 200 OK")
    h.close()


def test_post_echo_beyond_the_windows(http: str, engine: str) -> None:
    """A body far larger than the stream and connection windows: WINDOW_UPDATE comes as
    the app reads, and the whole body arrives."""
    h = H2Harness(echo, http, http2_engine=engine)
    payload = os.urandom(3 * 1024 * 1024)
    stream_id = h.client.get_next_available_stream_id()
    h.client.send_headers(stream_id, request_headers(method=b"POST"))
    sent = 0
    for _ in range(2000):
        window = h.client.local_flow_control_window(stream_id)
        chunk = payload[sent : sent + min(window, 16384)]
        if chunk:
            h.client.send_data(stream_id, chunk)
            sent += len(chunk)
        if sent == len(payload):
            h.client.end_stream(stream_id)
            break
        h.turn()
        h.events()
    assert sent == len(payload)
    headers, body, _ = h.response(stream_id)
    assert headers[b":status"] == b"200" and body == payload
    h.close()


def test_unread_body_is_bounded(http: str) -> None:
    """An app that never reads: the client can have no more than the windows in flight."""
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    h = H2Harness(app, http)
    stream_id = 1
    h.client.send_headers(stream_id, request_headers(method=b"POST"))
    sent = 0
    for _ in range(200):
        window = h.client.local_flow_control_window(stream_id)
        if window <= 0:
            break
        h.client.send_data(stream_id, b"x" * min(window, 16384))
        sent += min(window, 16384)
        h.turn()
        h.events()
    assert h.client.local_flow_control_window(stream_id) == 0
    assert sent <= 256 * 1024  # the stream window the server advertised
    release.set()
    h.settle()
    h.close()


def test_response_waits_for_the_peer_window(http: str, engine: str) -> None:
    """send() waits while the client's window is closed, and goes on when it opens."""
    progress: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(8):
            await send({"type": "http.response.body", "body": b"y" * 16384, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    h = H2Harness(app, http, http2_engine=engine)
    stream_id = h.request()
    h.turn(20)
    events = h.client.receive_data(h.written())
    received = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    # The client's default window is 65,535 bytes: the app is held back there.
    assert received == 65535
    assert len(progress) < 8
    h.client.increment_flow_control_window(1 << 20)
    h.client.increment_flow_control_window(1 << 20, stream_id)
    h.flush()
    _, body, _ = h.response(stream_id)
    assert len(progress) == 8
    assert len(body) + received == 8 * 16384
    h.close()


def test_streams_run_concurrently(http: str, engine: str) -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    h = H2Harness(app, http, http2_engine=engine)
    slow = h.request(b"/slow")
    fast = h.request(b"/fast")
    _, body, _ = h.response(fast)
    assert body == b"/fast"
    gate.set()
    _, body, _ = h.response(slow)
    assert body == b"/slow"
    h.close()


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_no_body(http: str, engine: str, method: bytes, status: int) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"" if status != 200 else b"hello"})

    h = H2Harness(app, http, http2_engine=engine)
    headers, body, events = h.response(h.request(method=method))
    assert headers[b":status"] == str(status).encode() and body == b""
    assert not any(isinstance(e, h2.events.DataReceived) and e.data for e in events)
    h.close()


def test_trailers(http: str, engine: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})

    h = H2Harness(app, http, http2_engine=engine)
    headers, body, _ = h.response(h.request(headers=[(b"te", b"trailers")]))
    assert body == b"data" and headers[b"trailer:grpc-status"] == b"0"
    h.close()


def test_pathsend(http: str, engine: str, tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    content = os.urandom(300_000)
    path.write_bytes(content)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    h = H2Harness(app, http, http2_engine=engine)
    h.client.increment_flow_control_window(1 << 20)
    stream_id = h.request()
    h.client.increment_flow_control_window(1 << 20, stream_id)
    headers, body, _ = h.response(stream_id)
    assert headers[b"content-length"] == b"300000" and body == content
    h.close()


def test_client_reset_is_a_disconnect(http: str, engine: str) -> None:
    got: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "http.disconnect":
                return

    h = H2Harness(app, http, http2_engine=engine)
    h.client.send_headers(1, request_headers(method=b"POST"))
    h.turn()
    h.client.reset_stream(1, 8)
    h.settle()
    assert got[-1] == {"type": "http.disconnect"}
    assert h.state.active_requests == 0
    h.close()


def test_error_before_response_is_500(http: str, engine: str, caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    h = H2Harness(app, http, http2_engine=engine)
    with caplog.at_level(logging.ERROR, "asgictl.error"):
        headers, body, _ = h.response(h.request())
    assert headers[b":status"] == b"500" and body == b"Internal Server Error"
    assert "Exception in ASGI application" in caplog.text
    headers, _, _ = h.response(h.request())  # the connection goes on
    assert headers[b":status"] == b"500"
    h.close()


def test_error_after_response_started_resets_the_stream(http: str, engine: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    h = H2Harness(app, http, http2_engine=engine)
    stream_id = h.request()
    _, _, events = h.response(stream_id)
    reset = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset and reset[0].error_code == 2  # INTERNAL_ERROR
    h.close()


def test_limit_concurrency_503(http: str, engine: str) -> None:
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await hello(scope, receive, send)

    h = H2Harness(app, http, limit_concurrency=1, http2_engine=engine)
    first = h.request()
    second = h.request()
    headers, _, _ = h.response(second)
    assert headers[b":status"] == b"503"
    gate.set()
    headers, _, _ = h.response(first)
    assert headers[b":status"] == b"200"
    assert h.state.total_requests == 2  # --limit-max-requests counts streams
    h.close()


@pytest.fixture
def access() -> Iterator[Collect]:
    """Collects the access lines logged meanwhile (the access logger does not propagate)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Collect()
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


#: How the access line of a response the client left ends.
ACCESS_DISCONNECTED_MARK = ACCESS_MESSAGE_DISCONNECTED[len(ACCESS_MESSAGE) :]


def lines(handler: Collect) -> list[str]:
    return [record.getMessage() for record in handler.records]


def test_access_log_says_http2(http: str, access: Collect) -> None:
    h = H2Harness(hello, http, access_log=True)
    h.response(h.request(b"/p?q=1"))
    assert any('"GET /p?q=1 HTTP/2" 200' in line for line in lines(access)), lines(access)
    h.close()


def test_metrics_observer(http: str) -> None:
    seen: list[int] = []
    h = H2Harness(hello, http)
    h.state.observe_responses(lambda status, seconds: seen.append(status))
    h.response(h.request())
    assert seen == [200]
    h.close()


def test_proxy_headers(http: str) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    h = H2Harness(app, http)
    forwarded = [(b"x-forwarded-for", b"10.1.2.3"), (b"x-forwarded-proto", b"https")]
    h.response(h.request(headers=forwarded))
    assert seen[0]["client"] == ("10.1.2.3", 0) and seen[0]["scheme"] == "https"
    h.close()


def test_request_body_too_large(http: str, engine: str) -> None:
    h = H2Harness(echo, http, limit_request_body=1000, http2_engine=engine)
    headers, _, _ = h.response(h.request(method=b"POST", body=b"x" * 5000))
    assert headers[b":status"] == b"413"
    h.close()


def test_keep_alive_timeout_sends_goaway(http: str) -> None:
    h = H2Harness(hello, http, timeout_keep_alive=5)
    h.response(h.request())
    server = h.server
    server.check_idle(server.loop.time() + 10)
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == 0 and frame.last_stream_id == 1
    assert h.transport.closed
    h.close()


def test_graceful_shutdown_of_an_idle_connection(http: str) -> None:
    h = H2Harness(hello, http)
    h.response(h.request())
    h.server.shutdown()
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == 0 and frame.last_stream_id == 1
    h.turn()
    assert not h.transport.closed  # the client gets time to read the GOAWAY
    h.harness.loop.run_until_complete(asyncio.sleep(0.6))
    assert h.transport.closed
    h.close()


def test_a_connection_opened_as_the_stop_began_gets_its_first_request_served(http: str) -> None:
    """Preface and SETTINGS read, the server stops, then the first HEADERS: served within
    the grace, and the GOAWAY names that stream (never a last stream id of 0, which httpx
    takes for an error instead of a refusal to retry elsewhere)."""
    h = H2Harness(hello, http)
    h.turn()
    h.events()
    h.state.shutting_down = True
    h.server.shutdown()
    assert goaway(h.written()) is None
    headers, _, _ = h.response(h.request())
    assert headers[b":status"] == b"200"
    h.harness.loop.run_until_complete(asyncio.sleep(0.3))
    frame = goaway(h.transport.data)
    assert frame is not None and frame.error_code == 0 and frame.last_stream_id == 1
    h.harness.loop.run_until_complete(asyncio.sleep(0.6))
    assert h.transport.closed
    h.close()


def test_a_preface_completed_during_the_stop_grace_is_served(http: str) -> None:
    """A stop finds half a preface (an HTTP/1.1 connection in its grace); the rest and a
    request come within the grace: the HTTP/2 connection serves it, and the HTTP/1.1
    connection's end of grace does not close the transport it handed over."""

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.15)  # still running when the HTTP/1.1 grace ends
        await hello(scope, receive, send)

    h = Harness(slow, http=http)
    client = client_connection()
    preface = client.data_to_send()
    h.feed(preface[:10])
    h.state.shutting_down = True
    h.transport.protocol.shutdown()  # the HTTP/1.1 connection: a grace for its request
    h.feed(preface[10:])
    assert isinstance(h.transport.protocol, HTTP2Connection)
    h.loop.run_until_complete(asyncio.sleep(0.2))
    client.send_headers(1, request_headers(), end_stream=True)
    h.feed(client.data_to_send())
    h.settle()
    events = client.receive_data(h.transport.data)
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events), events
    h.close()


def test_graceful_shutdown_waits_for_streams_in_flight(http: str, engine: str) -> None:
    """The GOAWAY waits for the connection to be between requests (h2-based clients
    fail a request in flight at any GOAWAY)."""
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await hello(scope, receive, send)

    h = H2Harness(app, http, http2_engine=engine)
    in_flight = h.request()
    h.turn()
    h.written()
    h.server.shutdown()
    assert goaway(h.written()) is None
    gate.set()
    h.settle()
    found = frames(h.written())
    assert [f.stream_id for f in found if isinstance(f, DataFrame) and "END_STREAM" in f.flags] == [in_flight]
    frame = goaway(b"".join(f.serialize() for f in found))
    assert frame is not None and frame.last_stream_id == in_flight
    h.close()


def test_graceful_shutdown_goaway_ping_round_trip(http: str) -> None:
    """Streams still in flight after the deferral: RFC 9113 6.8's two GOAWAYs."""
    gate = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await hello(scope, receive, send)

    h = H2Harness(app, http)
    in_flight = h.request()
    h.turn()
    h.events()
    h.server.shutdown()
    h.server._goaway_in_flight()  # what the deferral's timer calls
    first = h.written()
    kinds = [type(f).__name__ for f in frames(first)]
    assert kinds == ["PingFrame", "GoAwayFrame"]  # the PING first: see shutdown()
    frame = goaway(first)
    assert frame is not None and frame.last_stream_id == 2**31 - 1
    # The client answers the PING (raw: the h2 client stops at a GOAWAY); the second
    # GOAWAY names the real last stream.
    ping = next(f for f in frames(first) if isinstance(f, PingFrame))
    h.send(PingFrame(0, flags=["ACK"], opaque_data=ping.opaque_data).serialize())
    frame = goaway(h.written())
    assert frame is not None and frame.last_stream_id == in_flight
    # A new stream past it is refused (raw frames: the h2 client would not send it).
    h.send(headers_frame(3, request_headers(), h.client.encoder))
    assert resets(h.written()).get(3) == 7  # REFUSED_STREAM
    gate.set()
    h.settle()
    found = frames(h.written())
    ends = [f for f in found if isinstance(f, DataFrame) and "END_STREAM" in f.flags]
    assert [f.stream_id for f in ends] == [in_flight]
    assert h.transport.closed
    h.close()


def _h2c_request(body: bytes = b"") -> bytes:
    settings = base64.urlsafe_b64encode(SettingsFrame(0, settings={0x3: 100}).serialize_body()).rstrip(b"=")
    head = (
        b"POST /up?q=1 HTTP/1.1\r\nHost: example\r\nUpgrade: h2c\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: " + settings + b"\r\n"
    )
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@pytest.mark.parametrize("body", [b"", b"hello h2c"])
def test_h2c_upgrade(http: str, body: bytes) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await echo(scope, receive, send)

    h = Harness(app, http=http, h2c_upgrade=True)
    client = client_connection_for_upgrade()
    h.feed(_h2c_request(body) + client.data_to_send())
    h.settle()
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    events = client.receive_data(data[data.index(b"\r\n\r\n") + 4 :])
    got = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == 1)
    assert got == body
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events)
    assert seen[0]["http_version"] == "2" and seen[0]["path"] == "/up"
    assert isinstance(h.transport.protocol, HTTP2Connection)
    h.close()


def test_h2c_upgrade_off_is_plain_http11(http: str) -> None:
    h = Harness(hello, http=http)
    h.feed(_h2c_request())
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not isinstance(h.transport.protocol, HTTP2Connection)
    h.close()


def client_connection_for_upgrade() -> Any:
    """An h2 client that sent its request as HTTP/1.1 with Upgrade: h2c (stream 1)."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_upgrade_connection()
    return client


def test_connection_window_given_back_for_complete_bodies(http: str, engine: str) -> None:
    """Many uploads, each read by the app in one piece: the connection's receive window
    must come back for every one (more bodies than the window holds go through)."""
    if engine == "zttp":
        pytest.xfail("zttp gives the connection window back only past a threshold of its own: this stalls")
    h = H2Harness(echo, http, http2_engine=engine)
    h.events()  # the server's SETTINGS and connection WINDOW_UPDATE
    for _ in range(25):  # 25 x 60 KB: more than the connection window (1 MiB + 64 KiB)
        _, body, _ = h.response(h.request(method=b"POST", body=b"z" * 60_000))
        assert len(body) == 60_000
    h.close()


# ----------------------------------------- one cycle for both versions: what HTTP/1.1 has


def test_zerocopysend_in_parts(http: str, engine: str, tmp_path: Path) -> None:
    """http.response.zerocopysend (WSGI's file_wrapper): offsets, counts, more_body, and
    the file's own position when no offset is given; DATA within the windows."""
    path = tmp_path / "file.bin"
    content = os.urandom(400_000)
    path.write_bytes(content)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with path.open("rb") as fh:
            await send({"type": "http.response.zerocopysend", "file": fh, "count": 1000, "more_body": True})
            fh.seek(1000)
            await send(
                {"type": "http.response.zerocopysend", "file": fh, "count": 299_000, "more_body": True}
            )
            await send({"type": "http.response.zerocopysend", "file": fh, "offset": 300_000})

    h = H2Harness(app, http, http2_engine=engine)
    h.client.increment_flow_control_window(1 << 20)
    stream_id = h.request()
    h.client.increment_flow_control_window(1 << 20, stream_id)
    headers, body, _ = h.response(stream_id)
    assert headers[b":status"] == b"200" and b"content-length" not in headers
    assert body == content
    h.close()


def test_pathsend_to_a_head_request(http: str, tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"a" * 5000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    h = H2Harness(app, http)
    headers, body, _ = h.response(h.request(method=b"HEAD"))
    assert headers[b"content-length"] == b"5000" and body == b""
    h.close()


def test_pathsend_waits_for_the_peer_window(http: str, tmp_path: Path) -> None:
    """A file larger than the peer's windows leaves as they open, not all at once."""
    path = tmp_path / "file.bin"
    content = os.urandom(200_000)
    path.write_bytes(content)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    h = H2Harness(app, http)
    stream_id = h.request()
    h.turn()
    early = [e for e in h.events() if isinstance(e, h2.events.DataReceived)]
    assert sum(len(e.data) for e in early) == 65_535  # the client's initial windows, not a byte more
    assert h.state.active_requests == 1
    for event in early:
        h.client.acknowledge_received_data(event.flow_controlled_length, stream_id)
    _, rest, _ = h.response(stream_id)  # the client acknowledges as it reads
    assert b"".join(e.data for e in early) + rest == content
    h.close()


BAD_RESPONSE_FIELDS = {
    "space in name": [(b"x a", b"1")],
    "colon in name": [(b"x:a", b"1")],
    "LF in value": [(b"x-a", b"1\nx-b: 2")],
    "CR in value": [(b"x-a", b"1\r")],
    "NUL in value": [(b"x-a", b"\x00")],
    "DEL in value": [(b"x-a", b"\x7f")],
    "Content-Length +2": [(b"content-length", b"+2")],
    "Content-Length list": [(b"content-length", b"2, 2")],
    "differing Content-Lengths": [(b"content-length", b"2"), (b"Content-Length", b"3")],
    "Transfer-Encoding gzip": [(b"transfer-encoding", b"gzip")],
    "Content-Length and chunked": [(b"content-length", b"2"), (b"transfer-encoding", b"chunked")],
}


@pytest.mark.parametrize("fields", BAD_RESPONSE_FIELDS.values(), ids=BAD_RESPONSE_FIELDS)
def test_response_fields_held_to_the_http11_rules(
    http: str, fields: list[tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """The same grammar and Content-Length rule as HTTP/1.1 (fields.py): a 500, nothing
    of the app's response written, the connection goes on."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": b"ok"})

    h = H2Harness(app, http)
    with caplog.at_level(logging.ERROR, "asgictl.error"):
        headers, body, _ = h.response(h.request())
    assert headers[b":status"] == b"500" and body == b"Internal Server Error"
    assert "InvalidField" in caplog.text
    headers, _, _ = h.response(h.request())
    assert headers[b":status"] == b"500"  # the connection still serves
    h.close()


def test_response_fields_folded_and_dropped(http: str) -> None:
    """An identical Content-Length repeat is folded; chunked (the server frames) and the
    fields of one HTTP/1.1 connection are dropped; names go lower-case; the app's
    server field replaces the default one."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        fields = [
            (b"Content-Length", b"2"),
            (b"content-length", b"2"),
            (b"Connection", b"close"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Mixed-Case", b"v"),
            (b"Server", b"mine"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": fields})
        await send({"type": "http.response.body", "body": b"ok"})

    h = H2Harness(app, http)
    stream_id = h.request()
    h.turn()
    h.settle()
    raw = h.written()
    block = next(f for f in frames(raw) if f.stream_id == stream_id and f.type == 0x1)
    fields = hpack.Decoder().decode(block.data, raw=True)
    names = [name for name, _ in fields]
    assert names.count(b"content-length") == 1
    assert b"connection" not in names and b"keep-alive" not in names
    assert (b"x-mixed-case", b"v") in fields and (b"server", b"mine") in fields
    assert names.count(b"server") == 1
    h.close()


def test_trailer_fields_held_to_the_rules(http: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"content-length", b"4")]})

    h = H2Harness(app, http, timeout_send=0)
    _, _, events = h.response(h.request())
    reset = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset and reset[0].error_code == 2  # INTERNAL_ERROR: the body went, the end cannot
    h.close()


def test_client_reset_mid_response_is_a_disconnected_access_line(http: str, access: Collect) -> None:
    """A client that resets its stream during the response: the app's send raises
    ClientDisconnected, the access line and the metrics say the client left (the shared
    HTTPCycle._abandoned), no error is logged, and the connection goes on."""
    streaming = asyncio.Event()
    seen: list[tuple[Any, ...]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/again":
            return await hello(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        streaming.set()
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
            await asyncio.sleep(0.01)

    h = H2Harness(app, http, access_log=True)
    h.state.observe_responses(lambda *args: seen.append(args))
    stream_id = h.request()
    h.harness.loop.run_until_complete(asyncio.wait_for(streaming.wait(), 5))
    h.client.reset_stream(stream_id, 8)
    h.settle()
    assert h.state.active_requests == 0
    assert [(status, disconnected) for status, _, disconnected in seen] == [(200, True)]
    assert any(line.endswith(ACCESS_DISCONNECTED_MARK) and " 200 " in line for line in lines(access))
    headers, _, _ = h.response(h.request(b"/again"))
    assert headers[b":status"] == b"200"  # the connection goes on
    h.close()


def test_client_reset_before_the_response_is_499(http: str, access: Collect) -> None:
    started = asyncio.Event()
    seen: list[tuple[Any, ...]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        while (await receive())["type"] != "http.disconnect":
            pass

    h = H2Harness(app, http, access_log=True)
    h.state.observe_responses(lambda *args: seen.append(args))
    h.client.send_headers(1, request_headers(method=b"POST"))
    h.flush()
    h.harness.loop.run_until_complete(asyncio.wait_for(started.wait(), 5))
    h.client.reset_stream(1, 8)
    h.settle()
    assert [(status, disconnected) for status, _, disconnected in seen] == [(499, True)]
    assert any(" 499 " in line and line.endswith(ACCESS_DISCONNECTED_MARK) for line in lines(access))
    h.close()


def test_error_500_has_its_access_line(http: str, access: Collect) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    h = H2Harness(app, http, access_log=True)
    headers, _, _ = h.response(h.request(b"/broken"))
    assert headers[b":status"] == b"500"
    assert any('"GET /broken HTTP/2" 500' in line for line in lines(access)), lines(access)
    h.close()


def test_timing_uses_perf_counter(http: str) -> None:
    seen: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.002)
        await hello(scope, receive, send)

    h = H2Harness(app, http)
    h.state.observe_responses(lambda status, seconds: seen.append(seconds))
    h.response(h.request())
    # perf_counter: the duration is the app's 2 ms, not a multiple of the loop clock's steps
    assert seen and 0.002 <= seen[0] < 1.0 and seen[0] != round(seen[0], 3)
    h.close()


def test_a_stop_tells_a_waiting_stream_and_answers_503(http: str) -> None:
    """The server goes away while an app waits in receive() for the end of a request it
    read whole: it hears http.disconnect at once; nothing was started, so 503."""
    heard: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the whole (empty) body
        heard.append((await receive())["type"])

    h = H2Harness(app, http)
    stream_id = h.request()
    h.turn()
    h.state.shutting_down = True
    h.server.shutdown()
    h.server.streams[stream_id].cycle.wake()
    headers, _, _ = h.response(stream_id)
    assert heard == ["http.disconnect"] and headers[b":status"] == b"503"
    h.close()


# ------------------------------------------------------------------- deadlines


def test_first_headers_cut_by_header_read_not_keep_alive(http: str) -> None:
    """The preface and the first request's HEADERS are the connection's first request
    head: a client that stalls there is cut by --timeout-header-read from accept."""
    h, _ = _raw(http, timeout_keep_alive=2, timeout_header_read=10)
    server = h.server
    now = server.loop.time()
    server.check_idle(now + 5)
    assert not h.transport.closed  # past keep-alive, within the head's deadline
    server.check_idle(now + 11)
    assert h.transport.closed and goaway(h.written()) is not None
    h.close()


def test_open_header_block_cut_by_header_read_not_keep_alive(http: str) -> None:
    h = H2Harness(hello, http, timeout_keep_alive=2, timeout_header_read=10)
    h.response(h.request())
    encoder = hpack.Encoder()
    open_block = HeadersFrame(3, flags=["END_STREAM"])  # no END_HEADERS: the block stays open
    open_block.data = encoder.encode(request_headers())
    h.send(open_block.serialize())
    server = h.server
    now = server.loop.time()
    server.check_idle(now)
    server.check_idle(now + 5)
    assert not h.transport.closed
    server.check_idle(now + 11)
    frame = goaway(h.written())
    assert h.transport.closed and frame is not None and frame.error_code == 0x1  # PROTOCOL_ERROR
    h.close()


def test_a_stalled_preface_is_cut_by_header_read(http: str) -> None:
    h = Harness(hello, http=http, timeout_keep_alive=2, timeout_header_read=10)
    h.feed(b"PRI * HTTP/2.0\r\n")
    protocol = h.transport.protocol
    now = h.loop.time()
    protocol.check_idle(now + 5)
    assert not h.transport.closed
    protocol.check_idle(now + 11)
    assert h.transport.closed
    h.close()


def test_a_peer_that_takes_no_bytes_is_cut_by_timeout_send(http: str) -> None:
    h = H2Harness(hello, http, timeout_send=5)
    h.response(h.request())
    h.transport.buffered = 1000  # bytes the peer never takes
    server = h.server
    now = server.loop.time()
    server.check_idle(now)
    server.check_idle(now + 4)
    assert not h.transport.aborted
    server.check_idle(now + 6)
    assert h.transport.aborted
    h.close()


# ------------------------------------------------------------------- PROXY protocol


def test_proxy_protocol_header_then_the_preface(http: str) -> None:
    """A trusted proxy's PROXY header, then HTTP/2 by prior knowledge on the same bytes:
    the scope's client and server are the header's."""
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    lead = b"PROXY TCP4 203.0.113.7 198.51.100.2 40001 443\r\n"
    h = H2Harness(app, http, lead=lead, proxy_protocol="v1", forwarded_allow_ips="127.0.0.1")
    headers, _, _ = h.response(h.request())
    assert headers[b":status"] == b"200" and isinstance(h.server, HTTP2Connection)
    assert seen[0]["client"] == ("203.0.113.7", 40001)
    assert seen[0]["server"] == ("198.51.100.2", 443)
    assert seen[0]["http_version"] == "2"
    h.close()


class _ALPN:
    """A TLS connection's ssl_object, as far as ALPN goes."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol

    def selected_alpn_protocol(self) -> str:
        return self.protocol


def test_proxy_protocol_header_then_alpn_h2(http: str) -> None:
    """Over TLS, ALPN decides HTTP/2 as soon as the connection is made: the addresses of
    the PROXY header read before are known by then, and carried over."""
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await hello(scope, receive, send)

    tls = {"ssl_object": _ALPN("h2"), "sslcontext": object()}
    lead = b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 443\r\n"
    h = H2Harness(app, http, lead=lead, proxy_protocol="v1", transport_extra=tls)
    headers, _, _ = h.response(h.request())
    assert headers[b":status"] == b"200"
    assert seen[0]["client"] == ("2001:db8::7", 40001) and seen[0]["server"] == ("2001:db8::1", 443)
    assert seen[0]["http_version"] == "2" and h.server.scheme == "https"
    # One HTTP/2 connection: the bytes after the header went to it, not to the HTTP/1.1
    # protocol that had handed the transport over (which would start a second one).
    settings = [f for f in frames(h.transport.data) if isinstance(f, SettingsFrame) and "ACK" not in f.flags]
    assert len(settings) == 1
    h.close()


def _raw(http: str, **options: Any) -> tuple[H2Harness, hpack.Encoder]:
    """A harness whose client sent its preface and SETTINGS, and nothing more."""
    h = H2Harness(hello, http, **options)
    h.turn()
    h.written()
    return h, hpack.Encoder()


# ------------------------------------------- the frames the h2 engine writes as bytes


def test_a_head_larger_than_a_frame_goes_on_in_continuation_frames(http: str) -> None:
    big = os.urandom(15_000).hex().encode()  # 30,000 bytes: more than a 16 KiB frame, however coded

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-big", big)]})
        await send({"type": "http.response.body", "body": b"ok"})

    h = H2Harness(app, http, http2_engine="h2")
    stream_id = h.request()
    h.settle()
    data = h.written()
    mine = [(type(f).__name__, sorted(f.flags)) for f in frames(data) if f.stream_id == stream_id]
    assert mine == [
        ("HeadersFrame", []),
        ("ContinuationFrame", ["END_HEADERS"]),
        ("DataFrame", ["END_STREAM"]),
    ]
    events = h.client.receive_data(data)
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[b"x-big"] == big
    h.close()


def test_an_empty_trailer_section_ends_the_stream(http: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": []})

    h = H2Harness(app, http, http2_engine="h2")
    _, body, events = h.response(h.request(headers=[(b"te", b"trailers")]))
    assert body == b"data"
    assert any(isinstance(e, h2.events.TrailersReceived) and e.stream_ended for e in events)
    h.close()


def test_repeated_heads_stay_right_as_the_hpack_tables_change(http: str) -> None:
    """Many requests whose fields repeat (the HPACK coders remember such blocks), with
    fields that enter the tables and push others out in between: every request and
    every response decodes to what was sent."""
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        value = dict(scope["headers"])[b"x-n"]
        seen.append(value)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", value)]})
        await send({"type": "http.response.body", "body": b""})

    h = H2Harness(app, http, http2_engine="h2")
    for n in range(60):
        value = b"%d" % (n // 3) + b"v" * 300  # each value three times, then a new one
        headers, _, _ = h.response(h.request(headers=[(b"x-n", value)]))
        assert headers[b"x-echo"] == value
    assert len(seen) == 60
    h.close()


def test_frames_on_a_stream_reset_by_the_server_get_stream_closed(http: str) -> None:
    """A frame on a stream the server reset is a stream error STREAM_CLOSED (RFC 9113
    5.1), the connection goes on."""
    h, encoder = _raw(http, http2_engine="h2")
    h.send(headers_frame(1, [*request_headers(), (b"X-Upper", b"1")], encoder, end_stream=False))
    h.turn()
    assert resets(h.written()) == {1: 0x1}  # malformed: PROTOCOL_ERROR
    h.send(headers_frame(1, [(b"x-trailer", b"1")], encoder))
    h.turn()
    data = h.written()
    assert resets(data) == {1: 0x5} and goaway(data) is None
    h.send(headers_frame(3, request_headers(), encoder))
    h.turn()
    assert any(isinstance(f, DataFrame) and f.stream_id == 3 for f in frames(h.written()))
    h.close()


def test_headers_on_a_stream_closed_both_ways_are_a_connection_error(http: str) -> None:
    """RFC 9113 5.1: HEADERS on a stream closed by END_STREAM both ways is a connection
    error STREAM_CLOSED."""
    h, encoder = _raw(http, http2_engine="h2")
    h.send(headers_frame(1, request_headers(), encoder))
    h.settle()
    assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in frames(h.written()))
    h.send(headers_frame(1, request_headers(), encoder))
    h.turn()
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == 0x5
    h.close()


def test_a_repeated_request_head_gets_a_scope_of_its_own_and_refused_heads_stay_refused(http: str) -> None:
    """A connection remembers the heads that passed the checks (the same fields again
    are not checked again): each request still gets its own scope and fields list, and a
    head that failed is checked, and refused, every time."""
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        scope["headers"].append((b"x-added-by-the-app", b"1"))
        await hello(scope, receive, send)

    h = H2Harness(app, http, http2_engine="h2")
    for _ in range(3):
        headers, _, _ = h.response(h.request(headers=[(b"x-a", b"1")]))
        assert headers[b":status"] == b"200"
    assert [len(scope["headers"]) for scope in seen] == [3, 3, 3]  # host, x-a, the app's
    assert seen[0] is not seen[1] and seen[0]["headers"] is not seen[1]["headers"]
    for _ in range(2):
        headers, _, _ = h.response(h.request(method=b"NOT-A-METHOD"))  # the shared policy: 400
        assert headers[b":status"] == b"400"
        _, _, events = h.response(h.request(headers=[(b"X-Upper", b"1")]))
        assert any(isinstance(e, h2.events.StreamReset) and e.error_code == 0x1 for e in events)
    assert len(seen) == 3
    h.close()


def test_large_request_heads_are_not_remembered(http: str) -> None:
    """Only small heads are kept as checked: a connection holds little for its peer."""
    h = H2Harness(hello, http, http2_engine="h2")
    small = [(b"x-small", b"v" * 100)]
    large = [(b"x-large-%d" % n, b"v" * 3000) for n in range(3)]  # 9 KB of fields in all
    for fields in (small, large):
        headers, _, _ = h.response(h.request(headers=fields))
        assert headers[b":status"] == b"200"
    assert [len(key) for key in h.server.checked] == [5]  # the four pseudo-headers, x-small
    h.close()
