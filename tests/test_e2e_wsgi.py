"""End to end: WSGI apps (plain, Flask, a Django project) under the real asgictl.

Real clients over loopback (httpx, raw sockets, a keep-alive load client like ``ab -k``);
every wait polls with a deadline; every process is ended by PID (``run_asgictl``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import APPS, ServerProcess, count, run_asgictl, wait_count, wait_until
from support import test_env as make_env

DEADLINE = 30.0


# ----------------------------------------------------------------------- helpers


def start(*args: str, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """``asgictl start`` with ``workers`` workers on a free port, ready."""
    argv = ["start", *args, "--workers", str(workers), "--port", "0", "--no-access-log"]
    with run_asgictl(argv, env=env, ready=False) as server:
        server.wait_for_line(rf"^INFO:\s+{workers} workers ready")
        server.wait_ready()
        yield server


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def read_response(reader: object) -> Response:
    """One HTTP/1.1 response from a socket file (Content-Length or chunked framing);
    ConnectionError when the connection ends before the response is complete."""
    line = reader.readline()  # type: ignore[attr-defined]
    if not line:
        raise ConnectionError("connection closed without a response")
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()  # type: ignore[attr-defined]
        if not line:
            raise ConnectionError("connection closed in the response head")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))  # type: ignore[attr-defined]
        if len(body) != int(headers["content-length"]):
            raise ConnectionError("connection closed in the response body")
    elif headers.get("transfer-encoding") == "chunked":
        pieces = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)  # type: ignore[attr-defined]
            piece = reader.read(size + 2)  # type: ignore[attr-defined]
            if len(piece) != size + 2:
                raise ConnectionError("connection closed in a chunk")
            if size == 0:
                break
            pieces.append(piece[:-2])
        body = b"".join(pieces)
    else:
        body = reader.read()  # type: ignore[attr-defined]
    return Response(status, headers, body)


class KeepAliveLoad:
    """What ``ab -k`` does: ``connections`` clients, each sending its requests one after
    the other on a keep-alive connection, reconnecting only after a response that says
    ``Connection: close``. A request whose connection ends without its response (reset,
    EOF) is a failure, as is any status but 200. Bounded in count and time."""

    def __init__(self, port: int, path: str = "/", connections: int = 8, limit: int = 200_000) -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.limit = limit
        self.ok = 0
        self.closes = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        sock: socket.socket | None = None
        reader = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.ok + len(self.failures) >= self.limit:
                    break
            error = None
            closes = False
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
                    reader = sock.makefile("rb")
                sock.sendall(self.request)
                response = read_response(reader)
                closes = response.closes
                if response.status != 200:
                    error = f"status {response.status}"
            except OSError as exc:  # ConnectionError included
                error = repr(exc)
                closes = True
            if closes and sock is not None:
                sock.close()
                sock = None
            with self._lock:
                if error is None:
                    self.ok += 1
                    self.closes += closes
                else:
                    self.failures.append(error)
        if sock is not None:
            sock.close()

    def __enter__(self) -> KeepAliveLoad:
        for thread in self._threads:
            thread.start()
        wait_until(lambda: self.ok > 50, what="the load to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE)


def worker_pid(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/pid", timeout=10).text)


# ------------------------------------------------------------------ plain WSGI app


def test_detection_is_logged_and_the_app_runs_in_the_threads() -> None:
    with run_asgictl(["serve", "wsgi_app:app", "--port", "0", "--threads", "3"]) as server:
        r = httpx.get(server.url + "/thread", timeout=10)
        assert r.status_code == 200 and r.text.startswith("asgictl-wsgi-")
        assert count(server, r"Detected a WSGI application.*3 threads") == 1, server.output
        # The adapter answers lifespan itself: no "unsupported" warning for a WSGI app.
        assert "lifespan" not in server.output.lower().replace("application startup complete", "")


def test_inline_runs_on_the_loop_and_streamed_uploads_still_work() -> None:
    with run_asgictl(["serve", "wsgi_app:app", "--port", "0", "--wsgi-inline"]) as server:
        assert count(server, r"Detected a WSGI application.*event loop") == 1, server.output
        assert httpx.get(server.url + "/thread", timeout=10).text == "MainThread"
        assert httpx.post(server.url + "/echo", content=b"small", timeout=10).content == b"small"
        # A chunked upload is not all here when the request starts: it goes to a thread.
        payload = os.urandom(300_000)

        def pieces() -> Iterator[bytes]:
            for i in range(0, len(payload), 50_000):
                yield payload[i : i + 50_000]

        r = httpx.post(server.url + "/echo", content=pieces(), timeout=10)
        assert r.status_code == 200 and r.content == payload


def test_a_full_queue_is_answered_503(tmp_path: Path) -> None:
    flag = tmp_path / "release"
    argv = ["serve", "wsgi_app:app", "--port", "0", "--threads", "1", "--wsgi-queue", "0"]
    with run_asgictl(argv) as server:
        results: list[int] = []

        def blocked() -> None:
            results.append(httpx.get(f"{server.url}/block?flag={flag}", timeout=DEADLINE).status_code)

        first = threading.Thread(target=blocked)
        first.start()
        try:
            # The only thread runs the first request; no request may wait for it.
            wait_until(lambda: Path(f"{flag}.started").exists(), what="the first request to run")
            r = httpx.get(server.url + "/", timeout=10)
            assert r.status_code == 503, r.text
            assert "queue is full" in r.text
        finally:
            flag.write_text("go")
            first.join(DEADLINE)
        assert results == [200]
        # With the thread free again, requests are served.
        assert httpx.get(server.url + "/", timeout=10).status_code == 200


def test_file_wrapper_sends_the_file_and_keeps_the_connection(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)  # far more than a socket buffer: sendfile waits
    small = b"tiny file\n"
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "small.txt").write_bytes(small)
    with run_asgictl(["serve", "wsgi_app:app", "--port", "0"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
            reader = sock.makefile("rb")
            for name, expected in (("big.bin", data), ("small.txt", small), ("big.bin", data)):
                sock.sendall(f"GET /file?path={tmp_path / name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
                response = read_response(reader)
                assert response.status == 200
                assert response.headers["content-length"] == str(len(expected))
                assert response.body == expected
            # HEAD: the headers of the file response, no body, and the connection goes on.
            sock.sendall(f"HEAD /file?path={tmp_path / 'big.bin'} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            line = reader.readline()
            assert line.startswith(b"HTTP/1.1 200")
            while reader.readline() != b"\r\n":
                pass
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(reader).body == b"Hello, world!"


# -------------------------------------------------------------- nothing lost on reload


@pytest.mark.parametrize(
    ("app", "path"),
    [
        ("wsgi_app:app", "/pid"),
        ("flask_app:app", "/"),
        ("flask_app:app", "/stream"),
        # A streamed response whose head (keep-alive) often leaves before the reload
        # begins and whose end comes after.
        ("wsgi_app:app", "/slow-stream"),
        ("svapp:app", "/"),
    ],
)
def test_no_request_lost_under_keep_alive_across_several_hups(app: str, path: str) -> None:
    with contextlib_start("start", app) as server:
        with KeepAliveLoad(server.port, path=path) as load:
            for round_ in range(1, 4):
                before = load.ok
                server.signal(signal.SIGHUP)
                wait_count(server, r"Reload complete", round_, timeout=60)
                wait_until(lambda before=before: load.ok > before + 100, what="requests after the reload")
        assert not load.failures, (len(load.failures), load.failures[:5])
        # The old workers told their clients to reconnect instead of dropping them.
        assert load.closes >= 1
        assert load.ok > 300


def test_no_request_lost_under_keep_alive_when_workers_recycle() -> None:
    with contextlib_start("start", "wsgi_app:app", "--limit-max-requests", "300") as server:
        with KeepAliveLoad(server.port, path="/pid") as load:
            wait_count(server, r"recycles: max-requests", 4, timeout=60)
        assert not load.failures, (len(load.failures), load.failures[:5])


def contextlib_start(*argv: str) -> contextlib.AbstractContextManager[ServerProcess]:
    return contextlib.contextmanager(start)(*argv[1:])


# --------------------------------------------------------------------------- Flask


@pytest.fixture(scope="module")
def flask_server() -> Iterator[ServerProcess]:
    with run_asgictl(["serve", "flask_app:app", "--port", "0"]) as server:
        yield server


def test_flask_streamed_upload_is_read_piece_by_piece(flask_server: ServerProcess) -> None:
    payload = os.urandom(4 * 1024 * 1024)

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    r = httpx.post(flask_server.url + "/upload-stream", content=pieces(), timeout=DEADLINE)
    assert r.status_code == 200
    body = r.json()
    assert body["size"] == len(payload) and body["sha256"] == hashlib.sha256(payload).hexdigest()
    assert body["pieces"] > 1


def test_flask_streams_both_ways_at_once(flask_server: ServerProcess) -> None:
    payload = b"abcdefgh" * 100_000
    with socket.create_connection(("127.0.0.1", flask_server.port), timeout=DEADLINE) as sock:
        sock.sendall(b"POST /echo-stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Send the first piece only: its echo must come back before the upload ends.
        first = payload[:4096]
        sock.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        while reader.readline() != b"\r\n":
            pass
        size = int(reader.readline(), 16)
        assert reader.read(size + 2)[:-2] == first.upper()
        rest = payload[4096:]
        for i in range(0, len(rest), 65536):
            piece = rest[i : i + 65536]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        echoed = [first.upper()]
        while True:
            size = int(reader.readline(), 16)
            chunk = reader.read(size + 2)
            if size == 0:
                break
            echoed.append(chunk[:-2])
    assert b"".join(echoed) == payload.upper()


def test_flask_streamed_response_is_not_held_back(flask_server: ServerProcess, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    with httpx.Client(timeout=DEADLINE) as client:
        with client.stream("GET", flask_server.url + "/wait-stream", params={"flag": str(flag)}) as r:
            parts = r.iter_raw()
            assert next(parts) == b"first\n"  # while the generator still waits
            flag.write_text("go")
            assert b"".join(parts) == b"second\n"


def test_flask_send_file(flask_server: ServerProcess, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 7)
    path = tmp_path / "download.bin"
    path.write_bytes(data)
    r = httpx.get(flask_server.url + "/send-file", params={"path": str(path)}, timeout=DEADLINE)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data))


# -------------------------------------------------------------------------- Django


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    state = tmp_path_factory.mktemp("djsite")
    env = make_env(
        ASGICTL_TEST_DJANGO_DIR=str(state),
        DJANGO_SETTINGS_MODULE="djsite.settings",
        DJANGO_SUPERUSER_PASSWORD="s3cret-pass",
    )
    manage = [sys.executable, "-m", "django"]
    for command in (
        ["migrate", "--noinput"],
        ["collectstatic", "--noinput"],
        ["createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"],
    ):
        subprocess.run([*manage, *command], cwd=APPS, env=env, check=True, capture_output=True, timeout=120)
    (state / "static" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    with contextlib.contextmanager(start)("djsite.wsgi:application", env=env) as server:
        yield server, state


def test_django_is_detected_as_wsgi(django_site: tuple[ServerProcess, Path]) -> None:
    server, _ = django_site
    # One line per worker.
    assert count(server, r"Detected a WSGI application") == 2, server.output


def test_django_admin_login_with_csrf(django_site: tuple[ServerProcess, Path]) -> None:
    server, _ = django_site
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        page = client.get("/admin/login/", params={"next": "/admin/"})
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        form = {"username": "admin", "password": "s3cret-pass", "next": "/admin/"}
        # Without the token: refused.
        assert client.post("/admin/login/", data=form).status_code == 403
        r = client.post("/admin/login/", data={**form, "csrfmiddlewaretoken": token})
        assert r.status_code == 302 and r.headers["location"] == "/admin/"
        home = client.get("/admin/")
        assert home.status_code == 200 and "Site administration" in home.text


@pytest.mark.parametrize("size", [1000, 2 * 1024 * 1024 + 3])  # in memory / a temporary file
def test_django_multipart_form_with_a_file(django_site: tuple[ServerProcess, Path], size: int) -> None:
    server, _ = django_site
    data = os.urandom(size)
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        page = client.get("/upload/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = client.post(
            "/upload/",
            data={"title": "Zoë's file", "csrfmiddlewaretoken": token},
            files={"upload": ("report.bin", data, "application/octet-stream")},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "title": "Zoë's file",
        "name": "report.bin",
        "size": size,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_django_static_files(django_site: tuple[ServerProcess, Path]) -> None:
    server, state = django_site
    with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
        for name in ("admin/css/base.css", "big.bin"):
            expected = (state / "static" / name).read_bytes()
            r = client.get("/static/" + name)
            assert r.status_code == 200
            assert r.headers["content-length"] == str(len(expected))
            assert r.content == expected
        assert client.get("/static/missing.css").status_code == 404


def test_django_streaming_response(django_site: tuple[ServerProcess, Path]) -> None:
    server, _ = django_site
    r = httpx.get(server.url + "/stream/", params={"n": "2000"}, timeout=DEADLINE)
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"".join(b"line %d\n" % i for i in range(2000))
