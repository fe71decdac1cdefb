"""The engine seam: what an HTTP/2 framing library is to the connection.

An engine turns bytes into calls on the :class:`HTTP2Connection` (``on_request``,
``on_data``, ``on_trailers``, ``on_reset``, ``on_window_update``, ``on_settings``,
``on_ping``, ``on_ping_ack``, ``on_priority``, ``on_goaway``) and the connection's
requests into frames. Everything else (streams as ASGI cycles, checks, limits, floods,
deadlines, shutdown) is the connection's, once for every engine. The error codes and
SETTINGS identifiers both sides of the seam speak are defined here.
"""

from __future__ import annotations

from typing import Protocol

# Error codes (RFC 9113 7), in RST_STREAM and GOAWAY frames whatever the engine.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers (RFC 9113 6.5.2, RFC 8441 3).
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8


class EngineError(Exception):
    """A connection error: GOAWAY with ``code`` is queued, nothing more is read."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Engine(Protocol):
    """Built as ``Engine(conn, settings, connection_window, upgrade=None)``: the local
    SETTINGS (id -> value), the connection receive window to open, and for an accepted
    ``Upgrade: h2c`` the HTTP2-Settings value (stream 1 is then the request)."""

    def receive(self, data: bytes) -> None:
        """Parse ``data``, calling the connection per event; EngineError for a connection error."""

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """A response head (``:status`` first, 1xx included) or a trailer section."""

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """DATA that fits :meth:`window`."""

    def window(self, stream_id: int) -> int:
        """DATA bytes the peer accepts on the stream now, at most one frame."""

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` bytes of the stream's DATA were consumed: reopen the windows."""

    def reset(self, stream_id: int, code: int) -> bool:
        """RST_STREAM; False if the stream is already closed both ways."""

    def goaway(self, code: int, last_stream_id: int) -> None:
        """GOAWAY; with NO_ERROR the streams up to ``last_stream_id`` may still finish."""

    def ping(self, payload: bytes) -> None:
        """A PING whose ACK comes back as ``on_ping_ack(payload)``."""

    @property
    def headers_pending(self) -> bool:
        """A header block is open (HEADERS without END_HEADERS so far)."""

    @property
    def highest_stream_id(self) -> int:
        """The highest stream id the client opened."""

    def data_to_send(self) -> bytes:
        """The frames queued to be written, taken out."""
