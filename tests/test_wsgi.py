"""Tests of asgictl.worker.wsgi: the WSGI app driven through the adapter as an ASGI app.

Every test calls the adapter directly with a fake ``receive`` (a list of messages) and a
fake ``send`` (recording messages); no server and no network. Nothing waits by sleeping:
threads are synchronised with events, always with a timeout so a bug fails, not hangs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

import flask
import pytest

from asgictl.worker.wsgi import WSGIAdapter, build_environ
from asgictl.worker.wsgi.response import AHEAD, MESSAGE_COST

Message = dict[str, Any]
Environ = dict[str, Any]

WAIT = 5.0  # seconds: an upper bound for thread handshakes, never a delay


class Receiver:
    """A fake ASGI receive: returns the given messages, then http.disconnect forever."""

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self.messages = list(messages)
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        if self.messages:
            return self.messages.pop(0)
        return {"type": "http.disconnect"}


def body_messages(*chunks: bytes) -> list[Message]:
    """http.request messages carrying ``chunks``, the last one with more_body False."""
    return [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]


class Sender:
    """A fake ASGI send recording messages; raises OSError from message ``fail_at`` on."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.messages: list[Message] = []
        self.fail_at = fail_at

    async def __call__(self, message: Message) -> None:
        if self.fail_at is not None and len(self.messages) >= self.fail_at:
            raise OSError("client disconnected")
        self.messages.append(message)

    @property
    def start(self) -> Message:
        assert self.messages[0]["type"] == "http.response.start"
        return self.messages[0]

    @property
    def bodies(self) -> list[Message]:
        return [m for m in self.messages if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.bodies)


def make_scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "server": ("127.0.0.1", 8000),
        "client": ("10.0.0.1", 54321),
    }
    scope.update(overrides)
    return scope


def chunked_scope(**overrides: Any) -> dict[str, Any]:
    """A request whose body is chunked (no Content-Length): it streams to the app."""
    return make_scope(headers=[(b"host", b"example.com"), (b"transfer-encoding", b"chunked")], **overrides)


def serve(
    app: Callable[..., Iterable[bytes]],
    scope: dict[str, Any] | None = None,
    receiver: Receiver | None = None,
    sender: Sender | None = None,
) -> Sender:
    """Run one request through a fresh adapter; return the sender with what was sent."""
    sender = sender or Sender()
    adapter = WSGIAdapter(app, threads=2)
    try:
        asyncio.run(adapter(scope or make_scope(), receiver or Receiver(body_messages(b"")), sender))
    finally:
        adapter.shutdown()
    return sender


def capture_environ(scope: dict[str, Any], receiver: Receiver | None = None) -> Environ:
    seen: Environ = {}

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    serve(app, scope, receiver)
    return seen


