"""The wire format between a worker and the master's broker, on their Unix socket pair.

One frame is a 7-byte header, the channel name, then the data::

    !I  data length      (bytes; at most MAX_DATA)
    !H  channel length   (bytes of UTF-8; at most MAX_CHANNEL)
    !B  kind             (below)
    channel bytes, data bytes

Binary and length-prefixed so neither side scans for delimiters or decodes what it only
forwards: the master relays a publication by slicing the received buffer, without
looking at the data, and the kind says whether the subscriber gets ``str`` or ``bytes``.

Kinds, worker -> master: PUB_BYTES / PUB_TEXT (a publication), SUB (data: a 4-byte
request id, acknowledged by an ACK with the same id once the master routes the channel
to this worker), UNSUB. Master -> worker: PUB_BYTES / PUB_TEXT, ACK, and GAP (the master
dropped frames for this worker because it fell behind; data: the count, 4 bytes).

This module is shared by both ends and imports nothing else of asgictl but the limits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from asgictl.pubsub.core import MAX_CHANNEL, MAX_DATA

HEADER = struct.Struct("!IHB")
HEADER_SIZE = HEADER.size
U32 = struct.Struct("!I")

PUB_BYTES = 1
PUB_TEXT = 2
SUB = 3
UNSUB = 4
ACK = 5
GAP = 6
KINDS = frozenset({PUB_BYTES, PUB_TEXT, SUB, UNSUB, ACK, GAP})


class FrameError(ValueError):
    """The peer sent something that is not a frame: the connection cannot be trusted."""


def encode(kind: int, channel: bytes, data: bytes = b"") -> bytes:
    return b"".join((HEADER.pack(len(data), len(channel), kind), channel, data))


def encode_publish(channel: bytes, data: str | bytes) -> bytes:
    if isinstance(data, str):
        raw = data.encode("utf-8")
        kind = PUB_TEXT
    else:
        raw = bytes(data)
        kind = PUB_BYTES
    if len(raw) > MAX_DATA:
        raise ValueError(f"pub/sub messages are limited to {MAX_DATA} bytes")
    return encode(kind, channel, raw)


def frames(buf: bytes | bytearray | memoryview, start: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Complete frames in ``buf`` from ``start``: ``(kind, channel_start, data_start, end)``
    offsets, so the caller slices only what it needs. Stops at the first incomplete frame
    (its offset is the last ``end`` yielded, or ``start``). Raises FrameError on a header
    no honest peer would send."""
    size = len(buf)
    pos = start
    unpack = HEADER.unpack_from
    while size - pos >= HEADER_SIZE:
        data_len, chan_len, kind = unpack(buf, pos)
        if kind not in KINDS or data_len > MAX_DATA or chan_len > MAX_CHANNEL:
            raise FrameError(f"bad pub/sub frame header (kind {kind}, lengths {chan_len}/{data_len})")
        chan_start = pos + HEADER_SIZE
        data_start = chan_start + chan_len
        end = data_start + data_len
        if end > size:
            return
        yield kind, chan_start, data_start, end
        pos = end
