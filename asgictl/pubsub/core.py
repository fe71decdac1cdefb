"""The backend-independent half of pub/sub: messages, subscriptions and their bounded
queues, the per-process fan-out (:class:`Hub`) and the :class:`Backend` contract.

Every backend delivers into one :class:`Hub` per process: the hub knows which local
subscriptions listen on which channel and appends each message to each of their queues,
synchronously, in the order the backend hands messages over. What differs between
backends is only how a message reaches the hub (directly for ``local``, through the
master for ``master``, through Redis for ``redis://``) and how a channel is opened
(nothing, a SUB frame to the master, a Redis SUBSCRIBE).

Bounds: a subscription queues at most ``max_queue`` messages. Past that, new messages for
it are dropped and a :class:`Overflow` marker takes their place in its queue, so the
subscriber sees the error exactly where the gap is (after the messages it did get) and
can carry on iterating. A lost connection (a Redis reconnect, a worker that fell behind
the master) puts a :class:`Gap` marker in every queue. Markers are not counted against
``max_queue`` but never sit next to each other, so a queue holds at most about twice
``max_queue`` items.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from types import TracebackType
from typing import Union

Data = Union[str, bytes]  # noqa: UP007 - a runtime alias on Python 3.10

#: Per-subscription queue bound when none is configured (``--pubsub-max-queue``).
DEFAULT_MAX_QUEUE = 1024
#: Largest message, in bytes once encoded; bounds every buffer that holds whole frames.
MAX_DATA = 16 * 1024 * 1024
#: Longest channel name, in bytes of UTF-8 (the frame's length field is 16 bits).
MAX_CHANNEL = 1024


class PubSubError(Exception):
    """Base of the errors pub/sub raises."""


class Gap(PubSubError):
    """Messages of this subscription may have been lost at this point of the stream
    (a broker connection dropped, or this worker fell behind). Iterating again goes on
    with the messages published afterwards."""

    def __init__(self, reason: str, dropped: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        #: How many messages were dropped, when known.
        self.dropped = dropped


class Overflow(Gap):
    """This subscriber fell more than ``--pubsub-max-queue`` messages behind: the messages
    past the bound were dropped (``dropped`` says how many). Other subscribers are
    unaffected."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message as a subscriber receives it."""

    channel: str
    #: What the publisher passed: ``str`` stays ``str``, ``bytes`` stays ``bytes``.
    data: Data


def check_channel(channel: str) -> bytes:
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str, not {type(channel).__name__}")
    raw = channel.encode("utf-8")
    if not raw or len(raw) > MAX_CHANNEL:
        raise ValueError(f"a channel name is 1 to {MAX_CHANNEL} bytes of UTF-8")
    return raw


def check_data(data: Data) -> None:
    if isinstance(data, str):
        size = len(data)  # a cheap lower bound; the exact check is on the encoded bytes
    elif isinstance(data, (bytes, bytearray, memoryview)):
        size = len(data)
    else:
        raise TypeError(f"pub/sub data is str or bytes, not {type(data).__name__}")
    if size > MAX_DATA:
        raise ValueError(f"pub/sub messages are limited to {MAX_DATA} bytes")


