"""One HTTP/2 connection: streams, limits, floods, flow control and shutdown.

:class:`HTTP2Connection` is the asyncio protocol a connection switches to once it is
known to speak HTTP/2: TLS ALPN ``h2``, the client preface at the start of a cleartext
connection (prior knowledge), or an accepted ``Upgrade: h2c``. The framing engine (the
``h2`` library, :mod:`~asgictl.protocols.http2.h2_engine`) turns bytes into calls here
(the engine seam, :mod:`~asgictl.protocols.http2.engine`) and frames what this class
asks for; everything else is here, once:

- each request stream becomes an ASGI ``http`` scope (``http_version`` "2",
  ``:authority`` as ``host``) run by the same :class:`HTTPCycle` as HTTP/1.1, with an
  :class:`~asgictl.protocols.http2.stream.H2Stream` as its host; an extended CONNECT
  with ``:protocol websocket`` (RFC 8441) runs the ASGI websocket cycle over the stream;
- the request checks of RFC 9113 8.2-8.3 (a malformed request is a stream error
  PROTOCOL_ERROR) and the shared strictness policy of HTTP/1.1 (``strict.check_head``);
- limits: SETTINGS_MAX_CONCURRENT_STREAMS, the header list size (the HTTP/1.1 head
  budget), ``--limit-concurrency`` (503), ``--limit-request-body`` (413 or a reset);
- floods (rapid reset, empty DATA, SETTINGS, PING and PRIORITY floods, control frames
  piling up unread) end the connection with GOAWAY ENHANCE_YOUR_CALM; the engine
  answers CONTINUATION floods, HPACK bombs and window overflows with the RFC's error;
- deadlines from the worker's clock (``check_idle``): a request head that does not
  come whole (``--timeout-header-read``: a header block left open, or, for the first
  request, the preface and its HEADERS, the clock running from accept), an idle
  connection (``--timeout-keep-alive``), a stream whose body stops coming
  (``--timeout-body-read``), a peer that takes no bytes or never opens its window
  (``--timeout-send``);
- graceful shutdown (RFC 9113 6.8), in its own base class
  (:class:`~asgictl.protocols.http2.shutdown.GoawayShutdown`): GOAWAY with the last
  possible stream id and a PING; at the PING's answer, GOAWAY with the real last stream
  id; streams in flight finish, new ones are refused.

Frames are written once per read (the engine's output batched) or once per loop
iteration for what the apps send in between.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

from asgictl.protocols.flow import FlowControlled
from asgictl.protocols.http.connection import service_unavailable
from asgictl.protocols.http.cycle import HTTPCycle
from asgictl.protocols.http.strict import InvalidRequest
from asgictl.protocols.http2.engine import (
    CANCEL,
    ENABLE_CONNECT_PROTOCOL,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Engine,
    EngineError,
)
from asgictl.protocols.http2.request import MalformedRequest, build_scope, check_trailers
from asgictl.protocols.http2.shutdown import GoawayShutdown
from asgictl.protocols.http2.stream import H2Stream
from asgictl.protocols.http2.websocket import start_websocket
from asgictl.protocols.state import ServerState

logger = logging.getLogger("asgictl.error")

#: Request body a stream may have in flight, and the whole connection (bounded buffering).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
#: Flood budgets, per second of the worker's clock (a legitimate client stays far below).
MAX_RESETS = 200  # streams the client opened and reset before their response (rapid reset)
MAX_EMPTY_DATA = 100  # DATA frames with neither payload nor END_STREAM
MAX_CONTROL = 200  # SETTINGS and PING frames
MAX_PRIORITY = 1000  # PRIORITY frames
#: Frames owed an ACK while the peer does not read what is written (bounded ACK queue).
MAX_UNREAD_ACKS = 64


class HTTP2Connection(GoawayShutdown, FlowControlled):
    __slots__ = (
        "acks_unread",
        "awaiting_request",
        "checked",
        "client",
        "closing",
        "control",
        "empty_data",
        "engine",
        "flush_handle",
        "goaway_ping",
        "goaway_timer",
        "idle_since",
        "last_stream_id",
        "priority",
        "resets",
        "running",
        "scheme",
        "server",
        "silent",
        "state",
        "stopping",
        "streams",
        "trusted",
        "headers_since",
    )

    def __init__(self, state: ServerState) -> None:
        super().__init__(state.loop)
        self.state = state
        self.server: Any = None
        self.client: Any = None
        self.scheme = "http"
        self.trusted = False
        self.engine: Engine = None  # type: ignore[assignment]
        self.streams: dict[int, H2Stream] = {}
        #: request heads that passed the checks (see request.build_scope)
        self.checked: dict[tuple[tuple[bytes, bytes], ...], Any] = {}
        #: no new streams (shutdown, GOAWAY sent or received)
        self.closing = False
        self.idle_since: float | None = None
        self.flush_handle: asyncio.Handle | None = None
        #: the shutdown's first GOAWAY went out with this PING payload; None otherwise
        self.goaway_ping: bytes | None = None
        #: shutdown() was called (the server may set ``closing`` before it does)
        self.stopping = False
        #: the final GOAWAY of an idle connection went out: nothing more is written
        self.silent = False
        #: the shutdown's wait for the streams in flight (see shutdown)
        self.goaway_timer: asyncio.TimerHandle | None = None
        #: streams above this id are refused (the second GOAWAY's last stream id)
        self.last_stream_id = 2**31 - 1
        self.resets = self.empty_data = self.control = self.priority = self.acks_unread = 0
        #: since when a request head has been arriving (set by the handover to the
        #: time of accept: the preface and the first HEADERS are the first head)
        self.headers_since: float | None = None
        #: no request has come yet
        self.awaiting_request = True
        #: apps running for this connection's streams, reset ones included: a stream
        #: reset by the client does not stop its app, so new streams are refused while
        #: this many run (the rapid-reset attack piles up apps, not streams)
        self.running = 0

    # ------------------------------------------------------------------ asyncio events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        state.connections.add(self)
        # server, client, scheme and trusted come from the HTTP/1.1 connection (handover).
        self.idle_since = self.loop.time()

    def _settings(self) -> dict[int, int]:
        state = self.state
        return {
            HEADER_TABLE_SIZE: 4096,
            ENABLE_PUSH: 0,
            MAX_CONCURRENT_STREAMS: state.h2_max_concurrent_streams,
            INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            MAX_FRAME_SIZE: 16384,
            MAX_HEADER_LIST_SIZE: state.limit_head,
            ENABLE_CONNECT_PROTOCOL: 1 if state.ws_protocol is not None else 0,
        }

    def start(self, data: bytes) -> None:
        """Begin with the server's SETTINGS; ``data``: the first bytes (from the preface
        on) that the HTTP/1.1 protocol read."""
        self.engine = self.state.h2_engine(self, self._settings(), CONNECTION_WINDOW)
        self._begin(data)

    def start_upgrade(self, settings: bytes, scope: dict[str, Any], body: bytes, data: bytes) -> None:
        """``Upgrade: h2c`` was accepted (the 101 is written): the request that asked is
        stream 1, its body ``body``, complete; ``settings`` its HTTP2-Settings, ``data``
        what followed it (the client preface on)."""
        self.engine = self.state.h2_engine(self, self._settings(), CONNECTION_WINDOW, upgrade=settings)
        self.awaiting_request = False
        self.headers_since = None
        scope["http_version"] = "2"
        stream = H2Stream(self, 1)
        stream.request_complete = True
        self._run(stream, scope, body)
        self._begin(data)

    def _begin(self, data: bytes) -> None:
        self.flush()
        if data:
            self.data_received(data)
        if self.state.shutting_down:
            # After the first bytes: the client's SETTINGS are acknowledged before the
            # GOAWAY, nothing after it (see close_if_done).
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        try:
            self.engine.receive(data)
        except EngineError as exc:
            logger.debug("HTTP/2 connection error %d: %s", exc.code, exc)
            self.abandon()
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # the peer is gone: close (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
            self.goaway_timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.gone()
        self.release_drain()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.acks_unread = 0

    # ------------------------------------------------------------ from the engine

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        state = self.state
        self.idle_since = None
        self.awaiting_request = False
        if self.transport.is_closing():
            return  # a connection error earlier in the same read
        if stream_id > self.last_stream_id or self.running >= state.h2_max_concurrent_streams:
            self.engine.reset(stream_id, REFUSED_STREAM)
            self._count_reset()  # a client that keeps opening past the limit floods too
            return
        try:
            scope, websocket = build_scope(self, headers)
        except MalformedRequest as exc:
            logger.debug("Malformed HTTP/2 request on stream %d: %s", stream_id, exc)
            self.engine.reset(stream_id, PROTOCOL_ERROR)
            return
        except InvalidRequest as exc:
            logger.debug("Invalid HTTP/2 request on stream %d: %s", stream_id, exc.reason)
            stream = H2Stream(self, stream_id)
            stream.request_complete = end_stream
            self.streams[stream_id] = stream
            stream.respond(exc.status, f"{exc.reason}\n".encode())
            return
        stream = H2Stream(self, stream_id)
        stream.request_complete = end_stream
        if websocket:
            self.streams[stream_id] = stream
            start_websocket(self, stream, scope)
            return
        self._run(stream, scope, None)

    def _run(self, stream: H2Stream, scope: dict[str, Any], body: bytes | None) -> None:
        """Run the app for a request stream; ``body``: its whole body, if already read."""
        state = self.state
        cycle = HTTPCycle(stream, scope, True, False)
        stream.cycle = cycle
        if body is not None or stream.request_complete:
            cycle.body = body or b""
            cycle.more_body = False
        self.streams[stream.stream_id] = stream
        state.total_requests += 1
        state.active_requests += 1
        app = state.app
        if state.limit_concurrency is not None and state.over_capacity():
            app = service_unavailable
        if state.timed:
            cycle.started_at = perf_counter()  # the loop's clock has 1 ms steps
        self.running += 1
        state.start_task(cycle, app).add_done_callback(self._app_returned)

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        if self.transport.is_closing():
            return
        stream = self.streams.get(stream_id)
        if not data and not end_stream:
            self.empty_data += 1
            if self.empty_data > MAX_EMPTY_DATA:
                self.calm("empty DATA frames")
                return
        if stream is None:
            self.engine.acknowledge(stream_id, flow_length)
            return
        tunnel = stream.tunnel
        if tunnel is not None:
            tunnel.feed(data, flow_length)
            if end_stream:
                stream.request_complete = True
                tunnel.eof()
            return
        stream.body_received(data, flow_length)
        limit = self.state.limit_body
        if limit is not None and stream.received > limit:
            self._body_too_large(stream)
            return
        if end_stream:
            self._end_of_request(stream)

    def on_trailers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A trailer section (ends the request): no pseudo-header fields, the field
        grammar of a header section (RFC 9113 8.1, 8.3); dropped (ASGI has no request
        trailers)."""
        stream = self.streams.get(stream_id)
        try:
            check_trailers(headers)
        except MalformedRequest as exc:
            logger.debug("Malformed HTTP/2 trailers on stream %d: %s", stream_id, exc)
            if stream is not None:
                stream.cancel(PROTOCOL_ERROR)
            elif not self.engine.reset(stream_id, PROTOCOL_ERROR):
                # Answered and closed both ways: no frame may go on that stream any more
                # (RFC 9113 5.1), the error can only be the connection's.
                self.fail(PROTOCOL_ERROR, "malformed trailers on a closed stream")
            return
        if stream is not None:
            self._end_of_request(stream)

    def on_reset(self, stream_id: int, code: int, remote: bool) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if remote and not stream.app_done:
            self._count_reset()
        stream.gone()

    def on_window_update(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream.outbox:
                stream.pump()
        else:
            self._pump_all()

    def on_settings(self, window_changed: bool) -> None:
        self._control_frame("SETTINGS")
        if window_changed:
            self._pump_all()

    def on_ping(self) -> None:
        self._control_frame("PING")

    def on_priority(self) -> None:
        self.priority += 1
        if self.priority > MAX_PRIORITY:
            self.calm("PRIORITY frames in bulk")

    def on_goaway(self, code: int) -> None:
        """The peer sends no new streams: finish those in flight, then close."""
        self.closing = True
        self.close_if_done()

    # ------------------------------------------------------------ for the streams

    def send_headers(self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        self.engine.send_headers(stream_id, fields, end_stream)
        self.schedule_flush()

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.engine.send_data(stream_id, data, end_stream)
        self.schedule_flush()

    def window(self, stream_id: int) -> int:
        return self.engine.window(stream_id)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.transport.is_closing():
            self.engine.acknowledge(stream_id, size)
            self.schedule_flush()

    def reset_stream(self, stream_id: int, code: int) -> None:
        self.streams.pop(stream_id, None)
        if not self.transport.is_closing():
            self.engine.reset(stream_id, code)
            self.schedule_flush()
        self.close_if_done()

    def stream_finished(self, stream: H2Stream) -> None:
        """The response of ``stream`` is on the wire."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        stream.give_back()
        # A request body still coming is read and dropped (its window given back), not
        # refused with RST_STREAM NO_ERROR: the rest of the request is still checked (a
        # malformed trailer section after an early response is a PROTOCOL_ERROR).
        if not self.streams:
            self.idle_since = self.loop.time()
        self.close_if_done()

    # ------------------------------------------------------------ writing

    def schedule_flush(self) -> None:
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        data = self.engine.data_to_send()
        if data and not self.transport.is_closing() and not self.silent:
            self.transport.write(data)

    # ------------------------------------------------------------ housekeeping

    def check_idle(self, now: float) -> None:
        """Once a second: the deadlines, and the flood budgets start over."""
        state = self.state
        self.resets = self.empty_data = self.control = self.priority = 0
        if self.check_send(now, state.timeout_send):
            return  # the peer took no bytes for --timeout-send: aborted
        head_open = self.awaiting_request or self.engine.headers_pending
        if head_open:
            if self.headers_since is None:
                self.headers_since = now
            elif now - self.headers_since >= state.timeout_header_read:
                if self.engine.headers_pending:
                    self.fail(PROTOCOL_ERROR, "header block not complete in time")
                else:
                    logger.debug("Closing HTTP/2 connection: no request head in time")
                    self.goaway_now()
                return
        else:
            self.headers_since = None
        since = self.idle_since
        idle = since is not None and not head_open and not self.streams
        if idle and now - since >= state.keep_alive_timeout:  # type: ignore[operator]
            self.goaway_now()
            return
        timeout_send = state.timeout_send
        for stream in list(self.streams.values()):
            stalled = stream.stalled_since
            if stalled is not None and timeout_send and now - stalled >= timeout_send:
                logger.debug("HTTP/2 stream %d: the peer's window stayed closed", stream.stream_id)
                stream.cancel(CANCEL)
            elif not stream.request_complete and not stream.app_done:
                mark = stream.body_mark
                if mark is None or mark[0] != stream.received:
                    stream.body_mark = (stream.received, now)
                elif now - mark[1] >= state.timeout_body_read:
                    logger.debug("HTTP/2 stream %d: request body not received in time", stream.stream_id)
                    stream.cancel(CANCEL)
        self.flush()

    def busy(self) -> bool:
        """Streams are in flight."""
        return bool(self.streams)

    def calm(self, reason: str) -> None:
        """A flood: GOAWAY ENHANCE_YOUR_CALM and close (RFC 9113 5.4.1)."""
        self.fail(ENHANCE_YOUR_CALM, reason)

    def fail(self, code: int, reason: str) -> None:
        logger.warning("Closing HTTP/2 connection from %s: %s", _peer(self.client), reason)
        if not self.transport.is_closing():
            self.engine.goaway(code, self.engine.highest_stream_id)
            self.abandon()

    def abandon(self) -> None:
        """A connection error: write what is queued (the GOAWAY), cancel the streams, close."""
        self.closing = True
        self.flush()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.gone()
        self.transport.close()

    # ------------------------------------------------------------ helpers

    def _app_returned(self, task: asyncio.Task[Any]) -> None:
        self.running -= 1

    def _count_reset(self) -> None:
        self.resets += 1
        if self.resets > MAX_RESETS:
            self.calm("streams opened and reset in a loop (rapid reset)")

    def _control_frame(self, kind: str) -> None:
        self.control += 1
        if self.control > MAX_CONTROL:
            self.calm(f"{kind} flood")
        elif self.write_paused:
            # The peer does not read its ACKs: they pile up in our write buffer.
            self.acks_unread += 1
            if self.acks_unread > MAX_UNREAD_ACKS:
                self.calm(f"{kind} frames while not reading the answers")

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outbox:
                stream.pump()

    def _end_of_request(self, stream: H2Stream) -> None:
        stream.request_complete = True
        cycle = stream.cycle
        if cycle is not None:
            cycle.more_body = False
            cycle.wake()

    def _body_too_large(self, stream: H2Stream) -> None:
        """A body past --limit-request-body: 413 if nothing was answered yet, and the
        stream is reset (the rest is not read); the app sees a disconnect."""
        cycle = stream.cycle
        if cycle is not None and not cycle.response_started:
            cycle.response_started = cycle.response_complete = True
            stream.respond(413, b"Request body too large\n")
        stream.cancel(CANCEL)


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"
