"""End to end HTTP/1.1 behaviour over raw sockets, for every parser (httptools, h11, h1c):
HEAD, Expect: 100-continue, chunked request bodies, HTTP/1.0, client disconnects,
malformed requests. After each, the same worker must still serve."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from support import ServerProcess, run_asgictl

TIMEOUT = 10.0


@pytest.fixture(scope="module", params=["httptools", "h11", "h1c"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with run_asgictl(["serve", "extra:app", "--port", "0", "--http", request.param]) as proc:
        yield proc


class Conn:
    """A raw client connection that reads whole HTTP/1.1 responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise AssertionError(f"connection closed before {marker!r}; got {self.buf!r}")
        head, _, self.buf = self.buf.partition(marker)
        return head + marker

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise AssertionError(f"connection closed after {len(self.buf)} of {n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self) -> tuple[int, dict[str, str], bytes]:
        raw = self.read_until(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers, raw

    def read_response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers, _ = self.read_head()
        if head or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self.read_exact(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")
                    return status, headers, body
                body += self.read_exact(size)
                assert self.read_exact(2) == b"\r\n"
        return status, headers, self.read_to_close()

    def read_to_close(self) -> bytes:
        """Everything until the server closes; fails if it does not within TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                if not self._fill():
                    data, self.buf = self.buf, b""
                    return data
            except ConnectionResetError:
                data, self.buf = self.buf, b""
                return data
        raise AssertionError("the server did not close the connection")


def still_serving(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200 and r.text == "Hello, world!"


def test_head_sends_no_body_but_keeps_content_length(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = conn.read_head()
        assert status == 200 and headers["content-length"] == "13"
        # No body bytes: the next response on the same connection starts right away.
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = conn.read_response()
        assert status == 200 and body == b"Hello, world!"
        assert conn.buf == b""
    still_serving(server)


def test_head_of_streaming_response_sends_no_body(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        # Pipelined: any stray body byte of the HEAD answer would show before the next head.
        conn.send(
            b"HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        status, _headers, _ = conn.read_head()
        assert status == 200
        rest = conn.read_to_close()
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:40]
        assert rest.endswith(b"Hello, world!")
    still_serving(server)


def test_expect_continue_sent_when_the_app_reads(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        # The interim response arrives before the client has sent any body byte.
        assert conn.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.send(b"hello")
        status, headers, body = conn.read_response()
        assert status == 200 and body == b"read:hello"
        assert headers.get("connection") != "close"
        # The connection stays usable.
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.read_response()[2] == b"Hello, world!"
    still_serving(server)


def test_expect_continue_not_sent_when_the_app_does_not_read(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        status, headers, body = conn.read_response()
        assert status == 200 and body == b"not reading your body"
        # A client that gives up waiting may still send the body, then another request:
        # either the server closed the connection, or it discards the body and answers.
        conn.send(b"hello")
        try:
            conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        rest = conn.read_to_close()
        if headers.get("connection") == "close":
            assert rest == b""
        else:
            assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"Hello, world!")
        assert b"100 Continue" not in rest
    still_serving(server)


def test_chunked_request_body_reaches_the_app_whole(server: ServerProcess) -> None:
    parts = [b"first ", b"x" * 70_000, b" second;", b"", b"\r\nlast"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p)
    body = body.replace(b"6\r\n", b"6;ext=1\r\n", 1) + b"0\r\n\r\n"
    with Conn(server.port) as conn:
        conn.send(b"POST /read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 1000):  # dribbled in small pieces
            conn.send(body[i : i + 1000])
        status, _, got = conn.read_response()
        assert status == 200 and got == b"read:" + b"".join(parts)
    still_serving(server)


def test_large_body_arriving_with_the_head(server: ServerProcess) -> None:
    # One write: the server's first read holds the head and a lot of body (not head bytes).
    body = bytes(range(256)) * 1200
    with Conn(server.port) as conn:
        conn.send(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        status, _, got = conn.read_response()
        assert status == 200 and got == b"read:" + body
        conn.send(b"POST /read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.send(b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))
        status, _, got = conn.read_response()
        assert status == 200 and got == b"read:" + body
    still_serving(server)


def test_http10_without_keep_alive_closes_with_content_length(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")  # no half-close: the server must close
        status, headers, body = conn.read_response()
        assert status == 200 and headers["content-length"] == "13" and body == b"Hello, world!"
        assert conn.read_to_close() == b""
    still_serving(server)


def test_http10_keep_alive_is_honoured(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = conn.read_response()
        assert status == 200 and body == b"Hello, world!"
        assert headers["connection"].lower() == "keep-alive"
        conn.send(b"GET /scope HTTP/1.0\r\nHost: x\r\n\r\n")
        status, headers, body = conn.read_response()
        assert status == 200 and b'"http_version": "1.0"' in body
        assert conn.read_to_close() == b""


def test_http10_streaming_response_ends_by_close(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(b"GET /stream HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = conn.read_response()
        assert status == 200
        assert "content-length" not in headers and "transfer-encoding" not in headers
        assert headers["connection"] == "close"
        assert body == b"".join(b"chunk%d\n" % i for i in range(5))
    still_serving(server)


def test_client_disconnect_during_long_poll_reaches_the_app(server: ServerProcess) -> None:
    tag = f"t{time.monotonic_ns()}"
    conn = Conn(server.port)
    conn.send(f"POST /longpoll?{tag} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".encode())
    server.wait_for_line(rf"longpoll {tag} waiting")
    conn.sock.close()
    server.wait_for_line(rf"longpoll {tag} got http.disconnect")
    still_serving(server)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello
    ],
    ids=["header", "nul", "content-length", "tls"],
)
def test_malformed_request_gets_400_and_close(server: ServerProcess, request_bytes: bytes) -> None:
    with Conn(server.port) as conn:
        conn.send(request_bytes)
        data = conn.read_to_close()  # no half-close: the server closes by itself
        assert data.startswith(b"HTTP/1.1 400 "), data[:60]
        assert b"connection: close" in data.lower()
    still_serving(server)


def test_malformed_chunked_body_while_the_app_reads_it(server: ServerProcess) -> None:
    tag = f"t{time.monotonic_ns()}"
    with Conn(server.port) as conn:
        conn.send(f"POST /read?{tag} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        conn.send(b"5\r\nhello\r\n")
        server.wait_for_line(rf"read {tag} got http.request")
        conn.send(b"ZZZ\r\n")  # not a chunk size
        data = conn.read_to_close()
        assert data.startswith(b"HTTP/1.1 400 "), data[:60]
    # The app waiting for the rest of the body learns that it will never come.
    server.wait_for_line(rf"read {tag} got http.disconnect")
    still_serving(server)


def test_pipelined_request_before_a_malformed_one_is_answered(server: ServerProcess) -> None:
    with Conn(server.port) as conn:
        conn.send(
            b"GET /scope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost x\r\n\r\n"
            b"GET /echo HTTP/1.1\r\n\r\n"
        )
        # The request that came whole before the bad bytes is answered, as the last one.
        status, headers, body = conn.read_response()
        assert status == 200 and b'"path": "/scope"' in body
        assert headers["connection"] == "close"
        # Nothing after the bad bytes is served (a 400 for them is allowed).
        rest = conn.read_to_close()
        assert rest == b"" or (rest.startswith(b"HTTP/1.1 400 ") and rest.count(b"HTTP/1.1") == 1)
    still_serving(server)
