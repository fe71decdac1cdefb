"""Unit tests of asgictl.pubsub, in-process: the local backend and its bounded queues,
the frame format, and the master relay (the broker driven by a small select loop in a
thread, as the master's loop drives it) between worker backends on real socket pairs."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from asgictl import pubsub
from asgictl.config import Config, ConfigError
from asgictl.pubsub import backends, framing
from asgictl.pubsub.core import MAX_CHANNEL, LocalBackend
from asgictl.pubsub.redis_backend import decode_payload, encode_payload
from asgictl.pubsub.relay import MasterBackend
from asgictl.supervisor.broker import Broker

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_backend() -> Iterator[None]:
    backends.install(None)
    yield
    backends.install(None)


async def next_message(sub: pubsub.Subscription, timeout: float = TIMEOUT) -> pubsub.Message:
    return await asyncio.wait_for(sub.get(), timeout)


# ----------------------------------------------------------------------------- local


def test_publish_reaches_every_subscriber_once_in_order_with_its_type() -> None:
    async def main() -> None:
        await pubsub.publish("room", "before anyone listens")  # goes nowhere
        async with pubsub.subscribe("room") as a, pubsub.subscribe("room") as b:
            async with pubsub.subscribe("other") as other:
                for i in range(100):
                    await pubsub.publish("room", f"m{i}")
                await pubsub.publish("room", b"\x00\xff")
                for sub in (a, b):
                    got = [await next_message(sub) for _ in range(101)]
                    assert [m.data for m in got[:100]] == [f"m{i}" for i in range(100)]
                    assert got[100] == pubsub.Message("room", b"\x00\xff")
                    assert type(got[100].data) is bytes and sub.qsize() == 0
                assert other.qsize() == 0

    asyncio.run(main())


def test_iteration_and_leaving() -> None:
    async def main() -> None:
        received: list[str] = []
        async with pubsub.subscribe("c") as sub:

            async def consume() -> None:
                async for message in sub:
                    received.append(message.data)  # type: ignore[arg-type]
                    if len(received) == 3:
                        return

            task = asyncio.create_task(consume())
            for text in ("a", "b", "c"):
                await pubsub.publish("c", text)
            await asyncio.wait_for(task, TIMEOUT)
        assert received == ["a", "b", "c"]
        assert not pubsub.current().hub.channels  # left: nothing registered any more
        with pytest.raises(RuntimeError):
            async with sub:
                pass

    asyncio.run(main())


def test_overflow_is_seen_where_the_gap_is_and_only_by_the_slow_subscriber() -> None:
    async def main() -> None:
        backend = LocalBackend(max_queue=5)
        pubsub.install(backend)
        async with pubsub.subscribe("c") as slow, pubsub.subscribe("c") as fast:
            fast_got = []
            for i in range(12):
                await pubsub.publish("c", str(i))
                fast_got.append((await next_message(fast)).data)
            assert fast_got == [str(i) for i in range(12)]
            assert slow.qsize() == 5
            assert [(await next_message(slow)).data for _ in range(5)] == ["0", "1", "2", "3", "4"]
            with pytest.raises(pubsub.Overflow) as info:
                await next_message(slow)
            assert info.value.dropped == 7 and isinstance(info.value, pubsub.Gap)
            await pubsub.publish("c", "after")  # the subscription goes on after the error
            assert (await next_message(slow)).data == "after"

    asyncio.run(main())


def test_gap_marker_is_not_repeated_and_queue_stays_bounded() -> None:
    async def main() -> None:
        backend = LocalBackend(max_queue=3)
        pubsub.install(backend)
        async with pubsub.subscribe("c") as sub:
            for i in range(1000):
                await pubsub.publish("c", str(i))
                backend.hub.gap("test")
            assert len(sub._queue) <= 2 * 3 + 1
            await pubsub.publish("x", "y")

    asyncio.run(main())


def test_bad_channels_and_data_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await pubsub.publish("", "x")
        with pytest.raises(ValueError):
            await pubsub.publish("x" * (MAX_CHANNEL + 1), "x")
        with pytest.raises(TypeError):
            await pubsub.publish("c", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pubsub.subscribe(b"c")  # type: ignore[arg-type]

    asyncio.run(main())


def test_config_option_and_mode() -> None:
    assert Config("app:app").pubsub == "auto" and Config("app:app").pubsub_max_queue == 1024
    assert Config("app:app", pubsub="redis://127.0.0.1:6379/0").pubsub == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="--pubsub"):
        Config("app:app", pubsub="kafka://x")
    with pytest.raises(ConfigError, match="--pubsub-max-queue"):
        Config("app:app", pubsub_max_queue=0)
    assert backends.mode("auto", supervised=True) == "master"
    assert backends.mode("auto", supervised=False) == "local"
    assert backends.mode("local", supervised=True) == "local"


def test_redis_payload_keeps_the_type() -> None:
    for data in ("text", "", "\x00starts with NUL", b"", b"\x00\xffbytes", "ü"):
        assert decode_payload(encode_payload(data)) == data
        assert type(decode_payload(encode_payload(data))) is type(data)
    assert decode_payload(b"hello") == "hello"  # e.g. redis-cli PUBLISH
    assert decode_payload(b"\xff\xfe") == b"\xff\xfe"


# ----------------------------------------------------------------------------- framing


def test_frames_round_trip_and_wait_for_the_rest() -> None:
    blob = b"".join(
        [
            framing.encode_publish(b"room", "héllo"),
            framing.encode_publish(b"r", b"\x00" * 70000),
            framing.encode(framing.SUB, b"room", framing.U32.pack(7)),
        ]
    )
    for cut in (0, 1, 6, 7, 12, len(blob) - 1, len(blob)):
        parsed = list(framing.frames(blob[:cut]))
        assert len(parsed) == sum(end <= cut for _, _, _, end in framing.frames(blob))
    kinds = [(k, blob[c:d], len(blob[d:e])) for k, c, d, e in framing.frames(blob)]
    assert kinds == [
        (framing.PUB_TEXT, b"room", 6),
        (framing.PUB_BYTES, b"r", 70000),
        (framing.SUB, b"room", 4),
    ]
    with pytest.raises(framing.FrameError):
        list(framing.frames(framing.HEADER.pack(1, 1, 99) + b"xy"))
    with pytest.raises(framing.FrameError):
        list(framing.frames(framing.HEADER.pack(1 << 31, 1, framing.PUB_BYTES)))


# ----------------------------------------------------------------------------- relay


class BrokerLoop:
    """The master's side for tests: a Broker driven by a select loop in a thread."""

    def __init__(self, max_buffer: int = 8 * 1024 * 1024) -> None:
        self.readers: dict[int, Callable[[], None]] = {}
        self.writers: dict[int, Callable[[], None]] = {}
        self.broker = Broker(
            self.readers.__setitem__,
            lambda fd: self.readers.pop(fd, None),
            self.writers.__setitem__,
            lambda fd: self.writers.pop(fd, None),
            max_buffer=max_buffer,
        )
        self._stop = threading.Event()
        self._calls: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def worker(self, pid: int) -> socket.socket:
        """A new 'worker': its end of a fresh pair, the broker holding the other."""
        master_end, worker_end = self.broker.prepare()
        done = threading.Event()

        def attach() -> None:
            self.broker.attach(master_end, pid)
            done.set()

        self._calls.append(attach)
        assert done.wait(TIMEOUT)
        return worker_end

    def _run(self) -> None:
        while not self._stop.is_set():
            while self._calls:
                self._calls.pop(0)()
            readable, writable, _ = select.select(list(self.readers), list(self.writers), [], 0.02)
            for fd in writable:
                if fd in self.writers:
                    self.writers[fd]()
            for fd in readable:
                if fd in self.readers:
                    self.readers[fd]()

    def __enter__(self) -> BrokerLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.broker.close()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


