"""End to end: FastAPI, Starlette and Flask apps served by the real ``asgictl serve``."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import support
from support import ServerProcess, run_asgictl

FILE_SIZE = 3 * 1024 * 1024 + 17  # several pathsend chunks, not a round number


@pytest.fixture(scope="module")
def payload_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "payload.bin"
    path.write_bytes(os.urandom(FILE_SIZE))
    return path


@pytest.fixture(scope="module", params=["fastapi_app", "starlette_app"])
def asgi_framework(request: pytest.FixtureRequest, payload_file: Path) -> Iterator[tuple[str, ServerProcess]]:
    module = request.param
    env = support.test_env(TEST_FILE=str(payload_file))
    with run_asgictl(["serve", f"{module}:app", "--port", "0"], env=env) as server:
        yield module, server


def test_json_route(asgi_framework: tuple[str, ServerProcess]) -> None:
    module, server = asgi_framework
    r = httpx.get(server.url + "/", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"framework": module.removesuffix("_app"), "ok": True}
    assert int(r.headers["content-length"]) == len(r.content)


def test_path_and_query_params(asgi_framework: tuple[str, ServerProcess]) -> None:
    _module, server = asgi_framework
    r = httpx.get(server.url + "/items/42", params={"q": "a b&c"}, timeout=10)
    assert r.status_code == 200
    assert r.json()["item_id"] == 42 and r.json()["q"] == "a b&c"
    # A path parameter that is not an int is refused by the framework, not the server.
    r = httpx.get(server.url + "/items/notanint", timeout=10)
    assert r.status_code in (404, 422)


def test_streaming_response(asgi_framework: tuple[str, ServerProcess]) -> None:
    _, server = asgi_framework
    with httpx.Client(timeout=10) as client, client.stream("GET", server.url + "/stream") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in r.headers
        body = b"".join(r.iter_raw())
    assert body == b"".join(b"line %d\n" % i for i in range(10))


def test_file_response(asgi_framework: tuple[str, ServerProcess], payload_file: Path) -> None:
    module, server = asgi_framework
    expected = payload_file.read_bytes()
    with httpx.Client(base_url=server.url, timeout=20) as client:
        r = client.get("/file")
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == FILE_SIZE
        assert r.content == expected
        # Keep-alive survives a file response: the next request on the connection works.
        assert client.get("/").status_code == 200
        if module == "starlette_app":
            # Starlette (recent) offers the file through the pathsend extension the server
            # advertises: the server, not the app, reads the file.
            sent = client.get("/debug/sent").json()
            assert sent["/file"] == ["http.response.start", "http.response.pathsend"]
            # HEAD of a file: the length of the file, no body.
            h = client.head("/file")
            assert h.status_code == 200 and h.content == b""
            assert int(h.headers["content-length"]) == FILE_SIZE
            assert client.get("/").status_code == 200


def test_request_body_upload(asgi_framework: tuple[str, ServerProcess]) -> None:
    _, server = asgi_framework
    data = os.urandom(2 * 1024 * 1024 + 3)

    def chunks() -> Iterator[bytes]:  # sent chunked: no Content-Length
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    with httpx.Client(timeout=20) as client:
        r = client.post(server.url + "/upload", content=data)
        assert r.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        r = client.post(server.url + "/upload", content=chunks())
        assert r.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_lifespan_state_in_request_state(asgi_framework: tuple[str, ServerProcess]) -> None:
    _module, server = asgi_framework
    r = httpx.get(server.url + "/state", timeout=10)
    assert r.status_code == 200
    assert r.json()["greeting"].startswith("hello from") and r.json()["pid"] == server.pid


@pytest.mark.parametrize("module", ["fastapi_app", "starlette_app"])
def test_lifespan_shutdown_runs_on_sigterm(module: str) -> None:
    with run_asgictl(["serve", f"{module}:app", "--port", "0"]) as server:
        assert httpx.get(server.url + "/", timeout=10).status_code == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit(20) == 0
        assert f"{module.removesuffix('_app')} lifespan shutdown" in server.output
        assert "Application shutdown complete." in server.output


def test_starlette_under_root_path() -> None:
    with run_asgictl(["serve", "starlette_app:app", "--port", "0", "--root-path", "/api"]) as server:
        # Routing ignores the prefix; URLs the app builds include it.
        assert httpx.get(server.url + "/items/5", timeout=10).json()["item_id"] == 5
        body = httpx.get(server.url + "/url?a=1", timeout=10).json()
    assert body == {
        "url": f"{server.url}/api/url?a=1",
        "url_for": f"{server.url}/api/items/3",
        "root_path": "/api",
    }


# ---------------------------------------------------------------------------- Flask / WSGI


@pytest.fixture(scope="module", params=["wsgi", "auto"])
def flask_server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with run_asgictl(["serve", "flask_app:app", "--port", "0", "--interface", request.param]) as server:
        yield server


def test_flask_get(flask_server: ServerProcess) -> None:
    r = httpx.get(flask_server.url + "/", timeout=10)
    assert r.status_code == 200 and r.text == "Hello from Flask"
    assert r.headers["server"] == "asgictl"


def test_flask_form_post(flask_server: ServerProcess) -> None:
    r = httpx.post(
        flask_server.url + "/form",
        data={"name": "Zoë & co", "color": ["red", "blue"]},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json() == {"name": "Zoë & co", "colors": ["red", "blue"]}


def test_flask_streaming_generator(flask_server: ServerProcess) -> None:
    with httpx.Client(timeout=10) as client, client.stream("GET", flask_server.url + "/stream") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert b"".join(r.iter_raw()) == b"".join(b"part %d\n" % i for i in range(5))


def test_flask_environ(flask_server: ServerProcess) -> None:
    r = httpx.get(flask_server.url + "/environ?x=1", timeout=10)
    assert r.json() == {
        "method": "GET",
        "path": "/environ",
        "script_name": "",
        "query": "x=1",
        "scheme": "http",
        "server_protocol": "HTTP/1.1",
    }
    # The WSGI app does not speak lifespan: auto mode says so and serves anyway.
    assert "Application startup failed" not in flask_server.output


def test_flask_under_root_path() -> None:
    with run_asgictl(["serve", "flask_app:app", "--port", "0", "--root-path", "/mnt"]) as server:
        body = httpx.get(server.url + "/environ", timeout=10).json()
    assert (body["script_name"], body["path"]) == ("/mnt", "/environ")