# --------------------------------------------------------------------------- environ


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"method": "POST", "path": "/items/7", "query_string": b"a=1&b=%20x"},
            {
                "REQUEST_METHOD": "POST",
                "SCRIPT_NAME": "",
                "PATH_INFO": "/items/7",
                "QUERY_STRING": "a=1&b=%20x",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "8000",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "REMOTE_ADDR": "10.0.0.1",
                "REMOTE_PORT": "54321",
                "HTTP_HOST": "example.com",
                "wsgi.url_scheme": "http",
            },
            id="plain",
        ),
        pytest.param(
            {"root_path": "/api", "path": "/api/users/", "http_version": "2"},
            {"SCRIPT_NAME": "/api", "PATH_INFO": "/users/", "SERVER_PROTOCOL": "HTTP/2"},
            id="root-path",
        ),
        pytest.param(
            {"root_path": "/api", "path": "/api"},
            {"SCRIPT_NAME": "/api", "PATH_INFO": ""},
            id="root-path-exact",
        ),
        pytest.param(
            {"root_path": "/api", "path": "/apiary"},
            {"SCRIPT_NAME": "/api", "PATH_INFO": "/apiary"},
            id="root-path-not-a-segment",
        ),
        pytest.param(
            # The client sent /caf%C3%A9/%E2%82%AC; the server percent-decoded it.
            {"path": "/café/€", "raw_path": b"/caf%C3%A9/%E2%82%AC", "root_path": "/ü"},
            {"PATH_INFO": "/caf\xc3\xa9/\xe2\x82\xac", "SCRIPT_NAME": "/\xc3\xbc"},
            id="non-ascii-path",
        ),
        pytest.param(
            {"query_string": b"q=caf\xc3\xa9&x=%41"},
            {"QUERY_STRING": "q=caf\xc3\xa9&x=%41"},
            id="query-string-latin-1",
        ),
        pytest.param(
            {"server": ("/run/asgictl.sock", None)},
            {"SERVER_NAME": "localhost", "SERVER_PORT": "80"},
            id="unix-socket",
        ),
        pytest.param(
            {"server": None, "scheme": "https"},
            {"SERVER_NAME": "localhost", "SERVER_PORT": "443", "wsgi.url_scheme": "https"},
            id="no-server-https",
        ),
        pytest.param(
            {"server": ["::1", 8443]},
            {"SERVER_NAME": "::1", "SERVER_PORT": "8443"},
            id="server-as-list-ipv6",
        ),
        pytest.param(
            {"client": ("/run/asgictl.sock", None)},
            {"REMOTE_ADDR": "/run/asgictl.sock"},
            id="client-without-port",
        ),
    ],
)
def test_environ_from_scope(overrides: dict[str, Any], expected: dict[str, str]) -> None:
    environ = capture_environ(make_scope(**overrides))
    assert {key: environ.get(key) for key in expected} == expected
    for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT"):
        assert type(environ[key]) is str
        environ[key].encode("latin-1")  # PEP 3333 native strings


def test_environ_without_client() -> None:
    environ = capture_environ(make_scope(client=None))
    assert "REMOTE_ADDR" not in environ
    assert "REMOTE_PORT" not in environ