async def await_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_relay_between_workers_once_and_in_order() -> None:
    async def main(loop: BrokerLoop) -> None:
        a = MasterBackend(loop.worker(101))
        b = MasterBackend(loop.worker(102))
        c = MasterBackend(loop.worker(103))
        async with (
            pubsub.Subscription(a, "room") as sub_a,
            pubsub.Subscription(b, "room") as sub_b,
            pubsub.Subscription(b, "room") as sub_b2,
            pubsub.Subscription(c, "elsewhere") as sub_c,
        ):
            for i in range(500):
                await a.publish("room", f"a{i}")
                await b.publish("room", b"b%d" % i)
            for sub in (sub_a, sub_b, sub_b2):
                got = [(await next_message(sub)).data for _ in range(1000)]
                assert [d for d in got if isinstance(d, str)] == [f"a{i}" for i in range(500)]
                assert [d for d in got if isinstance(d, bytes)] == [b"b%d" % i for i in range(500)]
            # Exactly once: a marker published now is the very next message everywhere.
            await c.publish("room", "end")
            for sub in (sub_a, sub_b, sub_b2):
                assert (await next_message(sub)).data == "end"
            assert sub_c.qsize() == 0
        await await_until(lambda: not loop.broker.channels)  # UNSUBs reached the broker

    with BrokerLoop() as loop:
        asyncio.run(main(loop))


