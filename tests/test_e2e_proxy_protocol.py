"""End to end: HAProxy (the PROXY protocol's reference implementation, Debian's package)
in TCP mode in front of ``asgictl serve --proxy-protocol v1|v2``, over TCP and over a
Unix socket; the app sees the real client's address.

HAProxy runs in the foreground (``-db``) from a generated configuration and is ended by
PID. Clients connect from 127.0.0.2 so the client address cannot be confused with
HAProxy's own 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import raw_request, run_asgictl, short_uds_path, wait_until

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (Debian package: haproxy)")

CLIENT_IP = "127.0.0.2"
GET_SCOPE = b"GET /scope HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def haproxy(tmp_path: Path, backend: str, send_proxy: str) -> Iterator[int]:
    """HAProxy listening on a loopback port, passing connections to ``backend`` (an
    ``ip:port`` or a socket path) with ``send_proxy`` (``send-proxy`` or
    ``send-proxy-v2``). Yields the port."""
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n"
        "    maxconn 100\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 5s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n"
        "frontend front\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend app\n"
        "backend app\n"
        f"    server asgictl {backend} {send_proxy}\n"
    )
    assert HAPROXY is not None
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="haproxy listening")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def scope_through(port: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT_IP, 0)) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(GET_SCOPE)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    scope = json.loads(data.partition(b"\r\n\r\n")[2])
    assert scope["client"] == [CLIENT_IP, local_port]
    return scope


@pytest.mark.parametrize(("mode", "send_proxy"), [("v1", "send-proxy"), ("v2", "send-proxy-v2")])
def test_haproxy_over_tcp_gives_the_real_client(tmp_path: Path, mode: str, send_proxy: str) -> None:
    args = ["serve", "basic:app", "--port", "0", "--proxy-protocol", mode]
    with run_asgictl(args) as server, haproxy(tmp_path, f"127.0.0.1:{server.port}", send_proxy) as port:
        scope = scope_through(port)
        assert scope["server"] == ["127.0.0.1", port]  # the address the client connected to
        # Straight to asgictl, without HAProxy: a trusted peer with no header is refused.
        answer = raw_request("127.0.0.1", server.port, GET_SCOPE)
        assert answer.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(("mode", "send_proxy"), [("v1", "send-proxy"), ("auto", "send-proxy-v2")])
def test_haproxy_over_a_unix_socket_gives_the_real_client(tmp_path: Path, mode: str, send_proxy: str) -> None:
    uds = short_uds_path()
    # A Unix socket's peer has no address: the socket's path is what is trusted.
    args = ["serve", "basic:app", "--uds", uds, "--proxy-protocol", mode, "--forwarded-allow-ips", uds]
    with run_asgictl(args), haproxy(tmp_path, uds, send_proxy) as port:
        scope_through(port)


def test_an_untrusted_peer_may_not_send_a_header(tmp_path: Path) -> None:
    # Only 127.0.0.2 is trusted: HAProxy's 127.0.0.1 is not.
    args = [
        "serve",
        "basic:app",
        "--port",
        "0",
        "--proxy-protocol",
        "auto",
        "--forwarded-allow-ips",
        CLIENT_IP,
    ]
    with run_asgictl(args) as server, haproxy(tmp_path, f"127.0.0.1:{server.port}", "send-proxy") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(GET_SCOPE)
            sock.shutdown(socket.SHUT_WR)
            data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 400 "), data[:200]
        # A request of its own, without a header, is served as the peer it is.
        answer = raw_request("127.0.0.1", server.port, GET_SCOPE)
        assert answer.startswith(b"HTTP/1.1 200 ")
