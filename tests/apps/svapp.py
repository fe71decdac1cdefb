"""An ASGI app for the supervisor's end-to-end tests.

Routes: / ("ok"), /pid (the worker's pid), /slow?SECS (async sleep, then answers),
/hang?SECS (blocks the event loop with time.sleep: a hung worker), /crash (os._exit),
/grow?MB (keeps MB more of memory: a leak). A slow request prints "svapp: slow request
begins in PID" and the lifespan shutdown "svapp: lifespan shutdown in PID" (tests wait
for and count them).

``slow_startup``: the same app whose lifespan startup awaits 60 s (a worker stuck in its
boot until a stop cancels it).
"""

import asyncio
import os
import time

LEAK = []


async def _text(send, body, status=200):
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print(f"svapp: lifespan shutdown in {os.getpid()}", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    arg = scope["query_string"].decode() or "1"
    if path == "/pid":
        await _text(send, str(os.getpid()).encode())
    elif path == "/slow":
        print(f"svapp: slow request begins in {os.getpid()}", flush=True)
        await asyncio.sleep(float(arg))
        await _text(send, b"slow done")
    elif path == "/hang":
        time.sleep(float(arg))  # the line the stack dump must name
        await _text(send, b"woke up")
    elif path == "/grow":
        LEAK.append(b"x" * (int(arg) * 1024 * 1024))
        await _text(send, b"grown")
    elif path == "/crash":
        os._exit(7)
    else:
        await _text(send, b"ok")


async def slow_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        print(f"svapp: slow startup begins in {os.getpid()}", flush=True)
        await asyncio.sleep(60)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await app(scope, receive, send)
