"""asgictl.pubsub end to end: the real ``asgictl start`` running the chat app of
tests/apps/pubsub_app.py, real WebSocket clients spread over several worker processes,
and (for ``--pubsub redis://``) a real redis-server started here on loopback with its own
throw-away configuration. Every process is ended by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import ServerProcess, run_asgictl
from websockets.sync.client import ClientConnection, connect

TIMEOUT = 15.0
REDIS = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://", 1) + path


class Client:
    def __init__(self, url: str) -> None:
        # max_queue=None: the test reads in batches; the server must never block on us.
        self._stack = contextlib.ExitStack()
        self.conn: ClientConnection = self._stack.enter_context(
            connect(url, open_timeout=TIMEOUT, close_timeout=2, max_queue=None)
        )
        hello = self.recv()
        assert hello.startswith("hello "), hello
        self.pid = int(hello.split()[1])

    def recv(self, timeout: float = TIMEOUT) -> str:
        data = self.conn.recv(timeout)
        assert isinstance(data, str)
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()


@contextlib.contextmanager
def spread_clients(
    urls: list[str], count: int, min_pids: int = 2, path: str = "/ws/chat"
) -> Iterator[list[Client]]:
    """``count`` chat clients over at least ``min_pids`` worker processes (bounded tries:
    which worker accepts a connection is the kernel's choice)."""
    clients: list[Client] = []
    try:
        for attempt in range(200):
            if len(clients) == count:
                break
            client = Client(urls[attempt % len(urls)] + path)
            pids = {c.pid for c in clients}
            missing = min_pids - len(pids | {client.pid})
            if count - len(clients) - 1 >= missing:
                clients.append(client)
            else:
                client.close()  # the last seats are for other workers
        assert len(clients) == count and len({c.pid for c in clients}) >= min_pids, "could not spread clients"
        yield clients
    finally:
        for client in clients:
            client.close()


def exchange(senders: list[Client], receivers: list[Client], rounds: int, tag: str = "") -> None:
    """Every sender sends ``rounds`` messages; every receiver must get each exactly once,
    in each sender's order (a final marker proves nothing extra came in between)."""
    index = {id(c): i for i, c in enumerate(senders)}
    for k in range(rounds):
        for sender in senders:
            sender.conn.send(f"{tag}{index[id(sender)]}:{k}")
    for receiver in receivers:
        got: dict[int, list[int]] = {i: [] for i in range(len(senders))}
        for _ in range(rounds * len(senders)):
            try:
                text = receiver.recv()
            except TimeoutError:
                raise AssertionError(f"{receiver.pid} got only {got}") from None
            assert text.startswith(tag), text
            who, k = text[len(tag) :].split(":")
            got[int(who)].append(int(k))
        assert all(ks == list(range(rounds)) for ks in got.values()), got
    marker = f"{tag}end"
    senders[0].conn.send(marker)
    for receiver in receivers:
        assert receiver.recv() == marker


def test_chat_across_three_workers_and_a_sigkilled_worker() -> None:
    with run_asgictl(["start", "pubsub_app:app", "--port", "0", "--workers", "3"]) as server:
        url = ws_url(server, "")
        with spread_clients([url], 6) as clients:
            exchange(clients, clients, 20, "a")

            by_pid: dict[int, list[Client]] = {}
            for client in clients:
                by_pid.setdefault(client.pid, []).append(client)
            victim = min(by_pid, key=lambda pid: len(by_pid[pid]))
            survivors = [c for c in clients if c.pid != victim]
            # Mid-stream: survivors are sending when the victim's worker is SIGKILLed.
            for k in range(40):
                if k == 10:
                    os.kill(victim, signal.SIGKILL)
                for i, sender in enumerate(survivors):
                    sender.conn.send(f"b{i}:{k}")
            for receiver in survivors:
                seen: dict[int, list[int]] = {}
                for _ in range(40 * len(survivors)):
                    who, k = receiver.recv()[1:].split(":")
                    seen.setdefault(int(who), []).append(int(k))
                assert all(ks == list(range(40)) for ks in seen.values()) and len(seen) == len(survivors)
            server.wait_for_line(rf"pid {victim}\).*unexpectedly", TIMEOUT)
            # The replacement worker (a fresh socket pair) joins the broadcast too.
            fresh = int(
                server.wait_for_line(r"Booting worker \d+ with pid (\d+) \(respawn", TIMEOUT).group(1)
            )
            server.wait_for_line(rf"\(pid {fresh}\) ready", TIMEOUT)
            late: list[Client] = []
            try:
                for _ in range(100):  # the kernel picks the worker: try until one lands there
                    late.append(Client(url + "/ws/chat"))
                    if late[-1].pid == fresh:
                        break
                assert late[-1].pid == fresh, "no connection reached the respawned worker"
                exchange(survivors + late, survivors + late, 5, "c")
            finally:
                for client in late:
                    client.close()


def test_chat_under_serve_uses_the_local_backend() -> None:
    with run_asgictl(["serve", "pubsub_app:app", "--port", "0"]) as server:
        with spread_clients([ws_url(server, "")], 3, min_pids=1) as clients:
            assert {c.pid for c in clients} == {server.pid}
            exchange(clients, clients, 10, "s")


def test_overflow_hits_only_the_slow_subscriber() -> None:
    args = ["start", "pubsub_app:app", "--port", "0", "--workers", "2", "--pubsub-max-queue", "10"]
    with run_asgictl(args) as server:
        url = ws_url(server, "")
        with spread_clients([url], 2, min_pids=2, path="/ws/chat?room=flood") as (fast, other):
            slow = Client(url + "/ws/slow?room=flood")
            try:
                for i in range(50):  # in lockstep: the fast subscribers (one per worker) never lag
                    fast.conn.send(f"m{i}")
                    assert fast.recv() == f"m{i}" and other.recv() == f"m{i}"
                deadline = time.monotonic() + TIMEOUT
                while True:  # the slow one holds exactly its bound
                    slow.conn.send("qsize?")
                    if slow.recv() == "qsize 10":
                        break
                    assert time.monotonic() < deadline
                slow.conn.send("go")
                got = [slow.recv() for _ in range(10)]
                assert got == [f"m{i}" for i in range(10)]
                line = slow.recv()
                assert line.startswith("overflow "), line
                dropped = int(line.split()[1])
                assert dropped >= 1
                rest = [slow.recv() for _ in range(40 - dropped)]
                assert rest == [f"m{i}" for i in range(10 + dropped, 50)]
                fast.conn.send("after")
                assert fast.recv() == "after" and slow.recv() == "after" and other.recv() == "after"
            finally:
                slow.close()


# ----------------------------------------------------------------------------- redis


class RedisServer:
    def __init__(self, port: int, workdir: str) -> None:
        assert REDIS is not None
        self.port = port
        self.proc = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--daemonize",
                "no",
                "--logfile",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_port() -> Iterator[Any]:
    if REDIS is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/test installs it)")
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'asgictl[redis]')")
    workdir = tempfile.mkdtemp(prefix="asgictl-redis-")
    servers: list[RedisServer] = []

    def start(port: int | None = None) -> RedisServer:
        for _ in range(5):  # a free port may be taken by someone else meanwhile
            try:
                servers.append(RedisServer(port or free_port(), workdir))
                return servers[-1]
            except RuntimeError:
                if port is not None:
                    time.sleep(0.2)
        raise RuntimeError("could not start redis-server")

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_chat_across_two_instances_over_redis_and_a_redis_restart(redis_port: Any) -> None:
    redis = redis_port()
    backend = f"redis://127.0.0.1:{redis.port}/0"
    first = ["start", "pubsub_app:app", "--port", "0", "--workers", "2", "--pubsub", backend]
    second = ["start", "pubsub_app:app", "--port", "0", "--workers", "1", "--pubsub", backend]
    with run_asgictl(first) as a, run_asgictl(second) as b:
        urls = [ws_url(a, ""), ws_url(b, "")]
        with spread_clients(urls, 6, min_pids=2) as clients:
            masters = {a.pid, b.pid}
            assert len(masters) == 2 and len({c.conn.remote_address[1] for c in clients}) == 2
            exchange(clients, clients, 20, "a")

            # Redis goes away and comes back: every subscriber is told of the gap, and the
            # broadcast works again once the workers have reconnected (with back-off).
            redis.stop()
            for client in clients:
                line = client.recv()
                while line.startswith("error "):
                    line = client.recv()
                assert line.startswith("gap"), line
            redis = redis_port(redis.port)
            deadline = time.monotonic() + 30
            probe = 0
            while True:  # probe until every client hears the same probe
                probe += 1
                clients[0].conn.send(f"probe{probe}")
                heard = 0
                for client in clients:
                    with contextlib.suppress(TimeoutError):
                        while True:
                            line = client.recv(0.5)
                            if line == f"probe{probe}":
                                heard += 1
                                break
                if heard == len(clients):
                    break
                assert time.monotonic() < deadline, "the broadcast did not recover after Redis came back"
            exchange(clients, clients, 10, "r")


def test_redis_backend_in_process_with_concurrent_subscribes(redis_port: Any) -> None:
    from asgictl.pubsub import Subscription
    from asgictl.pubsub.redis_backend import RedisBackend

    redis = redis_port()

    async def main() -> None:
        backend = RedisBackend(f"redis://127.0.0.1:{redis.port}/0", max_queue=100)
        subs = [Subscription(backend, f"ch{i % 5}") for i in range(20)]
        try:
            # All at once, while the subscriber connection is still being made.
            await asyncio.wait_for(asyncio.gather(*(s.__aenter__() for s in subs)), TIMEOUT)
            for i in range(5):
                await backend.publish(f"ch{i}", f"text {i}")
                await backend.publish(f"ch{i}", b"\x00bytes")
            for sub in subs:
                first = await asyncio.wait_for(sub.get(), TIMEOUT)
                second = await asyncio.wait_for(sub.get(), TIMEOUT)
                assert (first.channel, first.data) == (sub.channel, f"text {sub.channel[2:]}")
                assert second.data == b"\x00bytes" and sub.qsize() == 0
        finally:
            for sub in subs:
                await sub.aclose()
            await backend.aclose()

    asyncio.run(main())
