"""HTTP/2 strictness, limits and floods, driven with raw frames over the in-memory
transport: each case checks the server's answer frame (RST_STREAM or GOAWAY and its
code) and that the worker's state is still good for another connection."""

from __future__ import annotations

import asyncio
from typing import Any

import hpack
import pytest
from h2client import H2Harness, frames, goaway, headers_frame, request_headers, resets
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from memory import PARSERS

pytestmark = pytest.mark.unit

PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB
COMPRESSION_ERROR = 0x9


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def slow(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.sleep(3600)


def raw(http: str, app: Any = hello, **options: Any) -> tuple[H2Harness, hpack.Encoder]:
    """A harness whose client sends hand-made frames (its own HPACK encoder)."""
    h = H2Harness(app, http, **options)
    h.turn()
    h.written()
    return h, hpack.Encoder()


def still_serves(h: H2Harness) -> None:
    """A new connection on the same server state is answered (the worker is fine)."""
    other = H2Harness(hello, "h11")
    other.harness.state = h.state
    headers, body, _ = other.response(other.request())
    assert headers[b":status"] == b"200" and body == b"ok"


GOOD = request_headers()

MALFORMED = {
    "uppercase field name": [*GOOD, (b"X-Upper", b"1")],
    "invalid field name": [*GOOD, (b"x y", b"1")],
    "connection field": [*GOOD, (b"connection", b"keep-alive")],
    "transfer-encoding": [*GOOD, (b"transfer-encoding", b"chunked")],
    "upgrade field": [*GOOD, (b"upgrade", b"websocket")],
    "keep-alive field": [*GOOD, (b"keep-alive", b"5")],
    "te not trailers": [*GOOD, (b"te", b"gzip")],
    "no :method": [(b":path", b"/"), (b":scheme", b"http")],
    "no :path": [(b":method", b"GET"), (b":scheme", b"http")],
    "no :scheme": [(b":method", b"GET"), (b":path", b"/")],
    "empty :path": [(b":method", b"GET"), (b":path", b""), (b":scheme", b"http")],
    "relative :path": [(b":method", b"GET"), (b":path", b"x"), (b":scheme", b"http")],
    "duplicate :path": [*GOOD, (b":path", b"/again")],
    "unknown pseudo": [*GOOD[:2], (b":unknown", b"1"), *GOOD[2:]],
    "response pseudo": [*GOOD[:2], (b":status", b"200"), *GOOD[2:]],
    "pseudo after regular": [GOOD[0], (b"x-a", b"1"), *GOOD[1:]],
    "NUL in value": [*GOOD, (b"x-a", b"a\x00b")],
    "LF in value": [*GOOD, (b"x-a", b"a\nb")],
    "leading space in value": [*GOOD, (b"x-a", b" a")],
    "host differs from :authority": [*GOOD, (b"host", b"other")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    ":protocol without extended CONNECT": [*GOOD, (b":protocol", b"websocket")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_stream_error(http: str, case: str) -> None:
    h, enc = raw(http)
    h.send(headers_frame(1, MALFORMED[case], enc))
    assert resets(h.written()) == {1: PROTOCOL_ERROR}
    # A stream error: the connection goes on.
    h.send(headers_frame(3, GOOD, enc))
    h.settle()
    found = frames(h.written())
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 3 for f in found)
    h.close()


def test_shared_policy_applies(http: str) -> None:
    """What HTTP/1.1 answers 400/431 is answered so on the stream."""
    h, enc = raw(http, limit_request_fields=5)
    h.send(headers_frame(1, [*GOOD, *[(b"x-%d" % i, b"v") for i in range(10)]], enc))
    h.settle()
    found = frames(h.written())
    head = next(f for f in found if isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert hpack.Decoder().decode(head.data)[0] == (":status", "431")
    h.close()


def test_content_length_disagrees_with_data(http: str) -> None:
    h, enc = raw(http)
    fields = [*request_headers(method=b"POST"), (b"content-length", b"3")]
    h.send(headers_frame(1, fields, enc, end_stream=False))
    h.send(DataFrame(1, b"too long", flags=["END_STREAM"]).serialize())
    out = h.written()
    frame = goaway(out)
    assert resets(out).get(1) == PROTOCOL_ERROR or (frame is not None and frame.error_code == PROTOCOL_ERROR)
    h.close()


def test_max_concurrent_streams(http: str) -> None:
    h, enc = raw(http, app=slow)
    for i in range(101):
        h.send(headers_frame(1 + 2 * i, GOOD, enc))
    assert resets(h.written()) == {201: REFUSED_STREAM}
    assert h.state.active_requests == 100
    h.close()


def test_header_list_too_large(http: str) -> None:
    """Past the head budget HTTP/1.1 has (64 KiB), spread over CONTINUATION frames."""
    h, enc = raw(http)
    block = enc.encode([*GOOD, *[(b"x-big-%d" % i, b"v" * 15000) for i in range(5)]])
    pieces = [block[i : i + 16000] for i in range(0, len(block), 16000)]
    data = HeadersFrame(1, pieces[0], flags=["END_STREAM"]).serialize()
    for n, piece in enumerate(pieces[1:], 2):
        data += ContinuationFrame(1, piece, flags=["END_HEADERS"] if n == len(pieces) else []).serialize()
    h.send(data)
    frame = goaway(h.written())
    assert frame is not None and frame.error_code in (ENHANCE_YOUR_CALM, COMPRESSION_ERROR, PROTOCOL_ERROR)
    assert h.transport.closed
    still_serves(h)
    h.close()


def test_hpack_bomb(http: str) -> None:
    """A small block that decodes huge: one large field in the dynamic table, then
    referenced over and over (each reference is one byte on the wire)."""
    h, enc = raw(http)
    h.send(headers_frame(1, [*GOOD, (b"x-bomb", b"b" * 4000)], enc))
    h.settle()
    block = enc.encode([*GOOD, *[(b"x-bomb", b"b" * 4000)] * 200])
    assert len(block) < 1000
    frame = HeadersFrame(3, flags=["END_HEADERS", "END_STREAM"])
    frame.data = block
    h.written()
    h.send(frame.serialize())
    found = goaway(h.written())
    assert found is not None and found.error_code == ENHANCE_YOUR_CALM
    still_serves(h)
    h.close()


def test_continuation_flood(http: str) -> None:
    h, enc = raw(http)
    first = HeadersFrame(1, flags=["END_STREAM"])
    first.data = enc.encode(GOOD)
    h.send(first.serialize())
    for _ in range(200):
        if h.transport.closed:
            break
        h.send(ContinuationFrame(1, data=b"\x00" * 16).serialize())
    frame = goaway(h.written())
    assert frame is not None and frame.error_code in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM)
    assert h.transport.closed
    h.close()


def test_header_block_left_open_times_out(http: str) -> None:
    h, enc = raw(http, timeout_header_read=2)
    first = HeadersFrame(1, flags=["END_STREAM"])
    first.data = enc.encode(GOOD)
    h.send(first.serialize())
    now = h.server.loop.time()
    h.server.check_idle(now)
    h.server.check_idle(now + 3)
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == PROTOCOL_ERROR
    assert h.transport.closed
    h.close()


async def waits_for_disconnect(scope: Any, receive: Any, send: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def test_rapid_reset(http: str) -> None:
    h, enc = raw(http, app=waits_for_disconnect)
    for i in range(400):
        if h.transport.closed:
            break
        stream_id = 1 + 2 * i
        h.send(headers_frame(stream_id, GOOD, enc) + RstStreamFrame(stream_id, error_code=8).serialize())
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == ENHANCE_YOUR_CALM
    h.settle()
    assert h.state.active_requests == 0
    still_serves(h)
    h.close()


def test_reset_streams_whose_apps_run_on_count(http: str) -> None:
    """Apps that go on after their stream was reset keep counting against the limit."""
    h, enc = raw(http, app=slow)
    for i in range(100):
        h.send(headers_frame(1 + 2 * i, GOOD, enc) + RstStreamFrame(1 + 2 * i, error_code=8).serialize())
    h.written()
    h.send(headers_frame(201, GOOD, enc))
    assert resets(h.written()) == {201: REFUSED_STREAM}
    h.close()


@pytest.mark.parametrize(
    "flood",
    [
        "empty DATA",
        "SETTINGS",
        "PING",
        "PRIORITY",
    ],
)
def test_control_floods(http: str, flood: str) -> None:
    h, enc = raw(http, app=slow)
    h.send(headers_frame(1, request_headers(method=b"POST"), enc, end_stream=False))
    frame = {
        "empty DATA": DataFrame(1, b""),
        "SETTINGS": SettingsFrame(0, settings={0x4: 65535}),
        "PING": PingFrame(0, opaque_data=b"12345678"),
        "PRIORITY": PriorityFrame(3, depends_on=0, stream_weight=16),
    }[flood].serialize()
    for _ in range(2000):
        if h.transport.closed:
            break
        h.send(frame * 10)
    found = goaway(h.written())
    assert found is not None and found.error_code == ENHANCE_YOUR_CALM
    still_serves(h)
    h.close()


def test_unread_acks_are_bounded(http: str) -> None:
    """PINGs from a peer that does not read the ACKs (the write buffer stays full)."""
    h, _ = raw(http)
    h.server.pause_writing()
    for _ in range(100):
        if h.transport.closed:
            break
        h.send(PingFrame(0, opaque_data=b"12345678").serialize())
    assert h.transport.closed
    found = goaway(h.written())
    assert found is not None and found.error_code == ENHANCE_YOUR_CALM
    h.close()


def test_window_update_overflow(http: str) -> None:
    h, enc = raw(http, app=slow)
    h.send(headers_frame(1, GOOD, enc))
    h.send(WindowUpdateFrame(1, window_increment=2**31 - 1).serialize())
    assert resets(h.written()).get(1) == FLOW_CONTROL_ERROR
    h.send(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())
    frame = goaway(h.written())
    assert frame is not None and frame.error_code == FLOW_CONTROL_ERROR
    h.close()


def test_never_opened_window_is_cut_at_timeout_send(http: str) -> None:
    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"z" * 200_000})

    h, enc = raw(http, app=big, timeout_send=12.0)
    h.send(headers_frame(1, GOOD, enc))
    h.turn()
    server = h.server
    now = server.loop.time()
    server.check_idle(now + 5)
    server.check_idle(now + 11)
    assert 1 in server.streams
    server.check_idle(now + 13)
    assert resets(h.written()).get(1) == 0x8  # CANCEL
    h.settle()
    assert h.state.active_requests == 0
    h.close()


@pytest.mark.parametrize(
    ("trailers", "end_stream"),
    [
        ([(b"x-t", b"1")], False),  # a second HEADERS without END_STREAM
        ([(b":path", b"/")], True),  # a pseudo-header field as a trailer
        ([(b"content-length", b"4")], True),  # a field a trailer may not carry
    ],
)
def test_malformed_trailers_after_an_early_response(
    http: str, trailers: list[tuple[bytes, bytes]], end_stream: bool
) -> None:
    """The app answers before the request is complete; the rest of the request is still
    checked: a malformed trailer section is a PROTOCOL_ERROR (stream or connection)."""
    h, enc = raw(http)
    h.send(headers_frame(1, request_headers(method=b"POST"), enc, end_stream=False))
    h.send(DataFrame(1, b"test").serialize())
    h.settle()
    assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in frames(h.written()))
    h.send(headers_frame(1, trailers, enc, end_stream=end_stream))
    out = h.written()
    frame = goaway(out)
    assert resets(out).get(1) == PROTOCOL_ERROR or (frame is not None and frame.error_code == PROTOCOL_ERROR)
    h.close()