def test_environ_headers() -> None:
    scope = make_scope(
        headers=[
            (b"host", b"example.com"),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"12"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"X-Forwarded-For", b"2.2.2.2"),
            (b"accept", b"text/html"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x-latin", b"caf\xe9"),
            (b"x_forwarded_for", b"6.6.6.6"),  # would be spoofable as HTTP_X_FORWARDED_FOR
        ]
    )
    environ = capture_environ(scope)
    assert environ["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1,2.2.2.2"
    assert environ["HTTP_ACCEPT"] == "text/html"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_X_LATIN"] == "café"


def test_environ_no_content_headers_when_absent() -> None:
    environ = capture_environ(make_scope())
    assert "CONTENT_TYPE" not in environ
    assert "CONTENT_LENGTH" not in environ


def test_environ_wsgi_keys() -> None:
    scope = make_scope()
    environ = capture_environ(scope)
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.errors"] is sys.stderr
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["asgi.scope"] is scope
    assert hasattr(environ["wsgi.input"], "read")


def test_build_environ_directly() -> None:
    body = object()
    environ = build_environ(make_scope(path="/x", scheme="https"), body)
    assert environ["wsgi.input"] is body
    assert environ["PATH_INFO"] == "/x"
    assert environ["wsgi.url_scheme"] == "https"


def test_app_runs_in_named_worker_thread() -> None:
    names: list[str] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        names.append(threading.current_thread().name)
        start_response("200 OK", [])
        return [b"ok"]

    serve(app)
    assert names[0].startswith("asgictl-wsgi")
    assert names[0] != threading.main_thread().name


# ----------------------------------------------------------------------- request body


def test_request_body_is_pulled_incrementally() -> None:
    chunks = [bytes([65 + i]) * 1000 for i in range(20)]
    receiver = Receiver(body_messages(*chunks))
    calls_after: list[int] = []
    received: list[bytes] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        received.append(stream.read(1000))
        calls_after.append(receiver.calls)
        received.append(stream.read(1500))
        calls_after.append(receiver.calls)
        received.append(stream.read())
        calls_after.append(receiver.calls)
        received.append(stream.read())
        calls_after.append(receiver.calls)
        start_response("200 OK", [])
        return []

    serve(app, chunked_scope(), receiver)
    assert calls_after == [1, 3, 20, 20]
    assert received[0] == b"A" * 1000
    assert received[1] == b"B" * 1000 + b"C" * 500
    assert b"".join(received) == b"".join(chunks)
    assert received[3] == b""


def test_request_body_readline_readlines_and_iteration() -> None:
    receiver = Receiver(body_messages(b"first li", b"ne\nsecond\n", b"", b"third\nlast without newline"))
    results: dict[str, Any] = {}

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        results["line"] = stream.readline()
        results["limited"] = stream.readline(3)
        results["rest_of_line"] = stream.readline()
        results["iterated"] = list(stream)
        results["after"] = (stream.readline(), stream.read(10), stream.readlines())
        start_response("200 OK", [])
        return []

    serve(app, chunked_scope(), receiver)
    assert results["line"] == b"first line\n"
    assert results["limited"] == b"sec"
    assert results["rest_of_line"] == b"ond\n"
    assert results["iterated"] == [b"third\n", b"last without newline"]
    assert results["after"] == (b"", b"", [])


def test_request_body_readlines_hint() -> None:
    receiver = Receiver(body_messages(b"a\nbb\n", b"ccc\ndddd\n"))
    results: list[Any] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        results.append(stream.readlines(4))
        results.append(receiver.calls)
        results.append(stream.readlines())
        start_response("200 OK", [])
        return []

    serve(app, chunked_scope(), receiver)
    assert results == [[b"a\n", b"bb\n"], 1, [b"ccc\n", b"dddd\n"]]


def test_disconnect_ends_request_body() -> None:
    receiver = Receiver(
        [{"type": "http.request", "body": b"partial", "more_body": True}, {"type": "http.disconnect"}]
    )
    reads: list[bytes] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        stream = environ["wsgi.input"]
        reads.extend([stream.read(), stream.read(), stream.readline()])
        start_response("200 OK", [])
        return [b"nobody listens"]

    sender = serve(app, chunked_scope(), receiver)
    assert reads == [b"partial", b"", b""]
    assert receiver.calls == 2  # no receive after the disconnect
    # The client is gone: the response is not sent.
    assert sender.messages == []


# ---------------------------------------------------------------------------- response


def streamed(sender: Sender) -> list[tuple[bytes, bool]]:
    return [(m["body"], m["more_body"]) for m in sender.bodies]


def assert_streamed(sender: Sender, *chunks: bytes) -> None:
    """The chunks went out in order as streamed bodies, the last message ending the body.
    (The last chunk and the end of the body travel as one message when the loop finds
    both at once: the thread does not wait for each send.)"""
    bodies = streamed(sender)
    assert b"".join(body for body, _ in bodies) == b"".join(chunks)
    assert [more for _, more in bodies] == [True] * (len(bodies) - 1) + [False]
    assert [body for body, _ in bodies if body] == list(chunks)


def test_response_chunks_are_streamed() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Custom", "café")])
        for index in range(3):
            yield b"chunk%d" % index

    sender = serve(app)
    assert sender.start == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"x-custom", b"caf\xe9")],
    }
    assert_streamed(sender, b"chunk0", b"chunk1", b"chunk2")


def test_response_with_content_length_is_complete_with_its_last_byte() -> None:
    closing: list[int] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"abc"
            yield b"de"

        def close(self) -> None:
            closing.append(len(sender.messages))

    def app(environ: Environ, start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [("Content-Length", "5")])
        return Body()

    sender = Sender()
    serve(app, sender=sender)
    assert streamed(sender) == [(b"abc", True), (b"de", False)]
    assert closing == [len(sender.messages)] or closing  # close() ran, after or meanwhile


def test_thread_runs_at_most_AHEAD_bytes_ahead_of_the_client() -> None:
    chunk = b"x" * 16384
    pieces = 4 * AHEAD // len(chunk)
    produced: list[int] = []
    release = asyncio.Event()

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        for index in range(pieces):
            produced.append(index)
            yield chunk

    async def main() -> Sender:
        sender = Sender()

        async def slow_send(message: Message) -> None:
            await release.wait()
            await sender(message)

        adapter = WSGIAdapter(app, threads=1)
        task = asyncio.create_task(adapter(make_scope(), Receiver(), slow_send))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        # The thread fills what it may produce ahead, then waits for the client.
        previous = -1
        while loop.time() < deadline and len(produced) != previous:
            previous = len(produced)
            await asyncio.sleep(0.05)
        assert 0 < len(produced) * (len(chunk) + MESSAGE_COST) <= AHEAD + 2 * len(chunk)
        release.set()
        await asyncio.wait_for(task, WAIT)
        adapter.shutdown()
        return sender

    sender = asyncio.run(main())
    assert len(produced) == pieces
    assert sender.body == chunk * pieces


