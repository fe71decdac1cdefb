"""Helpers for WebSocket tests: a client's frames by hand, the server's frames parsed, and
an in-memory harness whose transport follows ``set_protocol`` (the HTTP -> WebSocket
hand-off), driven by polling a condition under a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import Any

from memory import Harness, MemoryTransport

WS_IMPLS = ["websockets", "wsproto"]

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def handshake(path: bytes = b"/", extra: bytes = b"", key: bytes = KEY) -> bytes:
    return (
        b"GET " + path + b" HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(data: str, fin: bool = True) -> bytes:
    return frame(TEXT, data.encode(), fin)


def close(code: int | None = 1000, reason: str = "") -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason.encode())


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked server frames in ``data``."""
    out = []
    while len(data) >= 2:
        opcode = data[0] & 0x0F
        n = data[1] & 0x7F
        pos = 2
        if n == 126:
            n = struct.unpack("!H", data[2:4])[0]
            pos = 4
        elif n == 127:
            n = struct.unpack("!Q", data[2:10])[0]
            pos = 10
        out.append((opcode, data[pos : pos + n]))
        data = data[pos + n :]
    return out


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class SwitchingTransport(MemoryTransport):
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[return-value]


class WSHarness(Harness):
    """``Harness`` over a transport that follows the hand-off; ``feed`` goes to whichever
    protocol the transport has now."""

    def __init__(self, app: Any, ws: str, http: str = "httptools", **options: Any) -> None:
        super().__init__(app, http=http, ws=ws, **options)
        self.transport = SwitchingTransport()
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        assert self.transport.protocol is not None
        self.transport.protocol.data_received(data)  # type: ignore[attr-defined]

    @property
    def ws(self) -> Any:
        return self.transport.protocol

    def run_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async def poll() -> None:
            deadline = self.loop.time() + timeout
            while not condition():
                if self.loop.time() > deadline:
                    raise AssertionError("condition not met in time")
                await asyncio.sleep(0.001)

        self.loop.run_until_complete(poll())

    def frames(self) -> list[tuple[int, bytes]]:
        head, rest = split_response(self.transport.data)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return parse_frames(rest)
