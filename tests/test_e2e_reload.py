"""End to end: ``asgictl start --reload`` / ``asgictl dev`` with real files, real workers.

Each test writes an app into a temporary directory, starts the real master watching it,
edits files and polls (with deadlines, never fixed sleeps) until the new code is served.
watchfiles sees a change within a few ms (inotify) and then waits --reload-delay
(0.25 s) of quiet; a reload of two small workers takes ~0.1 s here, so the deadlines
below are generous for a noisy shared 2-core machine. Every process is ended by PID
(``run_asgictl`` stops the master and kills its process group).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import ServerProcess, count, run_asgictl, wait_count, wait_until
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

pytest.importorskip("watchfiles")

DEADLINE = 30.0
RELOADED = r"Reloaded in [0-9.]+ s: "
FAILED = r"Reload failed after [0-9.]+ s: "

APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        STARTUP
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":  # an echo that never ends on its own
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text")})
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:  # an endless stream: only the server's deadline ends it
            await send({"type": "http.response.body", "body": b"tick\\n", "more_body": True})
            await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"VERSION"})
"""


def app_source(version: str, startup: str = "pass") -> str:
    return APP.replace("VERSION", version).replace("STARTUP", startup)


# ----------------------------------------------------------------------------- helpers


def get(port: int, path: str = "/", timeout: float = 10.0) -> bytes:
    """One request on a fresh connection (Connection: close); returns the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:80]
    return body


def served(port: int, n: int = 10) -> set[bytes]:
    """The bodies of n requests: with 2 workers, a mix would show a half-done reload."""
    return {get(port) for _ in range(n)}


def wait_served(server: ServerProcess, body: bytes) -> None:
    try:
        wait_until(lambda: served(server.port) == {body}, what=f"{body!r} from every worker")
    except AssertionError:
        raise AssertionError(f"{body!r} never served by every worker:\n{server.output}") from None


@contextmanager
def dev_server(
    directory: Path, *extra: str, command: str = "start", ready: bool = True
) -> Iterator[ServerProcess]:
    args = [command, "app:app", "--port", "0", "--workers", "2", "--app-dir", str(directory)]
    if command == "start":
        args += ["--reload", "--reload-dir", str(directory)]
    with run_asgictl([*args, *extra], cwd=directory, ready=ready) as server:
        yield server


# ----------------------------------------------------------------------------- tests


def test_edit_reloads_a_broken_app_keeps_the_old_workers_a_fix_reloads(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(app_source("v1"))
    with dev_server(tmp_path) as server:
        assert served(server.port) == {b"v1"}

        # Same size, same second: stale bytecode must not be served.
        app.write_text(app_source("v2"))
        wait_served(server, b"v2")
        wait_count(server, RELOADED + r"app\.py changed \(2 worker", 1)

        # A SyntaxError: the previous workers keep serving; the error is printed once.
        app.write_text(app_source("v3") + "\nx = (\n")
        wait_count(server, FAILED + r"app\.py changed", 1)
        assert served(server.port) == {b"v2"}
        assert count(server, r"SyntaxError: '\(' was never closed") == 1, server.output

        app.write_text(app_source("v4"))
        wait_served(server, b"v4")
        wait_count(server, RELOADED, 2)

        # An ImportError, then a failing lifespan startup: the same, each printed once.
        app.write_text("import no_such_module_here\n" + app_source("v5"))
        wait_count(server, FAILED, 2)
        assert served(server.port) == {b"v4"}
        assert count(server, r"ModuleNotFoundError: No module named 'no_such_module_here'") == 1
        app.write_text(app_source("v6", startup="raise RuntimeError('db is down')"))
        wait_count(server, FAILED, 3)
        assert served(server.port) == {b"v4"}
        assert count(server, r"RuntimeError: db is down") == 1, server.output

        app.write_text(app_source("v7"))
        wait_served(server, b"v7")
        wait_count(server, RELOADED, 3)
        output = server.output
        # One line per reload, no lifecycle story from each worker.
        assert count(server, RELOADED) == 3 and count(server, FAILED) == 3, output
        assert "Started server process" not in output and "Booting worker" not in output, output
        assert "Reload aborted" not in output, output


def test_excluded_and_unmatched_files_do_not_reload_included_ones_do(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(app_source("v1"))
    (tmp_path / "templates").mkdir()
    (tmp_path / "sub" / ".git").mkdir(parents=True)
    page = tmp_path / "templates" / "page.html"
    page.write_text("<p>1</p>")
    with dev_server(tmp_path, "--reload-exclude", "skip_*.py", "--reload-include", "*.html") as server:
        assert served(server.port) == {b"v1"}
        (tmp_path / "skip_me.py").write_text("x = 1\n")  # --reload-exclude
        (tmp_path / ".hidden.py").write_text("x = 1\n")  # default exclude .*
        (tmp_path / "notes.txt").write_text("not included\n")  # not *.py
        (tmp_path / "sub" / ".git" / "hook.py").write_text("x = 1\n")  # hidden folder
        (tmp_path / "app.py~").write_text("editor backup\n")
        # Those were written first: had any of them counted, its reload (or its name in
        # the one below) would be in the log before this included edit's reload.
        app.write_text(app_source("v2"))
        wait_served(server, b"v2")
        wait_count(server, RELOADED, 1)
        assert count(server, RELOADED + r"app\.py changed") == 1, server.output
        for name in ("skip_me", ".hidden", "notes.txt", "hook.py", "app.py~"):
            assert name not in server.output, server.output
        # --reload-include: a template counts.
        page.write_text("<p>2</p>")
        wait_count(server, RELOADED + r"templates/page\.html changed", 1)
        assert count(server, RELOADED) == 2, server.output
        # A HUP in dev mode gets its one line too.
        server.signal(signal.SIGHUP)
        wait_count(server, RELOADED + r"reload requested", 1)


def test_an_open_stream_is_closed_within_the_dev_graceful_deadline(tmp_path: Path) -> None:
    """``asgictl dev``: the old worker gives the stream 3 s (dev default), then closes it;
    an open WebSocket gets its close frame at once."""
    app = tmp_path / "app.py"
    app.write_text(app_source("v1"))
    with dev_server(tmp_path, command="dev") as server:
        with (
            ws_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=DEADLINE) as ws,
            socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock,
        ):
            ws.send("hi")
            assert ws.recv(timeout=DEADLINE) == "hi"
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            app.write_text(app_source("v2"))
            wait_count(server, RELOADED, 1)
            reloaded = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=DEADLINE)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # service restart
            assert time.monotonic() - reloaded < 3.0
            wait_served(server, b"v2")  # the new workers serve while the stream drains
            received = 0
            while data := sock.recv(65536):
                received += len(data)
            closed_after = time.monotonic() - reloaded
        assert received > 0  # it kept streaming during the grace period
        # 3 s of grace, then the worker aborts it: well before the master's own kill
        # deadline (grace + 5 s) and nowhere near uvicorn's "wait forever".
        assert 2.0 < closed_after < 3.0 + 4.0, (closed_after, server.output)
        wait_until(lambda: "Graceful shutdown timed out" in server.output, what="the timeout warning")


def test_an_app_broken_at_start_waits_for_the_fix(tmp_path: Path) -> None:
    """uvicorn --reload survives a broken first import; so does the dev master."""
    app = tmp_path / "app.py"
    app.write_text(app_source("v1") + "\nx = (\n")
    with dev_server(tmp_path, ready=False) as server:
        server.wait_for_line(r"waiting for a change to try again")
        assert server.proc.poll() is None
        app.write_text(app_source("v2"))
        server.wait_ready()
        wait_served(server, b"v2")
        assert count(server, r"SyntaxError: '\(' was never closed") == 1, server.output
        # From here on, a normal dev server.
        app.write_text(app_source("v3"))
        wait_served(server, b"v3")
        wait_count(server, RELOADED, 1)
