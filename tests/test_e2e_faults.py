"""End to end: the protocol-fault kinds that involve shutdown, logging or time, with the
real ``asgictl`` and real clients (raw sockets, curl, TLS).

- kind 7: a stream waiting for http.disconnect hears it when the server goes away
  (TERM under serve and start, a HUP reload, --limit-max-requests), so the process
  exits promptly instead of at --timeout-graceful-shutdown;
- kind 8: a client that leaves a stream is an access line with a mark, not an ERROR,
  and is counted in the metrics; a disconnect escaping the app is one debug line;
- kind 9: the TLS handshake is under the header deadline, and a client that stops
  reading is cut after --timeout-send.

The in-memory halves of these kinds are in test_protocol_faults.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from memory import PARSERS
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess, count, run_asgictl, wait_count, wait_until

APP = "faults_app:app"


def open_stream(port: int, path: str, marker: bytes) -> socket.socket:
    """A connection that asked for ``path`` and has read up to ``marker``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    data = b""
    deadline = time.monotonic() + 10
    while marker not in data and time.monotonic() < deadline:
        data += sock.recv(65536)
    assert marker in data, data
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Read (and drop) what comes until the server closes; False if it has not by then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            if sock.recv(1 << 20) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True  # reset
    return False


def errors_in(server: ServerProcess) -> list[str]:
    return [line for line in server.output.splitlines() if "ERROR" in line or "Traceback" in line]


# ----------------------------------------------- kind 7: going away ends the stream


@pytest.mark.parametrize("parser", PARSERS)
def test_sigterm_under_serve_ends_a_stream_and_exits_promptly(parser: str) -> None:
    with run_asgictl(["serve", APP, "--port", "0", "--http", parser]) as server:
        stream = open_stream(server.port, "/sse", b"data: hello")
        stopped = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
        took = time.monotonic() - stopped
        stream.close()
        # The default --timeout-graceful-shutdown is 30 s: before, the stream held it.
        assert took < 5, f"exit took {took:.1f} s"
        assert "sse heard http.disconnect" in server.output
        assert "timed out" not in server.output and not errors_in(server)


def test_sigterm_under_start_ends_a_stream_and_exits_promptly() -> None:
    with run_asgictl(["start", APP, "--port", "0", "--workers", "2"]) as server:
        streams = [open_stream(server.port, "/sse", b"data: hello") for _ in range(4)]
        stopped = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(30) == 0
        took = time.monotonic() - stopped
        for stream in streams:
            stream.close()
        assert took < 8, f"exit took {took:.1f} s"
        assert count(server, r"sse heard http\.disconnect") == 4
        assert not errors_in(server)


def test_reload_ends_the_old_workers_streams_promptly() -> None:
    with run_asgictl(["start", APP, "--port", "0", "--workers", "1"]) as server:
        stream = open_stream(server.port, "/sse", b"data: hello")
        reloaded = time.monotonic()
        server.signal(signal.SIGHUP)
        assert closed_within(stream, 20), "the old worker kept the stream"
        took = time.monotonic() - reloaded
        stream.close()
        assert took < 15, f"the stream ended {took:.1f} s after HUP"  # 30 s before
        wait_count(server, r"sse heard http\.disconnect", 1)
        assert not errors_in(server)


def test_limit_max_requests_ends_a_stream_and_exits_promptly() -> None:
    with run_asgictl(["serve", APP, "--port", "0", "--limit-max-requests", "1"]) as server:
        started = time.monotonic()
        stream = open_stream(server.port, "/sse", b"data: hello")
        assert server.wait_exit(30) == 0
        took = time.monotonic() - started
        stream.close()
        assert took < 6, f"exit took {took:.1f} s"
        assert "Maximum request limit" in server.output and "sse heard http.disconnect" in server.output


# ------------------------------------------- kind 8: a client that leaves, logged right

CURL = shutil.which("curl")


