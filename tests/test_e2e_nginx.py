"""End to end: a real nginx (Debian's package) in front of ``asgictl start`` over a UDS.

The nginx configuration is deploy/nginx/asgictl.conf itself, with three lines rewritten
for the test (the upstream socket path, and ``listen`` on loopback ports, one of them TLS
with a trustme certificate), included from a generated nginx.conf that keeps every file
nginx writes (pid, logs, temp directories) in a temporary prefix. nginx runs in the
foreground (``daemon off``, ``master_process off``: one process, as root it would
otherwise hand its workers to an unprivileged user that cannot reach the test's socket)
and is ended by PID.

Clients connect from 127.0.0.2 (any 127/8 address is loopback), so "the app sees the real
client address" cannot be confused with nginx's own 127.0.0.1 or the UDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from support import ROOT, run_asgictl, short_uds_path
from websockets.sync.client import connect

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (Debian package: nginx)")

TEMPLATE = ROOT / "deploy" / "nginx" / "asgictl.conf"
TEMPLATE_SOCKET = "unix:/run/asgictl/asgictl.sock"
CLIENT_IP = "127.0.0.2"
DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_config(uds: str, http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx/asgictl.conf with the socket and listen lines pointed at the test's."""
    text = TEMPLATE.read_text()
    replacements = [
        (re.escape(TEMPLATE_SOCKET), f"unix:{uds}"),
        (
            r"(?m)^\s*listen 80;$",
            f"    listen 127.0.0.1:{http_port};\n"
            f"    listen 127.0.0.1:{https_port} ssl;\n"
            f"    ssl_certificate {cert};\n    ssl_certificate_key {key};",
        ),
        (r"(?m)^\s*listen \[::\]:80;\n", ""),
    ]
    for pattern, replacement in replacements:
        text, n = re.subn(pattern, replacement, text)
        assert n == 1, f"deploy/nginx/asgictl.conf changed: {pattern!r} matched {n} times"
    return text


def main_config(prefix: Path) -> str:
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
"""


def nginx_t(prefix: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` of ``prefix``/nginx.conf, everything nginx writes kept in ``prefix``."""
    assert NGINX is not None
    return subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_site_as_shipped_passes_nginx_t(tmp_path: Path) -> None:
    """deploy/nginx/asgictl.conf byte for byte, included in a minimal nginx.conf."""
    (tmp_path / "site.conf").write_bytes(TEMPLATE.read_bytes())
    (tmp_path / "nginx.conf").write_text(main_config(tmp_path))
    checked = nginx_t(tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr


class Nginx:
    def __init__(self, prefix: Path, http_port: int, https_port: int, ca: trustme.CA) -> None:
        self.prefix = prefix
        self.http_port = http_port
        self.https_port = https_port
        self.ca = ca
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, tls: bool = False, path: str = "/") -> str:
        return (
            f"https://localhost:{self.https_port}{path}"
            if tls
            else f"http://127.0.0.1:{self.http_port}{path}"
        )

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.prefix / "error.log").read_text()
        return ""


@pytest.fixture(scope="module")
def stack() -> Iterator[Nginx]:
    """asgictl (2 workers, UDS, proxy headers trusting the socket) behind nginx."""
    assert NGINX is not None
    uds = short_uds_path()
    prefix = Path(os.path.dirname(uds))
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(prefix / "server.pem"))
    http_port, https_port = free_port(), free_port()
    (prefix / "site.conf").write_text(
        site_config(uds, http_port, https_port, prefix / "server.pem", prefix / "server.pem")
    )
    (prefix / "nginx.conf").write_text(main_config(prefix))
    args = [
        "start",
        "proxied:app",
        "--workers",
        "2",
        "--uds",
        uds,
        "--proxy-headers",
        "--forwarded-allow-ips",
        uds,
    ]
    with run_asgictl(args) as server:
        nginx = Nginx(prefix, http_port, https_port, ca)
        checked = nginx_t(prefix)
        assert checked.returncode == 0, checked.stderr
        nginx.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + DEADLINE
            while True:
                assert nginx.proc.poll() is None, f"nginx exited:\n{nginx.log()}"
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", https_port), 1):
                    break
                assert time.monotonic() < deadline, f"nginx did not listen:\n{nginx.log()}"
                time.sleep(0.05)
            yield nginx
        finally:
            if nginx.proc.poll() is None:
                nginx.proc.send_signal(signal.SIGTERM)  # fast shutdown
                try:
                    nginx.proc.wait(DEADLINE)
                except subprocess.TimeoutExpired:
                    nginx.proc.kill()
                    nginx.proc.wait(10)
            server.output  # noqa: B018 - kept for debugging a failure
    shutil.rmtree(prefix, ignore_errors=True)


def client(nginx: Nginx) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=CLIENT_IP, verify=_ssl_context(nginx))
    return httpx.Client(transport=transport, timeout=DEADLINE)


def _ssl_context(nginx: Nginx) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    nginx.ca.configure_trust(ctx)
    return ctx


@pytest.mark.parametrize("tls", [False, True])
def test_app_sees_client_address_and_scheme(stack: Nginx, tls: bool) -> None:
    with client(stack) as http:
        response = http.get(stack.url(tls, "/who"))
    assert response.status_code == 200, stack.log()
    seen = response.json()
    assert seen["client"][0] == CLIENT_IP
    assert seen["scheme"] == ("https" if tls else "http")
    assert seen["headers"]["x-forwarded-for"] == CLIENT_IP


def test_spoofed_forwarded_for_does_not_win(stack: Nginx) -> None:
    """nginx appends the real peer; asgictl takes the nearest untrusted hop: the client."""
    with client(stack) as http:
        seen = http.get(stack.url(False, "/"), headers={"X-Forwarded-For": "6.6.6.6"}).json()
    assert seen["headers"]["x-forwarded-for"] == f"6.6.6.6, {CLIENT_IP}"
    assert seen["client"][0] == CLIENT_IP


def test_keepalive_many_requests(stack: Nginx) -> None:
    with client(stack) as http:
        for i in range(20):
            assert http.get(stack.url(i % 2 == 0, f"/n{i}")).json()["path"] == f"/n{i}"


@pytest.mark.parametrize("tls", [False, True])
def test_websocket_through_nginx(stack: Nginx, tls: bool) -> None:
    port = stack.https_port if tls else stack.http_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE, source_address=(CLIENT_IP, 0))
    url = f"wss://localhost:{port}/ws" if tls else f"ws://127.0.0.1:{port}/ws"
    with connect(url, sock=sock, ssl=_ssl_context(stack) if tls else None, open_timeout=DEADLINE) as ws:
        seen = json.loads(ws.recv(timeout=DEADLINE))
        assert seen["type"] == "websocket"
        assert seen["client"][0] == CLIENT_IP
        assert seen["scheme"] == ("wss" if tls else "ws")
        for text in ("hello", "é" * 1000):
            ws.send(text)
            assert ws.recv(timeout=DEADLINE) == "echo:" + text
