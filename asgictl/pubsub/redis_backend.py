"""The ``redis://host:port/db`` backend: channels shared by every process (and host)
connected to one Redis server, with the ``redis`` package's asyncio client.

Each process keeps two connections: one for PUBLISH (redis-py's pool) and one
subscriber connection, read by one task that hands every message to this process's hub.
A channel is SUBSCRIBEd when its first local subscriber arrives (``subscribe`` returns
once Redis confirmed it, so every message published afterwards arrives) and
UNSUBSCRIBEd when its last one leaves. Every subscriber gets each message once, through
Redis, including the publisher's own process: one path, one order (Redis keeps each
connection's PUBLISHes in order).

When the subscriber connection drops, every local subscription gets a :class:`Gap` marker
at once (messages published meanwhile are lost: Redis pub/sub does not store them), and
the reader reconnects with exponential back-off and subscribes again to every channel
still wanted. redis-py's own silent retries are turned off for the same reason: a retry
that reconnects would hide the gap (and a retried PUBLISH could deliver twice).

Text versus bytes: ``str`` data is published as plain UTF-8 (so ``redis-cli PUBLISH room
hi`` reaches asgictl subscribers as ``"hi"``), ``bytes`` data with a two-byte tag
``\\x00B`` (and text that itself starts with NUL with ``\\x00T``). A message without a tag
that is not UTF-8 arrives as ``bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asgictl.pubsub.core import (
    DEFAULT_MAX_QUEUE,
    Backend,
    Data,
    PubSubError,
    check_channel,
    check_data,
)

logger = logging.getLogger("asgictl.error")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: How long ``subscribe`` waits for Redis to confirm before raising PubSubError.
SUBSCRIBE_TIMEOUT = 10.0
#: The reader's read timeout: how often it looks up from an idle connection.
READ_TIMEOUT = 1.0

TAG_BYTES = b"\x00B"
TAG_TEXT = b"\x00T"


def encode_payload(data: Data) -> bytes:
    if isinstance(data, str):
        raw = data.encode("utf-8")
        return TAG_TEXT + raw if raw[:1] == b"\x00" else raw
    return TAG_BYTES + bytes(data)


def decode_payload(raw: bytes) -> Data:
    if raw[:1] == b"\x00":
        tag = raw[:2]
        if tag == TAG_BYTES:
            return raw[2:]
        if tag == TAG_TEXT:
            return raw[2:].decode("utf-8", "replace")
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _import_redis() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError:  # pragma: no cover - depends on the environment
        raise PubSubError(
            "--pubsub redis://...: the 'redis' package is not installed (pip install 'asgictl[redis]')"
        ) from None
    return aioredis


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        super().__init__(max_queue)
        self.url = url
        self._aioredis = _import_redis()
        self._client: Any = None
        self._ps: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._wanted: asyncio.Event | None = None
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._closed = False

    def _redis(self) -> Any:
        if self._client is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No silent retries (see the module docstring); no read timeout on the
            # subscriber connection, which may legitimately stay quiet for hours.
            self._client = self._aioredis.Redis.from_url(
                self.url, retry=Retry(NoBackoff(), 0), socket_timeout=None, socket_keepalive=True
            )
        return self._client

    async def publish(self, channel: str, data: Data) -> None:
        raw_channel = check_channel(channel)
        check_data(data)
        try:
            await self._redis().publish(raw_channel, encode_payload(data))
        except (self._aioredis.RedisError, OSError) as exc:
            raise PubSubError(f"publish to {self.url} failed: {exc}") from exc

    async def open_channel(self, channel: str) -> None:
        raw = channel.encode("utf-8")
        loop = asyncio.get_running_loop()
        confirmed = loop.create_future()
        self._pending.setdefault(raw, []).append(confirmed)
        if self._wanted is None:
            self._wanted = asyncio.Event()
        self._wanted.set()
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read_forever(), name="asgictl-pubsub-redis")
        ps = self._ps
        if ps is not None:
            # The reader is connected and subscribed to what was wanted then: add ours.
            # (Had it not got that far, it subscribes to every wanted channel itself.)
            with contextlib.suppress(Exception):  # the reader sees a broken connection
                await ps.subscribe(raw)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
        except asyncio.TimeoutError:
            raise PubSubError(f"subscribing to {channel!r}: no answer from {self.url}") from None
        finally:
            waiting = self._pending.get(raw)
            if waiting and confirmed in waiting:
                waiting.remove(confirmed)
                if not waiting:
                    del self._pending[raw]

    async def close_channel(self, channel: str) -> None:
        ps = self._ps
        if ps is not None:
            with contextlib.suppress(Exception):
                await ps.unsubscribe(channel.encode("utf-8"))

    async def aclose(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    # -- the subscriber connection
    async def _read_forever(self) -> None:
        backoff = BACKOFF_FIRST
        assert self._wanted is not None
        while not self._closed:
            if not self.hub.channels:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            ps = self._redis().pubsub()
            delivered = False
            try:
                # Subscribe to every wanted channel, including those wanted meanwhile, and
                # only then publish ``self._ps`` (no await between the last check and it):
                # later joiners subscribe on it themselves, and never race our connect.
                subscribed: set[str] = set()
                while missing := [c for c in self.hub.channels if c not in subscribed]:
                    await ps.subscribe(*(c.encode("utf-8") for c in missing))
                    subscribed.update(missing)
                self._ps = ps
                while True:
                    message = await ps.get_message(timeout=READ_TIMEOUT)
                    if message is None:
                        if not self.hub.channels and not ps.subscribed:
                            break  # everyone left: go idle until someone subscribes
                        continue
                    if not delivered:
                        delivered = True
                        backoff = BACKOFF_FIRST  # a live connection: the next failure starts over
                    kind = message["type"]
                    if kind == "message":
                        self.hub.deliver(message["channel"].decode("utf-8"), decode_payload(message["data"]))
                    elif kind == "subscribe":
                        for confirmed in self._pending.pop(message["channel"], ()):
                            if not confirmed.done():
                                confirmed.set_result(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                logger.warning("pub/sub: lost the Redis connection (%s); retrying in %.1f s", exc, backoff)
                self.hub.gap(f"the connection to Redis was lost ({exc}); messages may have been missed")
                # The publishing connections went down with it: drop them now, so the next
                # publish connects afresh instead of failing once per stale connection.
                with contextlib.suppress(Exception):
                    await self._redis().connection_pool.disconnect()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                self._ps = None
                with contextlib.suppress(Exception):
                    await ps.aclose()
