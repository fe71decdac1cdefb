"""Unit tests of the shared HTTP cycle through an in-memory transport, for both parsers."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from memory import PARSERS, Harness, responses

from asgictl.protocols.state import task_starter

GET = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


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


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


def make(app: Any, http: str, **options: Any) -> Harness:
    return Harness(app, http=http, **options)


def test_small_response_is_one_write(http: str) -> None:
    h = make(hello, http)
    h.feed(GET)
    h.settle()
    assert len(h.transport.writes) == 1
    data = h.transport.writes[0]
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 13\r\n" in data and data.endswith(b"\r\n\r\nHello, world!")
    assert b"\r\nserver: asgictl\r\n" in data and b"\r\ndate: " in data
    assert not h.transport.closed
    h.close()


def test_keep_alive_many_requests_one_write_each(http: str) -> None:
    h = make(hello, http)
    for n in range(1, 6):
        h.feed(GET)
        h.settle()
        assert len(h.transport.writes) == n
    h.close()


def test_at_most_one_task_per_request_and_none_per_connection(http: str, monkeypatch: Any) -> None:
    h = make(hello, http)
    created: list[Any] = []
    new_task = h.state.new_task

    def counting(coro: Any) -> Any:
        task = new_task(coro)
        created.append(task)
        return task

    h.state.new_task = counting
    before = len(asyncio.all_tasks(h.loop))
    for _ in range(3):
        h.feed(GET)
        h.settle()
    assert len(created) == 3
    # Nothing else was started per request or per connection (the driver's own task
    # aside, which settle() awaits and which is gone when it returns).
    assert len(asyncio.all_tasks(h.loop)) == before
    assert len(h.transport.writes) == 3
    h.close()


def test_state_tasks_hold_a_running_request_until_it_ends(http: str) -> None:
    # The server's shutdown waits for, then cancels, what state.tasks holds: a request
    # whose app is still running must be there, and gone once the app returned.
    release: list[asyncio.Future[None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        release.append(asyncio.get_running_loop().create_future())
        await release[0]
        await hello(scope, receive, send)

    h = make(app, http)
    h.feed(GET)
    h.loop.run_until_complete(asyncio.sleep(0))
    assert len(h.state.tasks) == 1 and h.protocol.busy()
    (task,) = h.state.tasks.values()
    assert not task.done()
    release[0].set_result(None)
    h.settle()
    assert task.done() and not h.state.tasks and not h.protocol.busy()
    h.feed(GET)  # an eager task (3.12+) that finished at once leaves no entry either
    h.settle()
    assert not h.state.tasks and len(h.transport.writes) == 2
    h.close()


def test_a_task_factory_set_by_the_app_is_honoured() -> None:
    loop = asyncio.new_event_loop()
    try:
        made: list[Any] = []

        def factory(loop: Any, coro: Any, **kw: Any) -> Any:
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kw)

        assert task_starter(loop) != loop.create_task  # no factory: tasks are made directly
        loop.set_task_factory(factory)
        start = task_starter(loop)
        task = start(asyncio.sleep(0))
        loop.run_until_complete(task)
        assert len(made) == 1
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks exist on 3.12+")
def test_eager_response_written_before_loop_runs(http: str) -> None:  # pragma: no cover - 3.12+
    h = make(hello, http)
    written: list[int] = []

    async def feed_inside_running_loop() -> None:
        h.feed(GET)
        written.append(len(h.transport.writes))  # before this coroutine yields once

    h.loop.run_until_complete(feed_inside_running_loop())
    assert written == [1]  # answered inside data_received: no loop iteration needed
    h.close()


def test_pipelined_requests_in_order(http: str) -> None:
    async def path_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    h = make(path_app, http)
    h.feed(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10)))
    for _ in range(20):
        h.settle()
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in responses(h.transport.data)]
    assert bodies == [b"/%d" % i for i in range(10)]
    h.close()


async def path_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


def test_pipelined_head_split_across_reads(http: str) -> None:
    # The second head begins at the end of the first read: it is not a head that
    # starts where the second read does (its request line is checked as a whole).
    h = make(path_app, http)
    h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT")
    h.settle()
    h.feed(b"TP/1.1\r\nHost: example\r\n\r\n")
    for _ in range(5):
        h.settle()
    answers = responses(h.transport.data)
    assert [r.split(b"\r\n", 1)[0] for r in answers] == [b"HTTP/1.1 200 OK"] * 2
    assert [r.split(b"\r\n\r\n", 1)[1] for r in answers] == [b"/a", b"/b"]
    h.close()


def test_field_limit_holds_for_a_split_pipelined_head(http: str) -> None:
    # A field in the part of a pipelined head that came with the previous read is
    # measured too, however small the read that completes the head.
    h = make(path_app, http, limit_request_field_size=100)
    h.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 200)
    h.settle()
    h.feed(b"\r\n\r\n")
    for _ in range(5):
        h.settle()
    answers = responses(h.transport.data)
    assert [r.split(b"\r\n", 1)[0] for r in answers] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 431 Request Header Fields Too Large",
    ]
    h.close()


def test_content_length_body_and_chunked_body(http: str) -> None:
    h = make(echo, http)
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
    h.settle(0.2)  # the app waits for the rest of the body
    h.feed(b"lo")
    h.settle()
    h.feed(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    h.settle()
    h.settle()
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in responses(h.transport.data)]
    assert bodies == [b"hello", b"abcde"]
    h.close()


async def fields_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    names = b",".join(name for name, _ in scope["headers"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": names})


def test_request_trailers_are_dropped_and_the_next_head_is_whole(http: str) -> None:
    # Trailer fields after a chunked body reach neither that request's scope nor the
    # next pipelined request's fields, in one read or split across reads.
    h = make(fields_app, http)
    h.feed(
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        b"X-Trailer-1: a\r\nX-Trailer-2: b\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nX-Next: c\r\n\r\n"
    )
    for _ in range(3):
        h.settle()
    h.feed(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer")
    h.settle()
    h.feed(b"-3: d\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\nX-Last: e\r\n\r\n")
    for _ in range(3):
        h.settle()
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in responses(h.transport.data)]
    assert bodies == [b"host,transfer-encoding", b"host,x-next", b"host,transfer-encoding", b"host,x-last"]
    h.close()


def test_chunked_body_and_next_request_fed_byte_by_byte(http: str) -> None:
    # Every line of a chunked body (size with an extension, data, trailer) may be cut
    # anywhere; the request pipelined behind it is parsed from its first byte.
    h = make(echo, http)
    data = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=value\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: v\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
    )
    for i in range(len(data)):
        h.feed(data[i : i + 1])
    for _ in range(5):
        h.settle()
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in responses(h.transport.data)]
    assert bodies == [b"abc0123456789abcdef", b"ok"]
    assert not h.transport.closed
    h.close()


def test_one_read_of_many_pipelined_requests(http: str) -> None:
    # A read far larger than one request's head: all of them are answered, in order,
    # bodies included.
    h = make(echo, http)
    count = 1500
    h.feed(b"".join(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n%04d" % i for i in range(count)))
    for _ in range(count // 10):
        h.settle()
        if len(responses(h.transport.data)) == count:
            break
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in responses(h.transport.data)]
    assert bodies == [b"%04d" % i for i in range(count)]
    h.close()


def test_forbidden_request_trailer_is_refused(http: str) -> None:
    h = make(fields_app, http)
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: y\r\n\r\n")
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 400 ") and h.transport.closed
    h.close()


def test_streaming_response_is_chunked(http: str) -> None:
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"bc", b""):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"d", "more_body": False})

    h = make(stream, http)
    h.feed(GET)
    h.settle()
    head, _, body = h.transport.data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head and b"content-length" not in head
    assert body == b"1\r\na\r\n2\r\nbc\r\n1\r\nd\r\n0\r\n\r\n"
    h.close()


def test_head_sends_no_body(http: str) -> None:
    h = make(hello, http)
    h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.settle()
    assert h.transport.data.endswith(b"\r\n\r\n")
    assert b"content-length: 13" in h.transport.data
    h.close()


def test_head_of_streaming_response_has_no_chunks(http: str) -> None:
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})

    h = make(stream, http)
    h.feed(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.settle()
    assert h.transport.data.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert not h.transport.closed
    h.close()


def test_http10_streaming_closes_connection(http: str) -> None:
    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"y"})

    h = make(stream, http)
    h.feed(b"GET / HTTP/1.0\r\n\r\n")
    h.settle()
    head, _, body = h.transport.data.partition(b"\r\n\r\n")
    assert b"chunked" not in head and b"connection: close" in head
    assert body == b"xy" and h.transport.closed
    h.close()


def test_expect_100_continue_only_when_body_read(http: str) -> None:
    h = make(echo, http)
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    h.settle(0.2)  # the app waits for the body
    assert h.transport.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    h.feed(b"abc")
    h.settle()
    assert h.transport.data.endswith(b"\r\n\r\nabc")
    h.close()

    h = make(hello, http)
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    h.settle()
    assert b"100 Continue" not in h.transport.data and b"200 OK" in h.transport.data
    assert b"connection: close" in h.transport.data and h.transport.closed
    h.close()


def test_app_exception_before_response_is_500(http: str, caplog: Any) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("kaput")

    h = make(broken, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 500 ")
    assert h.transport.closed
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [("kaput",)]
    h.close()


def test_app_exception_after_start_closes_connection(http: str) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("kaput")

    h = make(broken, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 200 OK")
    assert h.transport.closed
    h.close()


def test_response_header_with_newline_is_refused(http: str) -> None:
    async def splitting(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\r\nset-cookie: evil")]}
        )
        await send({"type": "http.response.body", "body": b""})

    h = make(splitting, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 500 ") and b"evil" not in h.transport.data
    h.close()


def test_disconnect_reaches_waiting_app(http: str) -> None:
    seen: list[dict[str, Any]] = []

    async def waiter(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    h = make(waiter, http)
    h.feed(GET)
    h.settle(0.2)
    h.protocol.connection_lost(None)
    h.settle()
    assert seen == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    h.close()


def test_send_after_disconnect_raises_oserror(http: str) -> None:
    errors: list[BaseException] = []

    async def late(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await receive()  # returns http.disconnect
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError as exc:
            errors.append(exc)

    h = make(late, http)
    h.feed(GET)
    h.settle(0.2)
    h.protocol.connection_lost(None)
    h.settle()
    assert len(errors) == 1
    h.close()


def test_request_body_backpressure_pauses_reading(http: str) -> None:
    gate = asyncio.Event()

    async def slow_reader(scope: Any, receive: Any, send: Any) -> None:
        await gate.wait()
        await echo(scope, receive, send)

    h = make(slow_reader, http)
    size = 256 * 1024
    h.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    h.settle(0.1)
    for _ in range(size // 8192):
        h.feed(b"z" * 8192)
    assert not h.transport.reading  # unread body past the high-water mark
    h.loop.call_soon(gate.set)
    h.settle()
    assert h.transport.reading
    assert h.transport.data.endswith(b"z" * 100)
    h.close()


def test_slow_client_write_backpressure(http: str) -> None:
    progress: list[int] = []

    async def streamer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    h = make(streamer, http)
    h.protocol.pause_writing()
    h.feed(GET)
    h.settle(0.2)
    assert progress == []  # the first send wrote, then waited for the transport to drain
    h.protocol.resume_writing()
    h.settle()
    assert progress == [0, 1, 2]
    h.close()


def test_trailers_extension(http: str) -> None:
    async def with_trailers(scope: Any, receive: Any, send: Any) -> None:
        assert "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})

    h = make(with_trailers, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.endswith(b"\r\n\r\n4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n")
    assert not h.transport.closed
    h.close()


def test_pathsend_extension(http: str, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 1000)

    async def file_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    h = make(file_app, http)
    h.feed(GET)
    h.settle()
    head, _, body = h.transport.data.partition(b"\r\n\r\n")
    assert b"content-length: 10000" in head and body == path.read_bytes()
    h.close()


def test_zerocopysend_regions_and_framing(http: str, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 10)

    async def regions(scope: Any, receive: Any, send: Any) -> None:
        assert "http.response.zerocopysend" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        with open(path, "rb") as fh:
            # No Content-Length and more to come: chunked, a chunk per region.
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": fh,
                    "offset": 5,
                    "count": 10,
                    "more_body": True,
                }
            )
            fh.seek(90)  # no offset: from the file's position; no count: to its end
            await send({"type": "http.response.zerocopysend", "file": fh, "more_body": True})
            await send({"type": "http.response.body", "body": b"!"})

    h = make(regions, http)
    h.feed(GET)
    h.settle()
    head, _, body = h.transport.data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"a\r\n5678901234\r\na\r\n0123456789\r\n1\r\n!\r\n0\r\n\r\n"
    assert not h.transport.closed
    h.close()


def test_zerocopysend_with_content_length_and_head(http: str, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)

    async def sized(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        with open(path, "rb") as fh:
            await send({"type": "http.response.zerocopysend", "file": fh})

    h = make(sized, http)
    h.feed(GET + b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    h.settle()
    data = h.transport.data
    head = data[: data.index(b"\r\n\r\n") + 4]
    assert b"content-length: 1000" in head
    # HEAD: the same head and no body; the connection goes on.
    assert data == head + b"x" * 1000 + head + head + b"x" * 1000
    h.close()


def test_pathsend_of_a_file_shorter_than_announced_closes(http: str, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"y" * 10)

    async def short(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"20")]})
        await send({"type": "http.response.pathsend", "path": str(path)})

    h = make(short, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.endswith(b"\r\n\r\n" + b"y" * 10)
    assert h.transport.closed  # the client must not wait for the 10 missing bytes
    h.close()


def test_limit_concurrency_503(http: str) -> None:
    h = make(hello, http, limit_concurrency=1)
    h.state.active_requests = 1  # one request already in flight elsewhere
    h.feed(GET)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 503 ")
    h.close()


def test_bad_request_is_400_and_closed(http: str) -> None:
    h = make(hello, http)
    h.feed(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 400 ")
    assert h.transport.data.count(b"HTTP/1.1") == 1
    assert h.transport.closed
    h.close()


def test_scope(http: str) -> None:
    scopes: list[dict[str, Any]] = []

    async def capture(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    h = make(capture, http, root_path="/mnt")
    h.feed(b"GET /a%20b/c?x=1&y=%2F HTTP/1.1\r\nHost: x\r\nX-Test: v\r\n\r\n")
    h.settle()
    scope = scopes[0]
    assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
    assert scope["method"] == "GET" and scope["http_version"] == "1.1" and scope["scheme"] == "http"
    assert scope["path"] == "/mnt/a b/c" and scope["raw_path"] == b"/mnt/a%20b/c"
    assert scope["root_path"] == "/mnt" and scope["query_string"] == b"x=1&y=%2F"
    assert scope["headers"] == [(b"host", b"x"), (b"x-test", b"v")]
    assert scope["client"] == ("127.0.0.1", 50000) and scope["server"] == ("127.0.0.1", 8000)
    assert scope["state"] == {} and "http.response.pathsend" in scope["extensions"]
    h.close()


def test_proxy_headers_from_trusted_peer(http: str) -> None:
    scopes: list[dict[str, Any]] = []

    async def capture(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        b"X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    h = make(capture, http)
    h.feed(request)
    h.settle()
    assert scopes[-1]["client"] == ("203.0.113.9", 0) and scopes[-1]["scheme"] == "https"
    h.close()
    h = make(capture, http, forwarded_allow_ips="10.0.0.0/8")
    h.feed(request)
    h.settle()
    assert scopes[-1]["client"] == ("127.0.0.1", 50000) and scopes[-1]["scheme"] == "http"
    h.close()


def test_keep_alive_timeout_closes_idle_connection(http: str) -> None:
    h = make(hello, http, timeout_keep_alive=5)
    h.feed(GET)
    h.settle()
    now = h.loop.time()
    h.protocol.check_idle(now + 4)
    assert not h.transport.closed
    h.protocol.check_idle(now + 6)
    assert h.transport.closed
    h.close()


def test_app_returning_without_response_is_500(http: str) -> None:
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    h = make(silent, http)
    h.feed(GET)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 500 ")
    h.close()


def test_chunks_sent_back_to_back_leave_in_one_write(http: str) -> None:
    async def burst(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(64):
            await send({"type": "http.response.body", "body": b"%02d" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    h = make(burst, http)
    h.feed(GET)
    h.settle()
    assert len(h.transport.writes) == 1  # head, 64 chunks and the last chunk: one syscall
    body = h.transport.data.partition(b"\r\n\r\n")[2]
    assert body == b"".join(b"2\r\n%02d\r\n" % i for i in range(64)) + b"0\r\n\r\n"
    h.close()


def test_streamed_chunk_is_written_when_the_app_waits(http: str) -> None:
    gate = asyncio.Event()

    async def sse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"event 1", "more_body": True})
        await gate.wait()  # e.g. waiting for the next event: what was sent must be out
        await send({"type": "http.response.body", "body": b""})

    h = make(sse, http)
    h.feed(GET)
    h.settle(0.2)
    assert h.transport.data.endswith(b"7\r\nevent 1\r\n")
    h.loop.call_soon(gate.set)
    h.settle()
    assert h.transport.data.endswith(b"0\r\n\r\n")
    h.close()


def test_large_stream_is_not_held_beyond_64k(http: str) -> None:
    sizes: list[int] = []

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(40):
            await send({"type": "http.response.body", "body": b"x" * 8192, "more_body": True})
            sizes.append(sum(len(w) for w in h.transport.writes))
        await send({"type": "http.response.body", "body": b""})

    h = make(big, http)
    h.feed(GET)
    h.settle()
    # Never more than 64 KiB (plus one chunk) waits unwritten inside the cycle.
    assert all((i + 1) * 8192 - written < 64 * 1024 + 8192 for i, written in enumerate(sizes))
    h.close()