class Subscription:
    """What ``async with pubsub.subscribe(channel) as sub`` gives: an async iterator of
    :class:`Message`, raising :class:`Gap` / :class:`Overflow` where messages were lost."""

    def __init__(self, backend: Backend, channel: str) -> None:
        check_channel(channel)
        self.channel = channel
        self._backend = backend
        self._max = backend.max_queue
        self._queue: collections.deque[Message | Gap] = collections.deque()
        self._count = 0  # messages (not markers) in the queue
        self._waiter: asyncio.Future[None] | None = None
        self._active = False
        self._closed = False

    # -- the context manager
    async def __aenter__(self) -> Subscription:
        if self._active or self._closed:
            raise RuntimeError("a Subscription is entered once")
        await self._backend.join(self)
        self._active = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._active:
            self._active = False
            await self._backend.leave(self)

    # -- consuming
    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._queue:
                item = self._queue.popleft()
                if isinstance(item, Message):
                    self._count -= 1
                    return item
                raise item
            if self._closed:
                raise StopAsyncIteration
            if not self._active:
                raise RuntimeError("iterate a Subscription inside `async with pubsub.subscribe(...)`")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def get(self) -> Message:
        """The next message (raises like iteration does)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise PubSubError("the subscription is closed") from None

    def qsize(self) -> int:
        """Messages waiting in this subscription's queue."""
        return self._count

    # -- fed by the Hub, synchronously, from the event loop
    def _push(self, message: Message) -> None:
        if self._closed:
            return
        queue = self._queue
        if self._count >= self._max:
            last = queue[-1] if queue else None
            if isinstance(last, Overflow):
                last.dropped = (last.dropped or 0) + 1
            else:
                queue.append(
                    Overflow(
                        f"subscriber of {self.channel!r} fell more than {self._max} messages behind"
                        " (--pubsub-max-queue): messages were dropped",
                        dropped=1,
                    )
                )
                self._wake()
            return
        queue.append(message)
        self._count += 1
        self._wake()

    def _gap(self, reason: str) -> None:
        if self._closed:
            return
        queue = self._queue
        if queue and isinstance(queue[-1], Gap):
            return  # one marker says it: something was lost here
        queue.append(Gap(reason))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Hub:
    """This process's subscriptions by channel, and the one place messages fan out."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[Subscription, None]] = {}

    def add(self, sub: Subscription) -> bool:
        """Register ``sub``; True when it is the channel's first local subscriber."""
        subs = self.channels.get(sub.channel)
        if subs is None:
            self.channels[sub.channel] = {sub: None}
            return True
        subs[sub] = None
        return False

    def remove(self, sub: Subscription) -> bool:
        """Unregister ``sub``; True when it was the channel's last local subscriber."""
        subs = self.channels.get(sub.channel)
        if subs is None or sub not in subs:
            return False
        del subs[sub]
        if not subs:
            del self.channels[sub.channel]
            return True
        return False

    def deliver(self, channel: str, data: Data) -> int:
        subs = self.channels.get(channel)
        if not subs:
            return 0
        message = Message(channel, data)
        for sub in list(subs):
            sub._push(message)
        return len(subs)

    def gap(self, reason: str) -> None:
        for subs in list(self.channels.values()):
            for sub in list(subs):
                sub._gap(reason)


class Backend:
    """How messages travel between subscribers. Subclasses implement :meth:`publish`,
    :meth:`open_channel` and :meth:`close_channel`; the base class counts local
    subscribers per channel so a channel is opened once per process, and makes a
    subscriber that joins while its channel is still being opened wait for that."""

    name = "base"

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self.hub = Hub()
        self._opening: dict[str, asyncio.Future[None]] = {}

    async def publish(self, channel: str, data: Data) -> None:
        raise NotImplementedError

    async def open_channel(self, channel: str) -> None:
        """Start receiving ``channel``; return once messages published from now on will
        arrive (the broker acknowledged the subscription)."""

    async def close_channel(self, channel: str) -> None:
        """Stop receiving ``channel`` (its last local subscriber left)."""

    async def aclose(self) -> None:
        """Release connections (server shutdown)."""

    async def join(self, sub: Subscription) -> None:
        channel = sub.channel
        if not self.hub.add(sub):
            opening = self._opening.get(channel)
            if opening is not None and not opening.done():
                try:
                    await asyncio.shield(opening)
                except BaseException:
                    await self.leave(sub)
                    raise
            return
        opening = asyncio.get_running_loop().create_future()
        self._opening[channel] = opening
        try:
            await self.open_channel(channel)
        except BaseException as exc:
            if not opening.done():
                opening.set_exception(PubSubError(f"subscribing to {channel!r} failed: {exc!r}"))
                opening.exception()  # retrieved: joiners that wait re-raise it themselves
            await self.leave(sub)
            raise
        else:
            if not opening.done():
                opening.set_result(None)
        finally:
            if self._opening.get(channel) is opening:
                del self._opening[channel]

    async def leave(self, sub: Subscription) -> None:
        if self.hub.remove(sub):
            await self.close_channel(sub.channel)


class LocalBackend(Backend):
    """One process: publish delivers straight into this process's hub."""

    name = "local"

    async def publish(self, channel: str, data: Data) -> None:
        check_channel(channel)
        check_data(data)
        self.hub.deliver(channel, data)
