"""Plain ASGI applications used by the benchmark scenarios.

Each app is a bare ASGI 3 callable with no framework, so the figures measure the
server, not the application. Every app answers the ``lifespan`` protocol (startup and
shutdown complete at once) so that servers which run lifespan by default do not log
errors or take a slower path.

Apps (import as ``apps:NAME``):

- ``hello``  -- 13-byte ``Hello, world!`` as text/plain, with content-length.
- ``get10k`` -- a 10 KiB (10,240-byte) body, with content-length.
- ``get64k`` -- a 64 KiB (65,536-byte) body, with content-length (the HTTP/2 scenarios).
- ``echo``   -- reads the whole request body and sends it back (the POST scenario sends 10 KiB).
- ``stream`` -- a streaming response of ``STREAM_CHUNKS`` chunks of ``STREAM_CHUNK_SIZE``
  bytes, no content-length (chunked transfer encoding on HTTP/1.1).
- ``pid``    -- the answering process's PID as the text body (tells the workers apart).
- ``spin``   -- burns the CPU for ``?MS`` milliseconds (default 200) without yielding,
  then answers with its PID: a slow, CPU-bound request.
- ``ws_echo`` -- a WebSocket endpoint that sends every message back as it came.

The FastAPI scenario lives in ``fastapi_app.py`` so that this module never imports FastAPI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY = b"Hello, world!"
GET10K_BODY = b"x" * 10 * 1024
GET64K_BODY = b"x" * 64 * 1024
STREAM_CHUNKS = 64
STREAM_CHUNK_SIZE = 1024
STREAM_CHUNK = b"s" * STREAM_CHUNK_SIZE

_TEXT_PLAIN = (b"content-type", b"text/plain")
_OCTET_STREAM = (b"content-type", b"application/octet-stream")
HELLO_HEADERS = [_TEXT_PLAIN, (b"content-length", str(len(HELLO_BODY)).encode())]
GET10K_HEADERS = [_OCTET_STREAM, (b"content-length", str(len(GET10K_BODY)).encode())]
GET64K_HEADERS = [_OCTET_STREAM, (b"content-length", str(len(GET64K_BODY)).encode())]
STREAM_HEADERS = [_OCTET_STREAM]


async def lifespan(receive: Receive, send: Send) -> None:
    """Complete lifespan startup and shutdown immediately."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """13-byte ``Hello, world!`` text/plain response."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": HELLO_HEADERS})
    await send({"type": "http.response.body", "body": HELLO_BODY})


async def get10k(scope: Scope, receive: Receive, send: Send) -> None:
    """10 KiB response body."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": GET10K_HEADERS})
    await send({"type": "http.response.body", "body": GET10K_BODY})


async def get64k(scope: Scope, receive: Receive, send: Send) -> None:
    """64 KiB response body."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": GET64K_HEADERS})
    await send({"type": "http.response.body", "body": GET64K_BODY})


async def read_body(receive: Receive) -> bytes:
    """Read the full request body from ``http.request`` messages."""
    chunks: list[bytes] = []
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            break
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    return b"".join(chunks)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Send the request body back as the response body."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    body = await read_body(receive)
    headers = [_OCTET_STREAM, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    """Streaming response: ``STREAM_CHUNKS`` body messages, then an empty final one."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def pid(scope: Scope, receive: Receive, send: Send) -> None:
    """The worker's PID as a text/plain body: which worker answered."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    body = str(os.getpid()).encode()
    headers = [_TEXT_PLAIN, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def spin(scope: Scope, receive: Receive, send: Send) -> None:
    """Busy-loop for ``?MS`` ms (the event loop is blocked meanwhile), then answer the PID."""
    if scope["type"] != "http":
        return await lifespan(receive, send)
    query = scope["query_string"]
    end = time.perf_counter() + (int(query) if query.isdigit() else 200) / 1000
    while time.perf_counter() < end:
        pass
    body = str(os.getpid()).encode()
    headers = [_TEXT_PLAIN, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept a WebSocket and echo every message (text or bytes) until the client leaves."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] != "websocket":
        headers = [_TEXT_PLAIN, (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 426, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