def test_a_dead_worker_loses_only_its_subscriptions() -> None:
    async def main(loop: BrokerLoop) -> None:
        a = MasterBackend(loop.worker(201))
        doomed_sock = loop.worker(202)
        doomed = MasterBackend(doomed_sock)
        async with pubsub.Subscription(a, "room") as sub_a, pubsub.Subscription(doomed, "room"):
            await await_until(lambda: len(loop.broker.channels.get(b"room", ())) == 2)
            await doomed.aclose()  # the worker's end closes, as when it is SIGKILLed
            await await_until(lambda: len(loop.broker.channels.get(b"room", ())) == 1)
            assert 202 not in loop.broker.by_pid
            # A respawned worker gets a fresh pair and subscribes anew.
            fresh = MasterBackend(loop.worker(203))
            async with pubsub.Subscription(fresh, "room") as sub_fresh:
                await fresh.publish("room", "hi")
                assert (await next_message(sub_a)).data == "hi"
                assert (await next_message(sub_fresh)).data == "hi"

    with BrokerLoop() as loop:
        asyncio.run(main(loop))


def test_a_worker_that_does_not_read_is_dropped_for_with_a_gap_and_bounded_buffer() -> None:
    max_buffer = 64 * 1024
    payload = b"x" * 10_000

    async def main(loop: BrokerLoop, stalled: socket.socket) -> int:
        a = MasterBackend(loop.worker(301))
        async with pubsub.Subscription(a, "room") as sub_a:
            # The stalled worker subscribes and then never reads.
            stalled.sendall(framing.encode(framing.SUB, b"room", framing.U32.pack(1)))
            await await_until(lambda: len(loop.broker.channels.get(b"room", ())) == 2)
            peer = loop.broker.by_pid[302]
            sent = 0
            while not peer.lagging:
                await a.publish("room", payload)
                sent += 1
                assert peer.out_bytes <= max_buffer + len(payload) + 64
                assert (await next_message(sub_a)).data == payload  # others unaffected
                assert sent < 10_000
            for _ in range(20):
                await a.publish("room", payload)
                sent += 1
            return sent

    stalled = None
    with BrokerLoop(max_buffer=max_buffer) as loop:
        stalled = loop.worker(302)
        sent = asyncio.run(main(loop, stalled))
        # Now read: publications, a GAP counting what was dropped meanwhile, maybe more
        # publications (the ones the broker relayed after the drain): all accounted for.
        stalled.settimeout(TIMEOUT)
        buf = bytearray()
        kinds: list[int] = []
        dropped = 0
        deadline = time.monotonic() + TIMEOUT
        while kinds.count(framing.PUB_BYTES) + dropped < sent:
            assert time.monotonic() < deadline, (kinds.count(framing.PUB_BYTES), dropped, sent)
            buf += stalled.recv(1 << 20)
            consumed = 0
            for kind, _c, d, end in framing.frames(buf):
                kinds.append(kind)
                consumed = end
                if kind == framing.GAP:
                    dropped += framing.U32.unpack_from(buf, d)[0]
            del buf[:consumed]
        assert kinds[0] == framing.ACK and framing.GAP in kinds and dropped > 0
        assert kinds.count(framing.PUB_BYTES) + dropped == sent
        stalled.close()


def test_subscribe_fails_cleanly_when_the_master_is_gone() -> None:
    async def main() -> None:
        left, right = socket.socketpair()
        backend = MasterBackend(left)
        right.close()
        with pytest.raises(pubsub.PubSubError):
            async with pubsub.Subscription(backend, "room"):
                pass
        assert not backend.hub.channels

    asyncio.run(main())