def curl_leaves(port: int, path: str) -> None:
    """curl -N --max-time 0.5: reads a stream for half a second and hangs up."""
    assert CURL is not None
    result = subprocess.run(
        [CURL, "-sN", "--max-time", "0.5", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"],
        timeout=30,
        check=False,
    )
    assert result.returncode == 28  # curl's "operation timed out": it left mid-stream


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("path", ["/stream", "/sse"])
def test_curl_leaving_a_stream_is_an_access_line_not_an_error(parser: str, path: str) -> None:
    with run_asgictl(["serve", APP, "--port", "0", "--http", parser]) as server:
        for _ in range(3):
            curl_leaves(server.port, path)
        line = rf'"GET {path} HTTP/1\.1" 200 [\d.]+ms \(client disconnected\)'
        wait_count(server, line, 3)
        assert not errors_in(server), server.output


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_disconnect_escaping_the_app_is_one_debug_line() -> None:
    with run_asgictl(["serve", APP, "--port", "0", "--log-level", "debug"]) as server:
        curl_leaves(server.port, "/escape")
        wait_count(server, r"escape stopped", 1)
        wait_count(server, r'"GET /escape HTTP/1\.1" 200 .*\(client disconnected\)', 1)
        assert count(server, r"DEBUG: .*client disconnected") == 1
        assert not errors_in(server), server.output


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_metrics_count_the_clients_that_left(tmp_path: Path) -> None:
    args = ["start", APP, "--port", "0", "--workers", "1", "--no-access-log"]
    args += ["--control-socket", str(tmp_path / "c.ctl"), "--metrics-bind", "127.0.0.1:0"]
    with run_asgictl(args) as server:
        url = re.search(r"Metrics: (http://\S+)", server.output)
        assert url is not None, server.output
        for _ in range(2):
            curl_leaves(server.port, "/stream")

        def counted() -> dict[str, float] | None:
            with urllib.request.urlopen(url.group(1), timeout=10) as response:
                families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
            left = sum(s.value for s in families["asgictl_client_disconnects"].samples)
            ok = sum(
                s.value for s in families["asgictl_requests"].samples if s.labels.get("status_class") == "2xx"
            )
            return {"left": left, "ok": ok} if left >= 2 else None

        totals = wait_until(counted, 15, "2 disconnects published")  # published once a second
        assert totals["ok"] >= 2
        assert not errors_in(server)


# ------------------------------------------------------ kind 9: deadlines that hold


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[ServerProcess]:
    cert, key = certificate
    args = ["serve", APP, "--port", "0", "--timeout-header-read", "2", "--timeout-keep-alive", "30"]
    with run_asgictl([*args, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]) as server:
        yield server


def test_connections_that_never_start_the_tls_handshake_are_closed(tls_server: ServerProcess) -> None:
    silent = [socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) for _ in range(20)]
    opened = time.monotonic()
    try:
        # The event loop's own handshake timeout is 60 s: the header deadline (2 s) holds.
        assert all(closed_within(sock, 8 - (time.monotonic() - opened)) for sock in silent)
        assert time.monotonic() - opened < 8
    finally:
        for sock in silent:
            sock.close()


def test_a_head_after_a_slow_handshake_has_only_what_is_left(tls_server: ServerProcess) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
    opened = time.monotonic()
    time.sleep(1.2)  # the client takes its time before it starts the handshake
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\n")  # and never finishes its head
        assert closed_within(tls, 8)
    # The head's clock ran from accept: about 2 s, not 1.2 + 2.
    assert time.monotonic() - opened < 3.2 + 1.0  # one sweep (1 s) of slack


def test_a_handshaken_connection_still_gets_its_answer(
    tls_server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"ok")


@pytest.mark.parametrize("parser", PARSERS)
def test_clients_that_stop_reading_are_cut_after_the_send_deadline(parser: str) -> None:
    args = ["serve", APP, "--port", "0", "--http", parser, "--timeout-send", "2"]
    with run_asgictl([*args, "--timeout-keep-alive", "100"]) as server:
        readers = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"GET /big?1024 HTTP/1.1\r\nHost: t\r\n\r\n")  # 1 GiB, never read
            readers.append(sock)
        started = time.monotonic()
        try:
            # Each app's send() raises once its connection is cut; the apps stop.
            wait_count(server, r"big stopped: ClientDisconnected", 5, timeout=30)
            assert time.monotonic() - started < 20
            for sock in readers:
                assert closed_within(sock, 20)  # what was in flight, then the reset
            line = r'"GET /big\?1024 HTTP/1\.1" 200 .*\(client disconnected\)'
            wait_count(server, line, 5)
            assert "big complete" not in server.output and not errors_in(server)
        finally:
            for sock in readers:
                sock.close()
