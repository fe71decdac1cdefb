"""Plain ASGI apps used by the end-to-end tests (served from this directory)."""

import asyncio
import json
import os


async def _lifespan(receive, send, state=None):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if state is not None:
                state["started_pid"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            print("lifespan shutdown ran", flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive):
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def _text(send, status, body, headers=()):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    """Routes: / hello, /echo (body back), /scope (JSON of the scope), /stream (chunked),
    /slow?s (sleeps s seconds then answers), /error (raises), /state (lifespan state)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope.get("state"))
        return
    path = scope["path"][len(scope["root_path"]) :]
    if path == "/echo":
        body = await _read_body(receive)
        await _text(send, 200, body)
    elif path == "/scope":
        view = {
            k: v
            for k, v in scope.items()
            if k
            in (
                "http_version",
                "method",
                "scheme",
                "path",
                "root_path",
                "query_string",
                "client",
                "server",
                "raw_path",
            )
        }
        view["query_string"] = scope["query_string"].decode()
        view["raw_path"] = scope["raw_path"].decode()
        view["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        view["state"] = {k: v for k, v in scope.get("state", {}).items()}
        await _text(send, 200, json.dumps(view).encode(), [(b"x-kind", b"json")])
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(5):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
        await _text(send, 200, b"slow done")
    elif path == "/error":
        raise RuntimeError("boom from /error")
    else:
        await _text(send, 200, b"Hello, world!")


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _text(send, 200, b"never")


def factory():
    return app
