"""More ASGI test apps: body reading on demand, long polls, the environment, ASGI2,
an app without lifespan support, and attributes reached through dots."""

import asyncio
import os
import types

from basic import app as basic_app


async def _send_text(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": [*headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    """Routes: /read[?TAG] (echo the body; with a tag, print each message received),
    /noread (answer without reading the body), /longpoll?TAG (read the body, then wait
    for http.disconnect, printing a line before and after), /sleep?SECS&TAG (print a
    line, then sleep), /env?NAME (the value of an environment variable);
    anything else goes to basic:app."""
    if scope["type"] != "http":
        return await basic_app(scope, receive, send)
    path = scope["path"][len(scope["root_path"]) :]
    if path == "/read":
        tag = scope["query_string"].decode()
        body = b""
        while True:
            message = await receive()
            if tag:
                print(f"read {tag} got {message['type']}", flush=True)
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await _send_text(send, b"read:" + body)
    elif path == "/noread":
        await _send_text(send, b"not reading your body")
    elif path == "/longpoll":
        tag = scope["query_string"].decode()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        print(f"longpoll {tag} waiting", flush=True)
        message = await receive()  # nothing more comes: only the disconnect can end this
        print(f"longpoll {tag} got {message['type']}", flush=True)
    elif path == "/sleep":
        secs, _, tag = scope["query_string"].decode().partition("&")
        print(f"sleep {tag} started", flush=True)
        await asyncio.sleep(float(secs))
        await _send_text(send, b"slept")
    elif path == "/env":
        name = scope["query_string"].decode()
        await _send_text(send, os.environ.get(name, "<unset>").encode())
    else:
        await basic_app(scope, receive, send)


class ASGI2App:
    """An ASGI2 (double-callable) application: instantiated with the scope."""

    def __init__(self, scope):
        assert scope["type"] in ("http", "lifespan")
        self.scope = scope

    async def __call__(self, receive, send):
        if self.scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        await _send_text(send, b"asgi2 " + self.scope["path"].encode())


async def no_lifespan(scope, receive, send):
    """An app that only speaks HTTP, as many simple apps do."""
    assert scope["type"] == "http", f"unsupported scope {scope['type']}"
    await _send_text(send, b"http only")


async def _nested_app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await basic_app(scope, receive, send)
    await _send_text(send, b"nested attribute")


outer = types.SimpleNamespace(inner=types.SimpleNamespace(app=_nested_app))
