"""An in-memory transport and a driver for unit tests of the HTTP protocol classes.

``Harness(app, http="h11")`` builds the real connection class for a parser over a fake
transport that records every ``write`` call, and runs the real event loop only until
the work in flight settles (bounded by a deadline, never a fixed sleep).
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgictl.config import Config
from asgictl.protocols.factory import connection_factory
from asgictl.protocols.state import ServerState

PARSERS = ["httptools", "h11", "h1c"]


class MemoryTransport(asyncio.Transport):
    def __init__(self, peer: Any = ("127.0.0.1", 50000), sock: Any = ("127.0.0.1", 8000)) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True
        #: what get_write_buffer_size() answers: bytes "not yet taken by the client"
        self.buffered = 0
        self._extra = {"peername": peer, "sockname": sock}
        self.protocol: asyncio.Protocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_event_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.buffered

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


class Harness:
    def __init__(
        self,
        app: Any,
        http: str = "httptools",
        peer: Any = ("127.0.0.1", 50000),
        transport_extra: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """``transport_extra``: more of what the transport's get_extra_info answers (a
        TLS connection's ``ssl_object``, say)."""
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        options.setdefault("access_log", False)
        self.config = Config(app, http=http, **options)
        self.state = ServerState(self.config, app, self.loop)
        self.transport = MemoryTransport(peer=peer)
        self.transport._extra.update(transport_extra or {})
        self.protocol = connection_factory(self.state)()
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        """Bytes from the client, to whichever protocol has the transport now (an HTTP/1.1
        connection may have handed it to HTTP/2 or a WebSocket)."""
        protocol = self.transport.protocol
        assert protocol is not None
        protocol.data_received(data)  # type: ignore[attr-defined]

    def settle(self, timeout: float = 5.0) -> None:
        """Run the loop until no request task is pending (or the deadline passes)."""

        async def wait() -> None:
            deadline = self.loop.time() + timeout
            await asyncio.sleep(0)
            # Wait on the tasks themselves, not on the active-request counter: a test may
            # set the counter to stand for requests that are not running here.
            while self.loop.time() < deadline:
                tasks = list(self.state.tasks.values())
                if not tasks:
                    break
                await asyncio.wait(tasks, timeout=deadline - self.loop.time())
            for _ in range(3):
                await asyncio.sleep(0)

        self.loop.run_until_complete(wait())

    def close(self) -> None:
        for task in list(self.state.tasks.values()):
            task.cancel()
        self.settle(1.0)
        self.loop.close()
        asyncio.set_event_loop(None)


def serve(app: Any, http: str, *reads: bytes, eof: bool = False, **options: Any) -> Harness:
    """A harness for ``app`` fed ``reads`` one by one, settled after each, then an EOF
    from the client if ``eof`` (and the connection is still open)."""
    h = Harness(app, http=http, **options)
    for data in reads:
        h.feed(data)
        h.settle(0.5)
    if eof and not h.transport.closed:
        h.protocol.eof_received()
        h.settle(0.5)
    return h


def responses(data: bytes) -> list[bytes]:
    """Split a byte stream of Content-Length framed responses into status lines + bodies."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out
