"""A FastAPI chat app on asgictl.pubsub, for tests/test_e2e_pubsub.py and the benchmark.

``/ws/chat?room=R``: subscribes to R, says ``hello PID`` once subscribed (so a client knows
which worker it landed on and that it will see everything published from now on), then
publishes every text it receives to R and forwards every message of R to the client.
``/ws/slow?room=R``: subscribes but does not read its subscription until the client says
``go``; then forwards messages, and an ``overflow N`` line where messages were dropped.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from asgictl import pubsub


@asynccontextmanager
async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
    # Publishing during lifespan startup works (nobody listens yet: it goes nowhere).
    await pubsub.publish("startup", f"worker {os.getpid()} up")
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/pid")
async def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


async def _forward(ws: WebSocket, sub: pubsub.Subscription) -> None:
    while True:
        try:
            async for message in sub:
                if isinstance(message.data, bytes):
                    await ws.send_bytes(message.data)
                else:
                    await ws.send_text(message.data)
        except pubsub.Gap as gap:
            await ws.send_text(f"{'overflow' if isinstance(gap, pubsub.Overflow) else 'gap'} {gap.dropped}")


@app.websocket("/ws/chat")
async def chat(ws: WebSocket, room: str = "room") -> None:
    await ws.accept()
    async with pubsub.subscribe(room) as sub:
        await ws.send_text(f"hello {os.getpid()}")
        task = asyncio.create_task(_forward(ws, sub))
        try:
            while True:
                text = await ws.receive_text()
                try:
                    await pubsub.publish(room, text)
                except pubsub.PubSubError as exc:  # e.g. Redis is down: say so, keep the socket
                    await ws.send_text(f"error {exc}")
        except WebSocketDisconnect:
            pass
        finally:
            task.cancel()


@app.websocket("/ws/slow")
async def slow(ws: WebSocket, room: str = "room") -> None:
    await ws.accept()
    async with pubsub.subscribe(room) as sub:
        await ws.send_text(f"hello {os.getpid()}")
        try:
            while (await ws.receive_text()) != "go":
                await ws.send_text(f"qsize {sub.qsize()}")
            task = asyncio.create_task(_forward(ws, sub))
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if "task" in locals():
                task.cancel()
