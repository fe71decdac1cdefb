"""End to end: the real ``asgictl serve`` in a subprocess, real sockets, real clients."""

from __future__ import annotations

import json
import signal
import socket

import httpx
import pytest
from support import raw_request, read_all, run_asgictl, short_uds_path


@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_serves_hello_and_echo_on_port_zero(http: str) -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--http", http]) as server:
        assert server.port != 0
        with httpx.Client(base_url=server.url, timeout=10) as client:
            r = client.get("/")
            assert r.status_code == 200 and r.text == "Hello, world!"
            assert r.headers["server"] == "asgictl" and "date" in r.headers
            r = client.post("/echo", content=b"x" * 200_000)
            assert r.content == b"x" * 200_000
            r = client.get("/stream")
            assert r.text == "".join(f"chunk{i}\n" for i in range(5))
            assert r.headers["transfer-encoding"] == "chunked"


def test_pipelined_requests_answered_in_order() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        reqs = (
            b"".join(b"GET /scope?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
            + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = raw_request("127.0.0.1", server.port, reqs)
        assert data.count(b"HTTP/1.1 200 OK") == 6
        order = [int(x) for x in __import__("re").findall(rb'"query_string": "n=(\d)"', data)]
        assert order == [0, 1, 2, 3, 4]


def test_sigterm_lets_in_flight_request_finish() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /slow?1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for_line(r"running on")
        # The request is in flight once the server has read it; poll a second connection.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/").status_code == 200
        server.signal(signal.SIGTERM)
        data = read_all(sock, 15)
        sock.close()
        assert b"200 OK" in data and data.endswith(b"slow done")
        assert b"connection: close" in data
        assert server.wait_exit(15) == 0
        assert "lifespan shutdown ran" in server.output


def test_uds_replaces_stale_socket_and_sets_mode() -> None:
    path = short_uds_path()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file with nobody behind it
    with run_asgictl(["serve", "basic:app", "--uds", path, "--uds-mode", "600"]) as server:
        assert server.url.endswith(path)
        import os
        import stat

        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://local", timeout=10) as client:
            body = client.get("/scope").json()
        assert body["client"] is None or isinstance(body["client"], list)
        assert body["server"][0] == path


def test_lifespan_startup_failure_exits_nonzero_with_message() -> None:
    with run_asgictl(["serve", "basic:failing_startup", "--port", "0"], ready=False) as server:
        assert server.wait_exit(30) == 3
        assert "database unreachable" in server.output


def test_lifespan_state_reaches_requests() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        body = httpx.get(server.url + "/scope", timeout=10).json()
        assert body["state"]["started_pid"] == server.pid


def test_app_error_gets_500_and_one_traceback() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        r = httpx.get(server.url + "/error", timeout=10)
        assert r.status_code == 500
        assert httpx.get(server.url, timeout=10).status_code == 200
        assert server.output.count("RuntimeError: boom from /error") == 1
        assert server.output.count("Traceback") == 1


def test_factory_flag() -> None:
    with run_asgictl(["serve", "basic:factory", "--factory", "--port", "0"]) as server:
        assert httpx.get(server.url, timeout=10).text == "Hello, world!"


def test_scope_is_correct() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--root-path", "/api"]) as server:
        body = httpx.get(server.url + "/scope?a=1&b=%20", timeout=10).json()
    assert body["method"] == "GET" and body["http_version"] == "1.1" and body["scheme"] == "http"
    assert body["path"] == "/api/scope" and body["root_path"] == "/api"
    assert body["raw_path"] == "/api/scope" and body["query_string"] == "a=1&b=%20"
    assert body["client"][0] == "127.0.0.1" and body["server"] == ["127.0.0.1", int(body["server"][1])]
    assert ["host", f"127.0.0.1:{body['server'][1]}"] in body["headers"]


def test_bad_option_value_is_one_line_and_nonzero() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "eighty"], ready=False) as server:
        assert server.wait_exit(30) == 2
        out = server.output.strip()
        assert out == "asgictl: error: --port: 'eighty' is not an integer"


def test_missing_module_is_one_line() -> None:
    with run_asgictl(["serve", "nosuchmodule:app", "--port", "0"], ready=False) as server:
        assert server.wait_exit(30) == 1
        assert 'Could not import module "nosuchmodule"' in server.output
        assert "Traceback" not in server.output


def test_scope_headers_json_roundtrip() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0", "--http", "h11"]) as server:
        r = httpx.get(server.url + "/scope", headers={"X-Thing": "1"}, timeout=10)
        assert ["x-thing", "1"] in json.loads(r.text)["headers"]