def test_empty_response_sends_start_and_final_body() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b"", b""]

    sender = serve(app)
    assert sender.messages == [
        {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


def test_write_callable() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("201 Created", [])
        write(b"one")
        write(b"")
        write(b"two")
        return [b"three"]

    sender = serve(app)
    assert sender.start["status"] == 201
    assert_streamed(sender, b"one", b"two", b"three")


def test_close_is_called_on_success() -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"x"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Body:
        start_response("200 OK", [])
        return Body()

    sender = serve(app)
    assert closed == [True]
    assert sender.body == b"x"


# ---------------------------------------------------------------------------- exc_info


def test_exc_info_before_headers_sent_replaces_status() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("X-Old", "1")])
        try:
            raise KeyError("boom")
        except KeyError:
            start_response("500 Internal Server Error", [("X-New", "1")], sys.exc_info())
        return [b"error page"]

    sender = serve(app)
    assert sender.start == {"type": "http.response.start", "status": 500, "headers": [(b"x-new", b"1")]}
    assert sender.body == b"error page"


def test_exc_info_after_headers_sent_reraises() -> None:
    sender = Sender()
    closed: list[bool] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            yield b"more"
            raise LookupError("late failure")
        except LookupError:
            start_response("500 Internal Server Error", [], sys.exc_info())
            yield b"never sent"
        finally:
            closed.append(True)

    with pytest.raises(LookupError, match="late failure"):
        serve(app, sender=sender)
    assert closed == [True]
    assert sender.start["status"] == 200
    assert [m["body"] for m in sender.bodies] == [b"partial", b"more"]
    assert all(m["more_body"] for m in sender.bodies)


def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return []

    sender = Sender()
    with pytest.raises(RuntimeError, match="second time"):
        serve(app, sender=sender)
    assert sender.messages == []


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        ("OK", [], ValueError),
        (b"200 OK", [], TypeError),
        ("200 OK", [("X-Bad", b"bytes")], TypeError),
        ("200 OK", [("X-Bad", "a\r\nSet-Cookie: x=1")], ValueError),
        ("200 OK", ["X-Bad: 1"], TypeError),
    ],
)
def test_start_response_validates(status: Any, headers: Any, error: type[Exception]) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, headers)
        return []

    with pytest.raises(error):
        serve(app)


# -------------------------------------------------------------------------- errors


def test_exception_before_start_propagates() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        raise ZeroDivisionError("in the app")

    sender = Sender()
    with pytest.raises(ZeroDivisionError, match="in the app"):
        serve(app, sender=sender)
    assert sender.messages == []


def test_exception_before_first_nonempty_chunk_sends_nothing() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""
        raise ValueError("after an empty chunk")

    sender = Sender()
    with pytest.raises(ValueError, match="after an empty chunk"):
        serve(app, sender=sender)
    assert sender.messages == []  # the server may still answer 500


def test_exception_after_start_propagates_and_closes() -> None:
    closed: list[bool] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"first"
            raise ValueError("mid-stream")
        finally:
            closed.append(True)

    sender = Sender()
    with pytest.raises(ValueError, match="mid-stream"):
        serve(app, sender=sender)
    assert closed == [True]
    assert [m["body"] for m in sender.bodies] == [b"first"]


def test_missing_start_response_is_an_error() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        return [b"body"]

    with pytest.raises(RuntimeError, match="start_response"):
        serve(app)


def test_str_chunk_is_an_error() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[Any]:
        start_response("200 OK", [])
        return ["text"]

    with pytest.raises(TypeError, match="bytes"):
        serve(app)


def test_client_gone_on_send_closes_iterable_and_returns() -> None:
    produced: list[int] = []
    closed: list[bool] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            index = 0
            while True:  # an endless stream: only the disconnect can end it
                produced.append(index)
                yield b"tick"
                index += 1
        finally:
            closed.append(True)

    sender = Sender(fail_at=3)  # start + two chunks, then the client is gone
    serve(app, sender=sender)  # returns normally: a gone client is no app error
    assert closed == [True]
    assert len(sender.messages) == 3
    # The thread ran ahead of the client by at most AHEAD bytes, then stopped.
    assert 2 < len(produced) <= AHEAD // (len(b"tick") + MESSAGE_COST) + 2


