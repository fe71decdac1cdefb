"""WebSockets end to end: the real ``asgictl serve`` in a subprocess, a FastAPI app with
websocket routes (tests/apps/ws_app.py), and real clients: the ``websockets`` library and
the ``websocat`` binary. Both implementations (--ws websockets|wsproto) are exercised."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerProcess, run_asgictl
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

WS_IMPLS = ["websockets", "wsproto"]
TIMEOUT = 10.0


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://", 1) + path


@pytest.fixture(params=WS_IMPLS)
def ws(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server(ws: str) -> Iterator[ServerProcess]:
    with run_asgictl(["serve", "ws_app:app", "--port", "0", "--ws", ws]) as proc:
        yield proc


@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_fastapi_echo_with_the_websockets_client(ws: str, http: str) -> None:
    with run_asgictl(["serve", "ws_app:app", "--port", "0", "--ws", ws, "--http", http]) as server:
        with connect(
            ws_url(server, "/ws/echo"), subprotocols=["chat"], open_timeout=TIMEOUT, close_timeout=TIMEOUT
        ) as client:
            assert client.subprotocol == "chat"
            for i in range(20):
                client.send(f"hello {i}")
                assert client.recv(TIMEOUT) == f"hello {i}"
            client.send(b"\x00\xff" * 1000)
            assert client.recv(TIMEOUT) == b"\x00\xff" * 1000
            big = "ü" * 100_000  # several reads, compressed by permessage-deflate
            client.send(big)
            assert client.recv(TIMEOUT) == big
        assert client.close_code == 1000


def test_websocat_binary(server: ServerProcess) -> None:
    websocat = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")
    result = subprocess.run(
        # -1 alone sends a Close as soon as stdin ends, racing the echo (seen failing on a
        # loaded machine); with -n it waits for the one reply, as websocat's help advises.
        [websocat, "-1", "-n", ws_url(server, "/ws/echo")],
        input=b"hello from websocat\n",
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from websocat\n"


def test_denial_with_websocket_http_response(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(server, "/ws/deny"), open_timeout=TIMEOUT)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-denied"] == "yes"
    assert response.body == b"not for you"


def test_max_size_closes_with_1009(ws: str) -> None:
    args = ["serve", "ws_app:app", "--port", "0", "--ws", ws, "--ws-max-size", "1024"]
    with run_asgictl(args) as server, connect(ws_url(server, "/ws/echo"), open_timeout=TIMEOUT) as client:
        client.send("x" * 1024)
        assert client.recv(TIMEOUT) == "x" * 1024
        client.send("x" * 1025)
        with pytest.raises(ConnectionClosed) as info:
            client.recv(TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_sigterm_closes_with_1001_and_the_app_sees_disconnect(server: ServerProcess) -> None:
    with connect(ws_url(server, "/ws/hold"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as client:
        assert client.recv(TIMEOUT) == "ready"
        server.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            client.recv(TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    server.wait_for_line(r"ws_hold disconnect code=1001", timeout=TIMEOUT)
    assert server.wait_exit(TIMEOUT * 2) == 0


def test_ws_none_answers_upgrades_as_plain_http() -> None:
    with run_asgictl(["serve", "ws_app:app", "--port", "0", "--ws", "none"]) as server:
        with pytest.raises(InvalidStatus) as info:
            connect(ws_url(server, "/ws/echo"), open_timeout=TIMEOUT)
        assert info.value.response.status_code != 101


def test_rolling_reload_closes_with_1012_and_a_new_worker_serves() -> None:
    """Under the supervisor, HUP replaces the worker: its WebSockets close with 1012
    (service restart), not 1001, and the app hears it; new connections reach the new one."""
    with run_asgictl(["start", "ws_app:app", "--port", "0", "--workers", "1"]) as server:
        with connect(ws_url(server, "/ws/hold"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as client:
            assert client.recv(TIMEOUT) == "ready"
            server.signal(signal.SIGHUP)
            with pytest.raises(ConnectionClosed) as info:
                client.recv(TIMEOUT * 2)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        server.wait_for_line(r"ws_hold disconnect code=1012", timeout=TIMEOUT)
        with connect(ws_url(server, "/ws/echo"), open_timeout=TIMEOUT, close_timeout=TIMEOUT) as client:
            client.send("after reload")
            assert client.recv(TIMEOUT) == "after reload"
