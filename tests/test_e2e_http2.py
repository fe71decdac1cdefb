"""HTTP/2 end to end: the real ``asgictl`` and real clients (curl, nghttp, h2load, httpx)
over prior knowledge (TCP, UDS, both parsers), TLS ALPN, a FastAPI app, a WSGI app,
floods on one connection while another is answered, and graceful stop and reload under
``start``. (File responses over HTTP/2: test_e2e_files.py; behind a PROXY protocol
header: test_e2e_proxy_protocol.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import h2.events
import hpack
import httpx
import pytest
import support
import trustme
from h2client import client_connection, frames, goaway, headers_frame, request_headers
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, RstStreamFrame
from support import run_asgictl, short_uds_path, wait_count, wait_until
from ws_support import close, parse_frames, text

TIMEOUT = 20.0
CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl not installed")
needs_nghttp = pytest.mark.skipif(NGHTTP is None or H2LOAD is None, reason="nghttp2-client not installed")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", str(TIMEOUT), *args], capture_output=True, text=True, timeout=TIMEOUT + 5
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    with files["cert"].open("wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    return files


@needs_curl
@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_curl_prior_knowledge(http: str) -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--http", http]) as server:
        done = curl("--http2-prior-knowledge", "-w", "\\n%{http_version}", server.url + "/scope?x=1")
        assert done.returncode == 0, done.stderr
        body, version = done.stdout.rsplit("\n", 1)
        assert version == "2"
        scope = json.loads(body)
        assert scope["http_version"] == "2" and scope["query_string"] == "x=1"
        assert ["host", f"127.0.0.1:{server.port}"] in scope["headers"]
        # HTTP/1.1 on the same port, as before.
        assert httpx.get(server.url + "/", timeout=TIMEOUT).http_version == "HTTP/1.1"
        posted = curl("--http2-prior-knowledge", "--data-binary", "x" * 100_000, server.url + "/echo")
        assert posted.stdout == "x" * 100_000


@needs_curl
def test_curl_prior_knowledge_over_uds() -> None:
    path = short_uds_path()
    with run_asgictl(["serve", "basic:app", "--uds", path]):
        done = curl("--http2-prior-knowledge", "--unix-socket", path, "-w", "%{http_version}", "http://x/")
        assert done.stdout == "Hello, world!2"


@needs_curl
@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_no_http2_option(http: str) -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--no-http2", "--http", http]) as server:
        done = curl("--http2-prior-knowledge", server.url + "/")
        assert done.returncode != 0  # the preface is not HTTP/1.1
        # One answer to the preface, whichever parser reads it.
        answer = support.raw_request("127.0.0.1", server.port, client_connection().data_to_send())
        assert answer.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), answer
        assert httpx.get(server.url + "/", timeout=TIMEOUT).text == "Hello, world!"


@needs_curl
def test_curl_http2_over_tls_alpn(tls: dict[str, Path]) -> None:
    args = [
        "serve",
        "basic:app",
        "--port",
        "0",
        "--ssl-certfile",
        str(tls["cert"]),
        "--ssl-keyfile",
        str(tls["key"]),
    ]
    with run_asgictl(args) as server:
        url = server.url + "/scope"
        done = curl("--http2", "--cacert", str(tls["ca"]), "-w", "\n%{http_version}", url)
        body, version = done.stdout.rsplit("\n", 1)
        assert version == "2", done.stderr
        assert json.loads(body)["scheme"] == "https"
        done = curl("--http1.1", "--cacert", str(tls["ca"]), "-w", "%{http_version}", server.url + "/")
        assert done.stdout == "Hello, world!1.1"
        with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(tls["ca"]))) as client:
            response = client.get(server.url + "/")
            assert response.http_version == "HTTP/2" and response.text == "Hello, world!"


def test_httpx_http2_prior_knowledge() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
            responses = [client.get(server.url + f"/scope?n={i}") for i in range(20)]
            assert all(r.http_version == "HTTP/2" for r in responses)
            assert [r.json()["query_string"] for r in responses] == [f"n={i}" for i in range(20)]
            posted = client.post(server.url + "/echo", content=b"y" * 1_000_000)
            assert posted.content == b"y" * 1_000_000
            stream = client.get(server.url + "/stream")
            assert stream.text == "".join(f"chunk{i}\n" for i in range(5))
            assert client.get(server.url + "/error").status_code == 500


def test_fastapi_over_http2(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    env_args = ["serve", "fastapi_app:app", "--port", "0"]
    with run_asgictl(env_args, env=support.test_env(TEST_FILE=str(path))) as server:
        with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
            assert client.get(server.url + "/items/5?q=a").json()["item_id"] == 5
            assert client.get(server.url + "/stream").text == "".join(f"line {i}\n" for i in range(10))
            got = client.get(server.url + "/file")
            assert got.http_version == "HTTP/2" and got.content == data
            upload = os.urandom(500_000)
            result = client.post(server.url + "/upload", content=upload).json()
            assert result == {"size": len(upload), "sha256": hashlib.sha256(upload).hexdigest()}


def test_wsgi_app_over_http2(tmp_path: Path) -> None:
    """A plain WSGI app through the adapter, over HTTP/2 streams: the hello, a body read
    from wsgi.input, a streamed response, and wsgi.file_wrapper (zerocopysend: the file
    read into DATA frames within the client's windows), on one connection."""
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "big.bin").write_bytes(data)
    with run_asgictl(["serve", "wsgi_app:app", "--port", "0", "--no-access-log"]) as server:
        with httpx.Client(base_url=server.url, http1=False, http2=True, timeout=TIMEOUT) as client:
            hello = client.get("/")
            assert hello.http_version == "HTTP/2" and hello.text == "Hello, world!"
            upload = os.urandom(300_000)
            assert client.post("/echo", content=upload).content == upload
            assert client.get("/slow-stream").text == "first part, second part"
            for _ in range(2):
                got = client.get("/file", params={"path": str(tmp_path / "big.bin")})
                assert got.headers["content-length"] == str(len(data)) and got.content == data
            head = client.head("/file", params={"path": str(tmp_path / "big.bin")})
            assert head.headers["content-length"] == str(len(data)) and head.content == b""
            assert client.get("/").text == "Hello, world!"
        assert "Traceback" not in server.output, server.output