def test_client_gone_on_write_stops_app() -> None:
    attempts: list[int] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [])
        for index in range(AHEAD):  # far more than may go unsent: write() must stop it
            attempts.append(index)
            write(b"data")
        return []

    sender = Sender(fail_at=1)
    serve(app, sender=sender)
    assert 0 < len(attempts) <= AHEAD // (len(b"data") + MESSAGE_COST) + 2
    assert [m["type"] for m in sender.messages] == ["http.response.start"]


def test_cancelled_request_releases_thread_and_closes_iterable() -> None:
    closed = threading.Event()
    in_send = asyncio.Event()

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    async def stuck_send(message: Message) -> None:
        in_send.set()
        await asyncio.Event().wait()  # a client that never drains

    async def main() -> None:
        adapter = WSGIAdapter(app, threads=1)
        task = asyncio.create_task(adapter(make_scope(), Receiver(body_messages(b"")), stuck_send))
        await asyncio.wait_for(in_send.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker thread is released: it closes the iterable and returns.
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, closed.wait, WAIT)
        adapter.shutdown(wait=True)

    asyncio.run(main())


def test_requests_run_concurrently_in_threads() -> None:
    barrier = threading.Barrier(3, timeout=WAIT)

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        # Each request waits for the other two: this only passes if three threads run
        # the app at once while the event loop stays free.
        barrier.wait()
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    async def main() -> list[Sender]:
        adapter = WSGIAdapter(app, threads=3)
        senders = [Sender() for _ in range(3)]
        await asyncio.gather(
            *(
                adapter(make_scope(path=f"/{i}"), Receiver(body_messages(b"")), sender)
                for i, sender in enumerate(senders)
            )
        )
        adapter.shutdown()
        return senders

    senders = asyncio.run(main())
    assert [s.body for s in senders] == [b"/0", b"/1", b"/2"]


# ---------------------------------------------------------------------- other scopes


