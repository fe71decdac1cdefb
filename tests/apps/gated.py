"""An ASGI app whose workers become ready only when the test lets them (health probes).

Each worker's lifespan startup claims the next number k in ``$GATE_DIR`` (files
``claim-1``, ``claim-2``... created exclusively) and waits until the test creates
``open-k``: the test decides how many workers are ready, one at a time. Routes: /
("ok"), /slow?SECS (prints "slow started", sleeps, answers).
"""

import asyncio
import os
import time


def _claim(directory: str) -> int:
    k = 1
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"claim-{k}"), os.O_CREAT | os.O_EXCL))
            return k
        except FileExistsError:
            k += 1


async def _wait_for_gate() -> None:
    directory = os.environ["GATE_DIR"]
    gate = os.path.join(directory, f"open-{_claim(directory)}")
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _wait_for_gate()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        print("slow started", flush=True)
        await asyncio.sleep(float(scope["query_string"].decode() or "1"))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
