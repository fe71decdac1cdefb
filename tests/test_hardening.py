"""Request limits, read deadlines and the strictness policy, for both parsers.

Unit tests drive the protocol through the in-memory transport; the deadline tests at
the end use a real server and a raw socket that trickles bytes.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from memory import PARSERS, Harness, serve
from recorder import app as recorder
from support import read_all, run_asgictl


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


def status_of(h: Harness) -> int:
    return int(h.transport.data.split(b" ", 2)[1])


def answer(http: str, data: bytes, eof: bool = False, **options: Any) -> Harness:
    return serve(recorder, http, data, eof=eof, **options)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\na", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n two\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nBad(name): x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x07b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /a?b=c   HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTZ/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET relative HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
    ],
    ids=lambda v: v.decode("latin-1")[:60] if isinstance(v, bytes) else str(v),
)
def test_policy_refusals_are_the_same_for_both_parsers(http: str, raw: bytes, status: int) -> None:
    h = answer(http, raw + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", eof=True)
    assert status_of(h) == status, h.transport.data
    assert h.transport.closed
    assert b"/smuggled" not in h.transport.data
    h.close()


def test_request_line_limit_414(http: str) -> None:
    h = answer(http, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limit_request_line=100)
    assert status_of(h) == 414 and h.transport.closed
    h.close()
    h = answer(http, b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: a\r\n\r\n", limit_request_line=100)
    assert status_of(h) == 200
    h.close()


def test_field_limits_431(http: str) -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(11))
    h = answer(http, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n", limit_request_fields=10)
    assert status_of(h) == 431
    h.close()
    h = answer(
        http, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 200 + b"\r\n\r\n", limit_request_field_size=100
    )
    assert status_of(h) == 431
    h.close()


@pytest.mark.parametrize("method", [b"GET", b"PROPFIND"])
@pytest.mark.parametrize(
    "before",
    [(), (b"\r\n",), (b"\r", b"\n")],
    ids=["at the start", "after an empty line", "after an empty line whose CR came alone"],
)
def test_line_and_field_count_limits_at_their_edge(
    http: str, before: tuple[bytes, ...], method: bytes
) -> None:
    # The limits hold to the byte and the field, whoever measures them (the h1c binding
    # for the methods it knows, the policy for the others); empty lines before the
    # request line do not count, whichever reads they came in.
    line = method + b" /" + b"a" * (89 - len(method)) + b" HTTP/1.1\r\n"  # 100 bytes and CRLF
    assert len(line) == 102
    fields = b"Host: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9))  # 10 fields
    for extra, status in ((b"", 200), (b"a", 414)):
        head = line.replace(b" HTTP", extra + b" HTTP") + fields + b"\r\n"
        h = serve(recorder, http, *_after(before, head), limit_request_line=100)
        assert status_of(h) == status, h.transport.data
        h.close()
    for more, status in ((b"", 200), (b"X-9: v\r\n", 431)):
        head = line + fields + more + b"\r\n"
        h = serve(recorder, http, *_after(before, head), limit_request_fields=10)
        assert status_of(h) == status, h.transport.data
        h.close()


def _after(before: tuple[bytes, ...], head: bytes) -> list[bytes]:
    """The reads: ``before``'s, the last of them (a lone LF) joined to ``head``."""
    if before[-1:] == (b"\n",):
        return [*before[:-1], b"\n" + head]
    return [*before, head]


def test_endless_head_is_cut_at_64k(http: str) -> None:
    h = Harness(recorder, http=http, h11_max_incomplete_event_size=10_000_000)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
    for _ in range(100):
        if h.transport.closed:
            break
        h.feed(b"v" * 4096)
    h.settle(0.5)
    assert status_of(h) == 431 and h.transport.closed
    h.close()


