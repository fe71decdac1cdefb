"""One WebSocket connection as the ASGI app sees it, whatever library frames it.

:class:`WSConnection` is the asyncio protocol a connection switches to once the HTTP
protocol has parsed a request asking for a WebSocket (``HTTPConnection.upgrade``). It
owns the ASGI websocket cycle: the ``websocket.connect`` the app answers with
``websocket.accept`` (subprotocol, extra headers), ``websocket.close`` (403 before the
handshake) or the ``websocket.http.response`` denial extension; ``receive``/``send`` of
text and bytes; close codes both ways; and the server's duties around it:

- backpressure: received messages queue for the app up to ``--ws-max-queue``, then
  reading from the socket pauses until the app catches up; ``send`` waits while the
  transport's write buffer is full;
- keepalive: a ping every ``--ws-ping-interval`` from the worker's once-a-second clock
  (``check_idle``; no timer per connection), a peer silent past ``--ws-ping-timeout``
  is closed with 1011;
- graceful shutdown: ``shutdown()`` closes with ``state.close_code`` (1001 going away,
  1012 restart), tells the app through ``websocket.disconnect`` and lets it finish
  within the server's deadline.

A subclass (an adapter) only frames: :meth:`open_engine` checks the handshake,
:meth:`accept_response` makes the 101, :meth:`feed` turns bytes into :meth:`on_message`,
:meth:`on_pong`, :meth:`on_close` and :meth:`on_failure` calls, and ``send_*`` write
frames. HTTP answers instead of a handshake (403, 500, 503, the app's denial) are
written here, the same for both.

Errors of the app (a message in the wrong order, anything after its close) are raised to
the app as RuntimeError; ``send`` after the peer has gone raises :class:`ClientDisconnected`
(an OSError, ASGI spec 2.4). Neither reaches the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from time import perf_counter
from typing import Any

from asgictl.protocols.asgi import ASGI_VERSION, ClientDisconnected
from asgictl.protocols.flow import FlowControlled
from asgictl.protocols.http.fields import InvalidField, check_fields
from asgictl.protocols.http.response import STATUS_LINES, simple_response
from asgictl.protocols.state import ServerState
from asgictl.protocols.websockets.handshake import HandshakeRefused, check_handshake

logger = logging.getLogger("asgictl.error")

# Phases of a connection, from the app's side.
CONNECTING = 0  # the app has not answered the handshake yet
OPEN = 1  # accepted: messages flow both ways
DENYING = 2  # the app answers with its own HTTP response (websocket.http.response)
CLOSING = 3  # a close frame went out (app, shutdown, error): waiting for the peer's
CLOSED = 4  # nothing more goes out

#: After the server sends a close frame, how long the peer has to answer it before the
#: TCP connection is dropped (a dead peer must not hold a worker's shutdown).
CLOSE_TIMEOUT = 5.0
#: Bytes a client may send before the app accepted (it should send none) before
#: reading pauses until then.
EARLY_LIMIT = 64 * 1024

EXTENSIONS: dict[str, dict[str, Any]] = {"websocket.http.response": {}}
_CONNECT = {"type": "websocket.connect"}
_HANDSHAKE_MESSAGES = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})
_OPEN_MESSAGES = frozenset({"websocket.send", "websocket.close"})
_DENY_MESSAGES = frozenset({"websocket.http.response.body"})
_ALL_MESSAGES = _HANDSHAKE_MESSAGES | _OPEN_MESSAGES | _DENY_MESSAGES
_CLOSE_REASONS = {1001: "server shutting down", 1012: "server restarting"}


def websocket_scope(http_scope: dict[str, Any]) -> dict[str, Any]:
    """The ASGI websocket scope of an upgrade request, from its (already checked) HTTP scope."""
    headers = http_scope["headers"]
    subprotocols = [
        token.strip()
        for name, value in headers
        if name == b"sec-websocket-protocol"
        for token in value.decode("latin-1").split(",")
        if token.strip()
    ]
    return {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": http_scope["http_version"],
        "scheme": "wss" if http_scope["scheme"] == "https" else "ws",
        "server": http_scope["server"],
        "client": http_scope["client"],
        "root_path": http_scope["root_path"],
        "path": http_scope["path"],
        "raw_path": http_scope["raw_path"],
        "query_string": http_scope["query_string"],
        "headers": headers,
        "subprotocols": subprotocols,
        "state": http_scope["state"],
        "extensions": EXTENSIONS,
    }


class WSConnection(FlowControlled):
    __slots__ = (
        "app_closed",
        "app_running",
        "close_timer",
        "closing",
        "connect_sent",
        "deny_head",
        "deny_length",
        "disconnect",
        "early",
        "engine_headers",
        "last_ping",
        "messages",
        "opened_at",
        "phase",
        "ping_payload",
        "ping_sent_at",
        "scope",
        "state",
        "waiter",
    )

    def __init__(self, state: ServerState, http_scope: dict[str, Any]) -> None:
        """``http_scope``: the HTTP scope of the request that asked for the WebSocket
        (already checked by the HTTP protocol); the websocket scope is built from it."""
        super().__init__(state.loop)
        self.state = state
        self.scope = websocket_scope(http_scope)
        self.phase = CONNECTING
        #: the handshake fields the framing library checks, when they are not the scope's
        #: (a WebSocket over HTTP/2 has no Upgrade, Connection or Sec-WebSocket-Key)
        self.engine_headers: list[tuple[bytes, bytes]] | None = None
        self.messages: deque[dict[str, Any]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.connect_sent = False
        #: the websocket.disconnect message, once the connection is over for the app
        self.disconnect: dict[str, Any] | None = None
        #: the app sent its close (or completed its HTTP answer): nothing more from it
        self.app_closed = False
        #: bytes received before the app accepted, fed to the engine after the 101
        self.early = b""
        self.deny_head: bytes | None = None
        self.deny_length = False
        self.closing = False
        #: the app runs (the server's shutdown treats the connection as busy)
        self.app_running = False
        self.ping_payload: bytes | None = None
        self.ping_sent_at: float | None = None
        self.last_ping = 0.0
        self.close_timer: asyncio.TimerHandle | None = None
        #: time.perf_counter() of the handshake request (the access line's duration)
        self.opened_at = perf_counter() if state.timed else 0.0

    # ------------------------------------------------------------ adapter interface

    def open_engine(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """Set up the framing library for this handshake request (a canonical one, built
        by ``check_handshake`` from a request that passed it); None if the library takes
        it, else the complete HTTP response refusing it."""
        raise NotImplementedError

    def accept_response(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The 101 response (without the server's default headers); the engine is OPEN after."""
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Bytes from the peer (phase OPEN or CLOSING)."""
        raise NotImplementedError

    def send_text(self, text: str) -> None:
        raise NotImplementedError

    def send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def send_close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def send_ping(self, payload: bytes) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ asyncio events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections.add(self)
        self.last_ping = self.loop.time()

    def handshake(self, trailing: bytes) -> None:
        """Start: check the handshake and run the app (called once, by the HTTP protocol)."""
        state = self.state
        try:
            # Over HTTP/2 the library is shown an HTTP/1.1 handshake (see http2/websocket.py).
            request = self.engine_headers or self.scope["headers"]
            fields = check_handshake(request, state.ws_per_message_deflate)
        except HandshakeRefused as refused:
            body = f"Invalid WebSocket handshake: {refused.reason}\n".encode()
            self._answer_http(simple_response(refused.status, body, state.default_headers + refused.extra))
            return
        refusal = self.open_engine(b"/", fields)
        if refusal is not None:
            self._answer_http(refusal)
            return
        self.early = trailing
        state.total_requests += 1
        state.active_requests += 1
        if state.limit_concurrency is not None and state.over_capacity():
            state.active_requests -= 1
            self._answer_http(simple_response(503, b"Service Unavailable", state.default_headers))
            return
        self.app_running = True
        state.start_task(self, state.app)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is OPEN or phase is CLOSING:
            self.feed(data)
        elif phase is CONNECTING or phase is DENYING:
            # A client must wait for the 101; keep what it sent early, bounded.
            self.early += data
            if len(self.early) > EARLY_LIMIT:
                self.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # a half-closed WebSocket is over: close (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.phase = CLOSED
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        # Without a close frame from the peer: 1006, abnormal closure.
        self.set_disconnect(1006, "")
        self.release_drain()

    # ------------------------------------------------------------ from the adapters

    def on_message(self, data: str | bytes) -> None:
        """A complete message from the peer."""
        if type(data) is str:
            message = {"type": "websocket.receive", "text": data}
        else:
            message = {"type": "websocket.receive", "bytes": data}
        messages = self.messages
        messages.append(message)
        if len(messages) >= self.state.ws_max_queue:
            self.pause_reading()  # the app fell behind: let TCP push back on the peer
        self.wake()

    def on_pong(self, payload: bytes) -> None:
        if payload == self.ping_payload:
            self.ping_payload = None
            self.ping_sent_at = None

    def on_close(self, code: int, reason: str) -> None:
        """The peer's close frame arrived (the adapter answered it and closes the TCP)."""
        self.phase = CLOSED
        self.set_disconnect(code, reason)

    def on_failure(self, code: int, reason: str) -> None:
        """The adapter failed the connection (protocol error, 1007, 1009) and closes it."""
        self.phase = CLOSED
        self.set_disconnect(code, reason)

    def set_disconnect(self, code: int, reason: str) -> None:
        if self.disconnect is None:
            # int(): the libraries hand out IntEnum members; the app gets plain ints.
            self.disconnect = {"type": "websocket.disconnect", "code": int(code), "reason": reason}
            self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ the app's side

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            self.app_done(None, quiet=True)
        except BaseException as exc:
            self.app_done(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self.app_done(None)
        finally:
            state = self.state
            state.active_requests -= 1
            state.tasks.pop(self, None)  # kept there by state.start_task
            self.app_running = False

    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return _CONNECT
        while True:
            messages = self.messages
            if messages:
                message = messages.popleft()
                if self.read_paused and len(messages) < self.state.ws_max_queue and not self.early:
                    self.resume_reading()
                return message
            if self.disconnect is not None:
                return self.disconnect
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.app_closed:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}', after the application closed the WebSocket."
            )
        if self.disconnect is not None or self.transport.is_closing():
            # The peer left, or the server closed under the app (shutdown, ping timeout).
            if kind == "websocket.close":
                self.app_closed = True  # a close after the fact is no error
                return
            if kind in _ALL_MESSAGES:
                raise ClientDisconnected("the WebSocket connection is closed")
            raise RuntimeError(f"Unexpected ASGI message '{kind}' on a WebSocket.")
        phase = self.phase
        if phase is CONNECTING:
            allowed = _HANDSHAKE_MESSAGES
        elif phase is DENYING:
            allowed = _DENY_MESSAGES
        else:
            allowed = _OPEN_MESSAGES
        if kind not in allowed:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}', expected one of {', '.join(sorted(allowed))}."
            )
        if phase is OPEN:
            if kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    self.send_text(text)
                else:
                    data = message.get("bytes")
                    if data is None:
                        raise TypeError("websocket.send needs 'text' or 'bytes'")
                    self.send_bytes(data)
                if self.write_paused:
                    await self.drain()
            else:
                self.app_closed = True
                self.close(message.get("code") or 1000, message.get("reason") or "")
        elif phase is CONNECTING:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                # Closed before the handshake: HTTP 403 (ASGI spec).
                self.app_closed = True
                self._log_access(403)
                self._answer_http(simple_response(403, b"", self.state.default_headers))
            else:
                self._deny_start(message)
        else:
            self._deny_body(message)

    def app_done(self, exc: BaseException | None, *, quiet: bool = False) -> None:
        """The app returned (or raised): finish the connection as it left it."""
        cancelled = isinstance(exc, asyncio.CancelledError)
        if exc is not None and not cancelled:
            logger.error("Exception in ASGI application\n", exc_info=exc)
        if self.transport.is_closing():
            return
        phase = self.phase
        if cancelled:
            self.transport.abort()
        elif phase is CONNECTING:
            if exc is None and not quiet:
                logger.error("ASGI callable returned without sending handshake.")
            self._answer_http(simple_response(500, b"Internal Server Error", self.state.default_headers))
        elif phase is DENYING:
            self.transport.close()  # the response is incomplete: closing is the only signal left
        elif phase is OPEN:
            self.close(1011 if exc is not None else 1000, "")

    # ------------------------------------------------------------ server side

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and wait (bounded) for the peer's."""
        self.phase = CLOSING
        self.send_close(code, reason)
        if self.close_timer is None and not self.transport.is_closing():
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        if not self.transport.is_closing() or self.phase is not CLOSED:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful stop: close with 1001 (going away) or 1012 (restart); the app is told."""
        self.closing = True
        if self.transport.is_closing():
            return
        code = self.state.close_code
        phase = self.phase
        if phase is OPEN:
            self.set_disconnect(code, "")
            self.close(code, _CLOSE_REASONS.get(code, ""))
        elif phase is CONNECTING:
            self.set_disconnect(code, "")
            self._answer_http(simple_response(503, b"Service Unavailable", self.state.default_headers))
        # DENYING: the app's response finishes (or the server's deadline cuts it);
        # CLOSING: the close handshake is under way.

    def busy(self) -> bool:
        """The app is running (shutdown then lets it finish)."""
        return self.app_running

    def check_idle(self, now: float) -> None:
        """Keepalive and the send deadline, from the worker's once-a-second clock."""
        state = self.state
        if self.check_send(now, state.timeout_send) or self.phase is not OPEN:
            return
        interval = state.ws_ping_interval
        if not interval:
            return
        sent = self.ping_sent_at
        if sent is not None:
            timeout = state.ws_ping_timeout
            if timeout and now - sent >= timeout:
                logger.debug("WebSocket keepalive ping timeout: closing")
                self.set_disconnect(1011, "keepalive ping timeout")
                self.close(1011, "keepalive ping timeout")
        elif now - self.last_ping >= interval:
            self.last_ping = now
            self.ping_sent_at = now
            self.ping_payload = os.urandom(4)
            self.send_ping(self.ping_payload)

    # ------------------------------------------------------------ helpers

    def _accept(self, message: dict[str, Any]) -> None:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self.scope["subprotocols"]:
            # A client must fail the connection on one it did not offer (RFC 6455 4.1).
            raise RuntimeError(f"Subprotocol {subprotocol!r} was not offered by the client")
        headers = list(message.get("headers") or ())
        check_fields(headers)
        response = self.accept_response(subprotocol, headers)
        # The server's own headers (date, server, --header) go after the status line.
        end = response.index(b"\r\n") + 2
        self.transport.write(response[:end] + self.state.default_headers + response[end:])
        self.phase = OPEN
        self._log_access(101)
        early, self.early = self.early, b""
        if early:
            self.feed(early)
        if len(self.messages) < self.state.ws_max_queue:
            self.resume_reading()

    def _deny_start(self, message: dict[str, Any]) -> None:
        status = message.get("status", 200)
        lines = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
        self.deny_length = False
        headers = [(bytes(name), bytes(value)) for name, value in message.get("headers") or ()]
        check_fields(headers)  # the same grammar as any response's (RFC 9110 5.1, 5.5)
        for name, value in headers:
            name = name.lower()
            if name in (b"connection", b"transfer-encoding"):
                continue  # the server frames this response: it is the last on the connection
            if name == b"content-length":
                if self.deny_length or not value.isdigit():
                    raise InvalidField(f"Invalid or repeated Content-Length {value!r} (RFC 9110 8.6)")
                self.deny_length = True
            lines.append(b"%b: %b\r\n" % (name, value))
        lines.append(self.state.default_headers)
        lines.append(b"connection: close\r\n")
        # The blank line goes out with the first body, after a content-length if needed.
        self.deny_head = b"".join(lines)
        self.phase = DENYING
        self._log_access(status)

    def _deny_body(self, message: dict[str, Any]) -> None:
        body = bytes(message.get("body", b""))
        more = message.get("more_body", False)
        head = self.deny_head
        if head is not None:
            self.deny_head = None
            if not self.deny_length and not more:
                head += b"content-length: %d\r\n" % len(body)
            # Without a length (a streamed body), the body ends when the connection
            # closes, which HTTP/1.1 allows for a response with connection: close.
            self.transport.write(head + b"\r\n" + body)
        elif body:
            self.transport.write(body)
        if not more:
            self.app_closed = True
            self.phase = CLOSED
            self.transport.close()

    def _answer_http(self, response: bytes) -> None:
        """An HTTP answer instead of a handshake; the connection ends with it."""
        self.phase = CLOSED
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()

    def _log_access(self, status: int) -> None:
        access = self.state.access_log
        if access is not None:
            access.websocket(self.scope, status, self.opened_at)