def test_lifespan_is_answered_and_shutdown_stops_the_threads() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    async def main() -> tuple[Sender, Sender, list[threading.Thread]]:
        adapter = WSGIAdapter(app, threads=2)
        sender = Sender()
        await adapter(make_scope(), Receiver(), sender)
        threads = list(adapter._workers)
        lifespan = Sender()
        receiver = Receiver([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        await adapter({"type": "lifespan", "asgi": {"version": "3.0"}}, receiver, lifespan)
        return sender, lifespan, threads

    sender, lifespan, threads = asyncio.run(main())
    assert sender.body == b"ok"
    answered = [m["type"] for m in lifespan.messages]
    assert answered == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(threads) == 2
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()


@pytest.mark.parametrize("kind", ["websocket"])
def test_non_http_scopes_are_unsupported(kind: str) -> None:
    called: list[bool] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        called.append(True)
        return []

    receiver = Receiver([{"type": "lifespan.startup"}])
    sender = Sender()
    adapter = WSGIAdapter(app)
    with pytest.raises(RuntimeError, match=f"do not support {kind}"):
        asyncio.run(adapter({"type": kind, "asgi": {"version": "3.0"}}, receiver, sender))
    adapter.shutdown()
    assert called == []
    assert sender.messages == []
    assert receiver.calls == 0


def test_max_workers_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WSGIAdapter(lambda environ, start_response: [], threads=0)


# --------------------------------------------------------------------------- flask


def make_flask_app() -> flask.Flask:
    app = flask.Flask(__name__)

    @app.post("/form")
    def form() -> Any:
        return flask.jsonify(
            name=flask.request.form["name"],
            tags=flask.request.form.getlist("tag"),
            path=flask.request.path,
            script_root=flask.request.script_root,
            url=flask.request.url,
        )

    @app.post("/echo")
    def echo() -> Any:
        return flask.jsonify(length=len(flask.request.get_data()), json=flask.request.get_json())

    return app


def test_flask_form_post_and_json_response() -> None:
    form = urlencode([("name", "Zoë"), ("tag", "a"), ("tag", "b")]).encode()
    scope = make_scope(
        method="POST",
        path="/mount/form",
        root_path="/mount",
        headers=[
            (b"host", b"example.com"),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(form)).encode()),
        ],
    )
    receiver = Receiver(body_messages(form[:7], form[7:20], form[20:]))
    sender = serve(make_flask_app(), scope, receiver)

    assert sender.start["status"] == 200
    headers = dict(sender.start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert flask.json.loads(sender.body) == {
        "name": "Zoë",
        "tags": ["a", "b"],
        "path": "/form",
        "script_root": "/mount",
        "url": "http://example.com/mount/form",
    }
    # Flask gives a Content-Length: its last byte completes the response.
    assert sender.bodies[-1]["more_body"] is False


def test_flask_chunked_json_body_without_content_length() -> None:
    # No Content-Length (a chunked upload): wsgi.input_terminated lets Flask read to EOF.
    payload = flask.json.dumps({"items": list(range(500))}).encode()
    scope = make_scope(
        method="POST",
        path="/echo",
        headers=[
            (b"host", b"example.com"),
            (b"content-type", b"application/json"),
            (b"transfer-encoding", b"chunked"),
        ],
    )
    chunks = [payload[i : i + 256] for i in range(0, len(payload), 256)]
    sender = serve(make_flask_app(), scope, Receiver(body_messages(*chunks)))
    assert sender.start["status"] == 200
    assert flask.json.loads(sender.body) == {"length": len(payload), "json": {"items": list(range(500))}}


def test_flask_404() -> None:
    sender = serve(make_flask_app(), make_scope(path="/missing"))
    assert sender.start["status"] == 404
    assert b"Not Found" in sender.body


def test_requests_past_threads_and_queue_are_answered_503() -> None:
    release = threading.Event()

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        release.wait(WAIT)
        start_response("200 OK", [])
        return [b"done"]

    async def main() -> list[Sender]:
        adapter = WSGIAdapter(app, threads=1, queue_size=1)
        senders = [Sender() for _ in range(4)]
        # One runs, one waits in the queue, the other two find it full.
        tasks = [asyncio.create_task(adapter(make_scope(), Receiver(), s)) for s in senders]
        await asyncio.wait(tasks[2:], timeout=WAIT)
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        adapter.shutdown()
        return senders

    senders = asyncio.run(main())
    assert [s.start["status"] for s in senders] == [200, 200, 503, 503]
    assert senders[0].body == senders[1].body == b"done"


def test_small_body_is_read_before_the_app_runs_and_large_one_streams() -> None:
    from asgictl.worker.wsgi.adapter import PREREAD

    seen: dict[str, Any] = {}

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        seen["calls_before_read"] = receiver.calls
        seen["body"] = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return []

    small = b"x" * 1000
    receiver = Receiver(body_messages(small[:400], small[400:]))
    scope = make_scope(method="POST", headers=[(b"content-length", b"1000")])
    serve(app, scope, receiver)
    assert seen == {"calls_before_read": 2, "body": small}

    large = b"y" * (PREREAD + 1)
    receiver = Receiver(body_messages(large[:1000], large[1000:]))
    scope = make_scope(method="POST", headers=[(b"content-length", str(len(large)).encode())])
    serve(app, scope, receiver)
    assert seen == {"calls_before_read": 0, "body": large}


def test_file_wrapper_of_a_file_becomes_one_zerocopysend(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 100)
    files: list[Any] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Length", "990")])
        fh = open(path, "rb")
        fh.seek(10)
        files.append(fh)
        return environ["wsgi.file_wrapper"](fh, 4096)

    sender = serve(app)
    assert [m["type"] for m in sender.messages] == ["http.response.start", "http.response.zerocopysend"]
    message = sender.messages[1]
    assert (message["offset"], message["count"], message["more_body"]) == (10, 990, False)
    assert message["file"] is files[0] and files[0].closed  # closed after it was sent


def test_file_wrapper_of_a_file_like_without_fileno_is_iterated() -> None:
    import io

    def app(environ: Environ, start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"a" * 10_000), 4096)

    sender = serve(app)
    assert sender.body == b"a" * 10_000
    assert all(m["type"] != "http.response.zerocopysend" for m in sender.messages)