@needs_nghttp
def test_nghttp_and_h2load() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        assert NGHTTP is not None and H2LOAD is not None
        done = subprocess.run(
            [NGHTTP, "-n", "-s", server.url + "/", server.url + "/echo"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        load = subprocess.run(
            [H2LOAD, "-n", "2000", "-c", "4", "-m", "10", server.url + "/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "2000 succeeded, 0 failed, 0 errored" in load.stdout, load.stdout


def _rapid_reset(port: int) -> bytes:
    """Open and reset streams in a loop on one connection; the server's bytes."""
    encoder = hpack.Encoder()
    client = client_connection()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client.data_to_send())
        try:
            for i in range(2000):
                stream_id = 1 + 2 * i
                sock.sendall(
                    headers_frame(stream_id, request_headers(b"/slow?5"), encoder)
                    + RstStreamFrame(stream_id, error_code=8).serialize()
                )
        except OSError:
            pass  # the server closed the connection
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


def test_flood_on_one_connection_others_answered() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        answers: list[int] = []
        stop = threading.Event()

        def other() -> None:
            with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                while not stop.is_set() and len(answers) < 5000:
                    answers.append(client.get(server.url + "/").status_code)

        thread = threading.Thread(target=other)
        thread.start()
        try:
            wait_until(lambda: len(answers) > 10, what="answers before the flood")
            data = _rapid_reset(server.port)
            during = len(answers)
            wait_until(lambda: len(answers) > during + 10, what="answers after the flood")
        finally:
            stop.set()
            thread.join(TIMEOUT)
        frame = goaway(data)
        assert frame is not None and frame.error_code == 0xB  # ENHANCE_YOUR_CALM
        assert answers and set(answers) == {200}
        with httpx.Client(http2=True, http1=False, timeout=TIMEOUT) as client:
            assert client.get(server.url + "/").status_code == 200


def test_graceful_stop_finishes_streams_in_flight() -> None:
    """TERM with a stream in flight: GOAWAY, PING (answered), the stream's response
    complete, then the worker exits 0. Frames are read raw: an h2 client stops at the
    first GOAWAY."""
    with run_asgictl(["serve", "basic:app", "--port", "0", "--timeout-graceful-shutdown", "10"]) as server:
        encoder = hpack.Encoder()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        sock.sendall(client_connection().data_to_send())
        # Longer than the second the GOAWAY waits for streams in flight to finish.
        sock.sendall(headers_frame(1, request_headers(b"/slow?2"), encoder))
        time.sleep(0.2)  # the stream reaches the app (there is no state to poll from here)
        server.signal(signal.SIGTERM)
        seen = []
        buffer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                size = 9 + int.from_bytes(buffer[:3], "big")
                frame = frames(buffer[:size])[0]
                buffer = buffer[size:]
                seen.append(frame)
                if isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                    sock.sendall(PingFrame(0, flags=["ACK"], opaque_data=frame.opaque_data).serialize())
        sock.close()
        goaways = [f.last_stream_id for f in seen if isinstance(f, GoAwayFrame)]
        assert goaways == [2**31 - 1, 1]
        body = b"".join(f.data for f in seen if isinstance(f, DataFrame) and f.stream_id == 1)
        assert body == b"slow done"
        assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in seen)
        assert server.wait_exit() == 0


def test_graceful_stop_with_an_httpx_request_in_flight() -> None:
    """httpx (h2) fails a request in flight at any GOAWAY: the GOAWAY waits for it."""
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        result: dict[str, str] = {}
        connected = threading.Event()

        def request() -> None:
            with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                client.get(server.url + "/")
                connected.set()
                result["body"] = client.get(server.url + "/slow?0.7").text

        thread = threading.Thread(target=request)
        thread.start()
        assert connected.wait(TIMEOUT)
        # The slow request is in flight once the server has read it: a request on a new
        # connection (connect, preface, SETTINGS, HEADERS) is answered after it.
        with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
            assert client.get(server.url + "/").status_code == 200
        server.signal(signal.SIGTERM)
        thread.join(TIMEOUT)
        assert result.get("body") == "slow done"
        assert server.wait_exit() == 0


def test_rolling_reload_loses_no_request() -> None:
    args = ["start", "basic:app", "--port", "0", "--workers", "2", "--no-access-log"]
    with run_asgictl(args, ready=False) as server:
        server.wait_for_line(r"^INFO:\s+2 workers ready")
        server.wait_ready()
        statuses: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set() and len(statuses) < 3000:
                try:
                    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                        for _ in range(20):
                            statuses.append(client.get(server.url + "/").status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(statuses) > 50, what="traffic")
            server.signal(signal.SIGHUP)
            wait_count(server, r"Reload complete", 1)
            before = len(statuses)
            wait_until(lambda: len(statuses) > before + 50, what="traffic after reload")
        finally:
            stop.set()
            thread.join(TIMEOUT)
        assert not errors and set(statuses) == {200}


@needs_curl
@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_curl_h2c_upgrade(http: str) -> None:
    args = ["serve", "basic:app", "--port", "0", "--http", http]
    with run_asgictl([*args, "--h2c-upgrade"]) as server:
        done = curl("--http2", "-w", "\n%{http_version}", "--data-binary", "up" * 1000, server.url + "/echo")
        assert done.stdout == "up" * 1000 + "\n2", done.stderr
        done = curl("--http2", "-w", "\n%{http_version}", server.url + "/")
        assert done.stdout == "Hello, world!\n2"
    with run_asgictl(args) as server:  # off by default: plain HTTP/1.1
        done = curl("--http2", "-w", "\n%{http_version}", server.url + "/")
        assert done.stdout == "Hello, world!\n1.1"


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_websocket_over_http2_with_fastapi(ws: str) -> None:
    """RFC 8441 against the real server: an extended CONNECT to a FastAPI websocket
    route, messages both ways, then a close; the h2 library as the client over TCP."""
    with run_asgictl(
        ["serve", "ws_app:app", "--port", "0", "--ws", ws, "--no-ws-per-message-deflate"]
    ) as server:
        conn = client_connection()
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(conn.data_to_send())
            headers = [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"http"),
                (b":path", b"/ws/echo"),
                (b":authority", b"x"),
                (b"sec-websocket-version", b"13"),
            ]

            def read_until(done: Any) -> list[Any]:
                events: list[Any] = []
                while not done(events):
                    data = sock.recv(65536)
                    assert data, "connection closed"
                    events += conn.receive_data(data)
                    sock.sendall(conn.data_to_send())
                return events

            read_until(lambda ev: conn.remote_settings.get(0x8) == 1)
            conn.send_headers(1, headers)
            sock.sendall(conn.data_to_send())
            events = read_until(lambda ev: any(isinstance(e, h2.events.ResponseReceived) for e in ev))
            response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
            assert dict(response.headers)[b":status"] == b"200"
            received = b""
            for message in ("one", "two"):
                conn.send_data(1, text(message))
                sock.sendall(conn.data_to_send())
                events = read_until(lambda ev: any(isinstance(e, h2.events.DataReceived) for e in ev))
                received += b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            assert parse_frames(received) == [(0x1, b"one"), (0x1, b"two")]
            conn.send_data(1, close(1000))
            sock.sendall(conn.data_to_send())
            events = read_until(
                lambda ev: any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in ev)
            )
            closing = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
            assert parse_frames(closing)[0][0] == 0x8


def test_recycling_under_http2_load_loses_no_request() -> None:
    """Workers recycled on --limit-max-requests (streams count) while httpx clients keep
    sending over HTTP/2: every request answered."""
    args = ["start", "basic:app", "--port", "0", "--workers", "2", "--no-access-log"]
    args += ["--limit-max-requests", "60", "--max-requests-jitter", "20"]
    with run_asgictl(args, ready=False) as server:
        server.wait_for_line(r"^INFO:\s+2 workers ready")
        server.wait_ready()
        statuses: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set() and len(statuses) < 5000:
                try:
                    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
                        for _ in range(10):
                            statuses.append(client.get(server.url + "/").status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            wait_count(server, r"recycles: max-requests", 4, timeout=90)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT)
        assert not errors, errors[:5]
        assert len(statuses) > 200 and set(statuses) == {200}