def test_body_limit_413_by_content_length(http: str) -> None:
    h = answer(http, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", limit_request_body=1000)
    assert status_of(h) == 413 and h.transport.closed
    h.close()


def test_body_limit_413_for_chunked_without_buffering(http: str) -> None:
    h = Harness(recorder, http=http, limit_request_body=10_000)
    h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    h.settle(0.2)
    for _ in range(20):
        if h.transport.closed:
            break
        h.feed(b"1000\r\n" + b"x" * 0x1000 + b"\r\n")
    h.settle(0.5)
    assert status_of(h) == 413 and h.transport.closed
    cycle_bodies = [c.body for c in (h.protocol.cycle, h.protocol.parsing) if c is not None]
    assert all(len(b) <= 10_000 for b in cycle_bodies)
    h.close()


def test_incomplete_request_at_eof_is_400(http: str) -> None:
    h = answer(http, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    assert status_of(h) == 400 and h.transport.closed
    h.close()


def test_header_read_deadline_holds_for_trickled_head(http: str) -> None:
    h = Harness(recorder, http=http, timeout_header_read=10, timeout_keep_alive=100)
    start = h.loop.time()
    h.feed(b"GET / HTTP/1.1\r\n")
    for second in range(1, 13):  # a byte a second keeps arriving: the deadline still holds
        h.feed(b"X")
        h.protocol.check_idle(start + second)
        if h.transport.closed:
            break
    assert h.transport.closed and 10 <= second <= 12
    assert status_of(h) == 408
    h.close()


def test_keep_alive_request_gets_a_header_deadline_too(http: str) -> None:
    h = Harness(recorder, http=http, timeout_header_read=5, timeout_keep_alive=100)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.settle()
    assert status_of(h) == 200
    start = h.loop.time()
    h.feed(b"GET / HT")
    for second in range(1, 8):
        h.protocol.check_idle(start + second)
    assert h.transport.closed
    h.close()


def test_body_read_deadline(http: str) -> None:
    h = Harness(recorder, http=http, timeout_body_read=5, timeout_keep_alive=100)
    h.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    h.settle(0.2)
    start = h.loop.time()
    for second in range(1, 4):
        h.feed(b"d")  # progress resets the body clock
        h.protocol.check_idle(start + second)
    assert not h.transport.closed
    for second in range(4, 12):
        h.protocol.check_idle(start + second)
    assert h.transport.closed
    h.close()


# ------------------------------------------------------------------ over a real socket


@pytest.mark.e2e
@pytest.mark.parametrize("parser", PARSERS)
def test_slowloris_connection_closed_while_others_served(parser: str) -> None:
    args = ["serve", "recorder:app", "--port", "0", "--http", parser, "--timeout-header-read", "2"]
    with run_asgictl(args) as server:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        closed_after = None
        while time.monotonic() - start < 15:
            try:
                slow.sendall(b"X-a: b\r\n")
            except OSError:
                closed_after = time.monotonic() - start
                break
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as normal:
                normal.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                assert read_all(normal).startswith(b"HTTP/1.1 200 ")
            slow.settimeout(0.5)
            try:
                if slow.recv(65536) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                pass
            except OSError:
                closed_after = time.monotonic() - start
                break
        slow.close()
        assert closed_after is not None and closed_after < 6, closed_after


@pytest.mark.e2e
def test_idle_flood_is_closed_and_normal_clients_served() -> None:
    """Hundreds of connections that never send a byte: normal requests keep getting
    answers, and the keep-alive deadline closes every idle one (uvicorn holds them)."""
    args = ["serve", "recorder:app", "--port", "0", "--timeout-keep-alive", "2", "--backlog", "1024"]
    with run_asgictl(args) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(300)]
        try:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as normal:
                    normal.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    assert read_all(normal).startswith(b"HTTP/1.1 200 ")
            deadline = time.monotonic() + 20
            still_open = list(idle)
            while still_open and time.monotonic() < deadline:
                for sock in list(still_open):
                    sock.settimeout(0.05)
                    try:
                        if sock.recv(1) == b"":
                            still_open.remove(sock)
                    except TimeoutError:
                        pass
                    except OSError:
                        still_open.remove(sock)
            assert not still_open, f"{len(still_open)} idle connections outlived the deadline"
        finally:
            for sock in idle:
                sock.close()


@pytest.mark.e2e
def test_limit_concurrency_answers_503_under_an_idle_flood() -> None:
    args = ["serve", "recorder:app", "--port", "0", "--limit-concurrency", "50", "--timeout-keep-alive", "30"]
    with run_asgictl(args) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(60)]
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as extra:
                extra.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = read_all(extra)
            assert data.startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in idle:
                sock.close()
        # The flood gone, the server answers normally again.
        deadline = time.monotonic() + 10
        while True:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as normal:
                normal.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                if read_all(normal).startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
                    break
            time.sleep(0.1)  # poll interval: the server notices the closed flood asynchronously
        assert time.monotonic() <= deadline


def test_large_body_in_the_same_read_as_the_head_is_not_a_large_head(http: str) -> None:
    body = b"b" * 300_000
    h = answer(http, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status_of(h) == 200
    h.close()
