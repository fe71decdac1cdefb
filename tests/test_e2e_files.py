"""End to end: file responses (pathsend, zerocopysend) over real sockets.

sendfile on plain TCP and Unix sockets, reads and writes under TLS, on uvloop and on the
asyncio loop; files far larger than a socket buffer, so that the send has to wait for the
client. The same over HTTP/2 (prior knowledge, and TLS ALPN), where the file's bytes are
DATA frames within the client's windows. Every process is ended by PID (``run_asgictl``).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from support import ServerProcess, run_asgictl, short_uds_path

SMALL = 64 * 1024
LARGE = 6 * 1024 * 1024 + 11  # several socket buffers; more than the on-loop limit


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("files")
    out = {}
    for name, size in (("small.bin", SMALL), ("large.bin", LARGE)):
        data = os.urandom(size)
        (root / name).write_bytes(data)
        out[str(root / name)] = data
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("tls") / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return pem, client


@pytest.fixture(
    scope="module",
    params=["tcp-uvloop", "tcp-asyncio", "uds", "tls", "h2", "h2-tls"],
)
def server(
    request: pytest.FixtureRequest, certs: tuple[Path, ssl.SSLContext]
) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    argv = ["serve", "files_app:app", "--no-access-log"]
    transport = None
    verify: ssl.SSLContext | bool = True
    if request.param == "uds":
        uds = short_uds_path()
        argv += ["--uds", uds]
        transport = httpx.HTTPTransport(uds=uds)
    else:
        argv += ["--port", "0", "--loop", "asyncio" if request.param == "tcp-asyncio" else "uvloop"]
    if request.param.endswith("tls"):
        argv += ["--ssl-certfile", str(certs[0]), "--ssl-keyfile", str(certs[0])]
        verify = certs[1]
    h2 = request.param.startswith("h2")  # prior knowledge, or chosen by ALPN over TLS
    version = "HTTP/2" if h2 else "HTTP/1.1"

    def check_version(response: httpx.Response) -> None:
        assert response.http_version == version

    with run_asgictl(argv) as proc:
        base = "http://localhost" if request.param == "uds" else proc.url
        with httpx.Client(
            base_url=base,
            transport=transport,
            verify=verify,
            timeout=30,
            http1=not h2,
            http2=h2,
            event_hooks={"response": [check_version]},
        ) as client:
            yield proc, client


def test_pathsend(server: tuple[ServerProcess, httpx.Client], files: dict[str, bytes]) -> None:
    _, client = server
    for _ in range(2):  # twice on one keep-alive connection
        for path, data in files.items():
            r = client.get("/pathsend", params={"path": path})
            assert r.status_code == 200
            assert r.headers["content-length"] == str(len(data))
            assert r.content == data


def test_zerocopysend_region(server: tuple[ServerProcess, httpx.Client], files: dict[str, bytes]) -> None:
    _, client = server
    path, data = next((p, d) for p, d in files.items() if len(d) == LARGE)
    for offset, count in ((0, 10), (12345, LARGE - 12345), (LARGE - 1, 1), (100, 2 * 1024 * 1024)):
        r = client.get("/zerocopy", params={"path": path, "offset": offset, "count": count})
        assert r.status_code == 200
        assert r.content == data[offset : offset + count]


def test_a_client_leaving_mid_file_is_no_error(
    server: tuple[ServerProcess, httpx.Client], files: dict[str, bytes]
) -> None:
    proc, client = server
    if proc.url.startswith("https") or "--uds" in proc.args:
        pytest.skip("raw plain-TCP client")
    path = next(p for p, d in files.items() if len(d) == LARGE)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            sock.sendall(f"GET /pathsend?path={path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            # Gone with most of the file unsent: a reset, not a clean close.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The worker goes on serving, and a gone client is nothing to log.
    r = client.get("/pathsend", params={"path": path})
    assert r.content == files[path]
    assert "Exception" not in proc.output and "Traceback" not in proc.output, proc.output


def test_a_file_not_in_the_page_cache(
    server: tuple[ServerProcess, httpx.Client], files: dict[str, bytes]
) -> None:
    _, client = server
    path, data = next((p, d) for p, d in files.items() if len(d) == LARGE)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Evicted: its windows are read (or sent) from the executor, not on the loop.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    r = client.get("/pathsend", params={"path": path})
    assert r.status_code == 200 and r.content == data
