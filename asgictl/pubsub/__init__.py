"""Pub/sub broadcasts for apps served by asgictl: one API, across every worker.

A chat room over WebSockets, where every client of every worker sees every message::

    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from asgictl import pubsub
    import asyncio

    app = FastAPI()

    @app.websocket("/chat")
    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        async with pubsub.subscribe("room") as sub:

            async def forward() -> None:
                async for message in sub:          # message.channel, message.data
                    await ws.send_text(message.data)

            task = asyncio.create_task(forward())
            try:
                while True:
                    await pubsub.publish("room", await ws.receive_text())
            except WebSocketDisconnect:
                pass
            finally:
                task.cancel()

Guarantees: a subscriber gets every message published on its channel after its
``async with pubsub.subscribe(...)`` entered, in any worker, exactly once, and in the order
each publisher sent them. ``data`` is ``str`` or ``bytes`` and arrives as the same type.

Backends, chosen with ``--pubsub`` (``ASGICTL_PUBSUB``, ``pubsub = ...`` in TOML):

- ``local``: this process only. What ``asgictl serve`` and code run without a server
  (tests) use.
- ``master`` (the default under ``asgictl start``): the master relays between its
  workers over Unix socket pairs it created before forking them. No extra service.
- ``redis://host:port/db``: Redis PUBLISH/SUBSCRIBE (``pip install 'asgictl[redis]'``),
  for several asgictl instances on several hosts.

Bounded: each subscription queues at most ``--pubsub-max-queue`` messages (default
1024). A subscriber that falls further behind loses the messages past the bound and
sees :class:`Overflow` at that point of its stream; others are unaffected, and it can go
on iterating. A lost broker connection (a Redis reconnect) shows as :class:`Gap` (the
base class of Overflow). A worker that dies takes only its own subscriptions along.
"""

from __future__ import annotations

from asgictl.pubsub.backends import current, install
from asgictl.pubsub.core import (
    Backend,
    Data,
    Gap,
    LocalBackend,
    Message,
    Overflow,
    PubSubError,
    Subscription,
)

__all__ = [
    "Backend",
    "Gap",
    "LocalBackend",
    "Message",
    "Overflow",
    "PubSubError",
    "Subscription",
    "current",
    "install",
    "publish",
    "subscribe",
]


async def publish(channel: str, data: Data) -> None:
    """Send ``data`` (``str`` or ``bytes``) to every subscriber of ``channel``.

    Returns once the message is on its way (it may wait while the broker is behind: a
    publisher is slowed down rather than buffered without bound)."""
    await current().publish(channel, data)


def subscribe(channel: str) -> Subscription:
    """``async with pubsub.subscribe(channel) as sub: async for message in sub: ...``

    Entering returns once messages published from then on will be delivered."""
    return Subscription(current(), channel)
