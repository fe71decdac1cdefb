"""One HTTP/1.1 connection: everything about it that does not depend on the parser.

:class:`HTTPConnection` is the asyncio protocol shared by the httptools and h11 adapters.
An adapter only turns bytes into four calls: :meth:`begin_request` (a complete head),
:meth:`request_body`, :meth:`end_of_request` and :meth:`parse_error`. This class owns the
rest: building the ASGI scope from per-connection pieces, running one
:class:`~asgictl.protocols.http.cycle.HTTPCycle` at a time and queueing pipelined
requests behind it, flow control both ways, keep-alive, and graceful shutdown.

Reading is paused while a request waits in the pipeline or while unread request body
piles up past a high-water mark, so a fast client cannot make the server buffer without
bound; writing waits (``drain``) while the transport's buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any
from urllib.parse import unquote

from asgictl.protocols.asgi import ASGI_VERSION
from asgictl.protocols.http.cycle import HTTPCycle
from asgictl.protocols.http.fields import list_tokens
from asgictl.protocols.http.framing import ResponseFraming
from asgictl.protocols.http.handover import PREFACE, hand_over, switch_to_http2, upgrade_h2c
from asgictl.protocols.http.response import simple_response
from asgictl.protocols.http.strict import (
    BAD_PREFACE_REASON,
    BAD_PREFACE_STATUS,
    EXPECT_CONTINUE,
    FORWARDED,
    HTTP2_REASON,
    HTTP2_STATUS,
    KEEP_ALIVE,
    check_head,
)
from asgictl.protocols.state import ServerState

logger = logging.getLogger("asgictl.error")

TRACE = 5

#: Unread request body past this many bytes pauses reading from the socket.
HIGH_WATER = 64 * 1024
#: On a graceful stop, how long a connection whose last response promised keep-alive
#: (or that is idle) may still deliver the request its client sent meanwhile; that
#: request is answered with Connection: close.
CLOSE_GRACE = 0.25

EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.trailers": {},
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}

#: What every HTTP scope starts from: begin_request copies it and sets every entry but
#: type, asgi and extensions (placeholders keep the copy at its final size).
SCOPE_TEMPLATE: dict[str, Any] = {
    "type": "http",
    "asgi": ASGI_VERSION,
    "http_version": "1.1",
    "server": None,
    "client": None,
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "headers": None,
    "state": None,
    "extensions": EXTENSIONS,
}


async def service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": b"Service Unavailable"})


class HTTPConnection(ResponseFraming):
    __slots__ = (
        "_starting",
        "body_mark",
        "body_seen",
        "client",
        "head_bytes",
        "head_since",
        "closing",
        "read_eof",
        "cycle",
        "idle_since",
        "parsing",
        "pipeline",
        "preface",
        "proxied",
        "scheme",
        "server",
        "state",
        "trusted",
    )

    def __init__(self, state: ServerState) -> None:
        super().__init__(state.loop)
        self.state = state
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.trusted = False
        #: the cycle whose response is being written
        self.cycle: HTTPCycle | None = None
        #: the cycle whose request body is being read (a later one when pipelining)
        self.parsing: HTTPCycle | None = None
        self.pipeline: list[HTTPCycle] = []
        #: no more requests on this connection (shutdown, Connection: close, error)
        self.closing = False
        #: the client half-closed: answer what was received, then close
        self.read_eof = False
        #: bytes of the request head received so far (0 between requests)
        self.head_bytes = 0
        # A protocol is made when the connection is accepted, before a TLS handshake
        # (connection_made comes after it): the first head's clock starts here.
        accepted = state.loop.time()
        self.idle_since: float | None = accepted
        #: when the clock first saw a partial head (for --timeout-header-read)
        self.head_since: float | None = accepted
        #: request body bytes received, and the count the clock saw last with its time
        self.body_seen = 0
        self.body_mark: tuple[int, float] | None = None
        self._starting = False
        #: the first bytes while they may still be the HTTP/2 client preface (None once
        #: decided, or with --no-http2): the adapters look at it only then
        self.preface: bytes | None = b"" if state.h2_protocol is not None else None
        #: (client, server) of a PROXY protocol header, set before connection_made
        self.proxied: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ asyncio events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        state.connections.add(self)
        self.server, self.client, self.scheme, self.trusted = peer_info(transport, state)
        if self.proxied is not None:
            # The addresses a trusted proxy's PROXY header gave (the proxy itself is
            # what --forwarded-allow-ips judged).
            self.client, self.server = self.proxied
        if state.shutting_down:
            self.closing = True
        if state.trace:
            logger.log(TRACE, "%s - HTTP connection made", _peer(self.client, self.server))
        if self.preface is not None and self.scheme == "https":
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self.preface = None
                switch_to_http2(self, b"")  # ALPN chose HTTP/2 (RFC 9113 3.2)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self.state.trace:
            logger.log(TRACE, "%s - HTTP connection lost", _peer(self.client, self.server))
        self.closing = True
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.on_disconnect()
        self.pipeline.clear()
        self.parsing = None
        self.release_drain()

    def eof_received(self) -> bool | None:
        # A client may half-close after its last request: answer what is in progress,
        # then close. An idle connection closes at once.
        self.read_eof = True
        if self.parsing is not None or self.head_bytes:
            # The client stopped in the middle of a request: it will never be complete.
            self.parse_error(400, "incomplete request")
            return None
        if self.cycle is None and not self.pipeline and self.parsing is None:
            return None
        if self.cycle is not None:
            self.cycle.wake()  # a receive() waiting for more can only get http.disconnect now
        return True

    def sniff(self, data: bytes) -> bytes:
        """The adapters' first look at a connection's bytes: what HTTP/1.1 must parse, or
        b"" when it is (or may yet be) the HTTP/2 client preface (prior knowledge, RFC 9113
        3.3). Called only until that is decided, so it costs nothing per request. A
        preface that stalls half-way is a request head that does: --timeout-header-read
        cuts it, the clock running from accept."""
        data = self.preface + data if self.preface else data
        size = min(len(data), len(PREFACE))
        if data[:size] != PREFACE[:size]:
            self.preface = None
            self.head_bytes = 0  # the adapter counts these bytes again, as a head's
            return data
        if size < len(PREFACE):
            self.preface = data  # the preface may be split over reads
            self.head_bytes = size
            return b""
        self.preface = None
        switch_to_http2(self, data)
        return b""

    def busy(self) -> bool:
        """A request is in progress or queued (shutdown then lets it finish)."""
        return self.cycle is not None or bool(self.pipeline)

    def resume_reading(self) -> None:
        # Requests queued behind the one in progress keep reading paused (pipelining).
        if not self.pipeline:
            super().resume_reading()

    # -------------------------------------------------------------- from the adapters

    def begin_request(
        self,
        method: str,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """A request head is complete: check it, build its scope and queue its cycle.

        Raises InvalidRequest for a head the policy refuses (see strict.py). Whether the
        connection persists after it is the policy's decision (its Connection tokens),
        the same for both parsers.
        """
        state = self.state
        flags = check_head(method, target, http_version, headers, state)
        self.head_bytes = 0
        self.head_since = None
        if target[:1] == b"/":
            raw_path, _, query = target.partition(b"?")
        elif target == b"*":
            raw_path, query = target, b""
        else:
            raw_path, query = _split_absolute(target)
        if b"%" in raw_path:
            path = unquote(raw_path.decode("ascii", "surrogateescape"))
        else:
            path = raw_path.decode("ascii", "surrogateescape")
        if state.root_path:
            path = state.root_path + path
            raw_path = state.root_path_bytes + raw_path
        # The entries every request shares come from a template: one dict copy is
        # cheaper than building all of them per request.
        scope = SCOPE_TEMPLATE.copy()
        scope["root_path"] = state.root_path
        scope["server"] = self.server
        scope["client"] = self.client
        scope["scheme"] = self.scheme
        scope["http_version"] = http_version
        scope["method"] = method
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = headers
        scope["state"] = state.lifespan_state.copy()
        if flags & FORWARDED and self.trusted:
            scope["client"], scope["scheme"] = state.trusted.forwarded(headers, self.client, self.scheme)  # type: ignore[union-attr]
        keep_alive = (flags & KEEP_ALIVE) != 0
        if self.closing:
            keep_alive = False
        elif not keep_alive:
            self.closing = True
        cycle = HTTPCycle(self, scope, keep_alive, bool(flags & EXPECT_CONTINUE))
        self.parsing = cycle
        if self.cycle is not None:
            self.pause_reading()
        self.pipeline.append(cycle)
        self.idle_since = None

    def request_body(self, data: bytes) -> None:
        cycle = self.parsing
        self.body_seen += len(data)
        limit = self.state.limit_body
        if limit is not None and cycle is not None:
            cycle.body_size += len(data)
            if cycle.body_size > limit:
                self.body_too_large(cycle)
                return
        if cycle is not None and not cycle.response_complete:
            cycle.feed_body(data)
            if len(cycle.body) > HIGH_WATER:
                self.pause_reading()

    def end_of_request(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            self.parsing = None
            cycle.more_body = False
            if cycle.waiter is not None:
                cycle.wake()

    def body_too_large(self, cycle: HTTPCycle) -> None:
        """A body past --limit-request-body: answer 413 if still possible, read no more."""
        self.pipeline.clear()
        self.parsing = None
        self.closing = True
        if not cycle.response_started and not self.transport.is_closing():
            cycle.response_started = cycle.response_complete = True
            body = b"Request body too large\n"
            self.transport.write(simple_response(413, body, self.state.default_headers))
        cycle.on_disconnect()  # the app's receive/send now see a client that went away
        self.transport.close()

    def parse_error(self, status: int, reason: str) -> None:
        """Answer a request the parser refused, and close: nothing after it is trusted."""
        logger.debug("Invalid HTTP request: %s", reason)
        self.closing = True
        bad, self.parsing = self.parsing, None
        if bad is not None and bad is not self.cycle:
            if bad in self.pipeline:
                self.pipeline.remove(bad)
            bad.on_disconnect()
        if self.pipeline or (self.cycle is not None and self.cycle is not bad):
            # Requests that came whole before the bad bytes are still answered; the
            # connection closes after the last of them.
            last = self.pipeline[-1] if self.pipeline else self.cycle
            assert last is not None
            last.keep_alive = False
            return
        cycle = self.cycle
        if not self.transport.is_closing():
            # No request in progress, or it is the broken one (its body was malformed
            # while the app read it): it can never complete, so answer it now and close.
            if cycle is None or not cycle.response_started:
                body = f"{reason}\n".encode("utf-8", "replace") if reason else b""
                self.transport.write(simple_response(status, body, self.state.default_headers))
            if cycle is not None:
                cycle.on_disconnect()
            self.transport.close()

    def upgrade(self, trailing: bytes) -> bool:
        """The request just parsed asks to switch protocols (Upgrade, RFC 9110 7.8):
        the one place where the server accepts or declines that.

        Accepted (a WebSocket handshake, ``--ws`` not none, nothing queued before it, not
        shutting down): the transport is handed to the WebSocket protocol with the
        request's scope and ``trailing`` (the bytes that followed the head), and True is
        returned: the adapter must not touch the connection again.

        Declined (any other protocol, ``h2c`` unless accepted below): False. The request is then
        plain HTTP/1.1, as RFC 9110 7.8 lets a server ignore Upgrade: its body (if it
        has one) reaches the app, and the adapter goes on parsing what follows as
        HTTP/1.1, unless the connection is closing (Connection: close). Both parsers
        stop after a CONNECT too: it is answered, and closes the connection, for what
        follows it is a tunnel's bytes, never HTTP (RFC 9110 9.3.6).

        With ``--h2c-upgrade`` (and HTTP/2 on), an ``Upgrade: h2c`` whose body is read
        is accepted instead (``handover.upgrade_h2c``): 101, and the request becomes
        stream 1 of an HTTP/2 connection.
        """
        if self.state.h2c_upgrade and upgrade_h2c(self, trailing):
            return True
        ws_protocol = self.state.ws_protocol
        pipeline = self.pipeline
        if pipeline and pipeline[-1].scope["method"] == "CONNECT":
            connect = pipeline[-1]
            self.closing = True
            if connect.scope["raw_path"][:1] == b"/":  # not authority-form (RFC 9112 3.2.3)
                pipeline.pop()
                self.parse_error(400, "CONNECT needs a host:port target")
            else:
                connect.keep_alive = False
            return False
        if (
            ws_protocol is None
            or self.cycle is not None
            or len(pipeline) != 1
            or self.state.shutting_down
            or self.transport.is_closing()
            or not _is_websocket_handshake(pipeline[0].scope)
        ):
            return False
        scope = pipeline[0].scope
        pipeline.clear()
        self.parsing = None
        protocol = ws_protocol(self.state, scope)
        hand_over(self, protocol)
        protocol.handshake(trailing)
        return True

    def http2_preface(self) -> None:
        """The parser met HTTP/2's connection preface (``PRI * HTTP/2.0``, RFC 9113 3.4)
        or another request with the PRI method, reserved for it, and the connection
        closes, whichever parser saw it: with --no-http2 the answer is 505; with HTTP/2
        on (``sniff`` serves the exact preface) this is a broken preface, 400."""
        if self.state.h2_protocol is None:
            self.parse_error(HTTP2_STATUS, HTTP2_REASON)
        else:
            self.parse_error(BAD_PREFACE_STATUS, BAD_PREFACE_REASON)

    # --------------------------------------------------------------------- the cycles

    def start_next(self) -> None:
        """Start the next queued request if none is in progress. The adapters call it
        after each batch of parsed bytes (when ``cycle`` is None and ``pipeline`` is not
        empty), and ``cycle_done`` after each response.
        """
        # Re-entrancy guard: an eager task may finish its response (and call back into
        # cycle_done) before returning here; the loop below then picks up the next one
        # instead of recursing once per pipelined request.
        if self._starting:
            return
        self._starting = True
        try:
            while self.cycle is None and self.pipeline and not self.transport.is_closing():
                cycle = self.pipeline.pop(0)
                self.cycle = cycle
                state = self.state
                state.total_requests += 1
                state.active_requests += 1
                app = state.app
                if state.limit_concurrency is not None and state.over_capacity():
                    app = service_unavailable
                if state.timed:
                    cycle.started_at = perf_counter()  # the loop's clock has 1 ms steps
                # The task is kept in state.tasks while it runs (the shutdown's).
                state.start_task(cycle, app)
            if self.read_paused and not self.pipeline:
                self.resume_reading()
        finally:
            self._starting = False

    def cycle_done(self, cycle: HTTPCycle) -> None:
        """The response of ``cycle`` is complete."""
        if cycle is not self.cycle:
            return
        self.cycle = None
        if not cycle.keep_alive or self.transport.is_closing():
            self.closing = True
            self.pipeline.clear()
            self.transport.close()
            return
        if self.pipeline:
            self.start_next()
        elif self.parsing is None:
            self.idle_since = self.loop.time()
            if self.read_paused:
                self.resume_reading()
            if self.closing and self.state.shutting_down and not self.read_eof:
                # A graceful stop came after this response's head promised keep-alive:
                # the client may have sent its next request already. Give it the grace
                # to arrive (it is answered with Connection: close), then close.
                self.loop.call_later(CLOSE_GRACE, self.close_if_idle)
            elif self.closing or self.read_eof:
                self.transport.close()
        elif self.read_paused:
            # The body of the answered request is still arriving; keep reading to
            # discard it so the connection can be reused.
            self.resume_reading()

    def answer(self, cycle: HTTPCycle, status: int, body: bytes) -> None:
        transport = self.transport
        self.closing = True
        transport.write(simple_response(status, body, self.state.default_headers))
        if self.cycle is cycle:
            self.cycle = None
        transport.close()

    def cut(self, cycle: HTTPCycle, failed: bool) -> None:
        self.closing = True
        self.flush()
        self.transport.close()

    # ----------------------------------------------------------------- housekeeping

    def check_idle(self, now: float) -> None:
        """The once-a-second deadlines (no timer per request):

        - keep-alive: no byte of a new request within --timeout-keep-alive;
        - header read: a head started but not complete within --timeout-header-read,
          however the bytes trickle in (slowloris); for a connection's first request
          the clock runs from accept, the TLS handshake included;
        - body read: no new body bytes within --timeout-body-read;
        - send: response bytes waiting for --timeout-send without the client taking
          any (a client that stopped reading; FlowControlled.check_send).
        """
        state = self.state
        if self.check_send(now, state.timeout_send):
            return
        if self.head_bytes:
            if self.head_since is None:
                self.head_since = now
            elif now - self.head_since >= state.timeout_header_read:
                self.timed_out("request head not received in time")
            return
        since = self.idle_since
        if since is not None and now - since >= state.keep_alive_timeout:
            if self.cycle is None and not self.pipeline and self.parsing is None:
                self.transport.close()
            return
        if self.parsing is not None:
            mark = self.body_mark
            if mark is None or mark[0] != self.body_seen:
                self.body_mark = (self.body_seen, now)
            elif now - mark[1] >= state.timeout_body_read:
                self.timed_out("request body not received in time")
        elif self.body_mark is not None:
            self.body_mark = None

    def timed_out(self, reason: str) -> None:
        logger.debug("Closing connection: %s", reason)
        cycle = self.parsing
        self.parsing = None
        self.pipeline.clear()
        self.closing = True
        if self.cycle is None and cycle is None and not self.transport.is_closing():
            self.transport.write(simple_response(408, f"{reason}\n".encode(), self.state.default_headers))
        if cycle is not None:
            cycle.on_disconnect()
        self.transport.close()

    def close_if_idle(self) -> None:
        """The end of a grace (see shutdown, cycle_done): close unless a request came, or
        the transport went to another protocol meanwhile (HTTP/2, whose stop is its own)."""
        if (
            self.cycle is None
            and not self.pipeline
            and self.parsing is None
            and self in self.state.connections
        ):
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop (``state.shutting_down`` is set): close if idle; else answer
        every request received so far, the last one with Connection: close, and close
        after it. An app waiting in ``receive()`` for the end of a request it has read
        whole (a streaming response) hears http.disconnect now (see HTTPCycle.receive);
        one still producing its response is not disturbed.

        A response whose head is written already promised keep-alive: the connection
        then closes after the grace of cycle_done (the client may be sending its next
        request), not right after that response.
        """
        self.closing = True
        if self.cycle is None and not self.pipeline:
            # Idle: unless a response completed less than the grace ago (its client may
            # be sending the next request right now), close at once.
            since = self.idle_since
            wait = CLOSE_GRACE - (self.loop.time() - since) if since is not None else 0.0
            if self.head_bytes:
                wait = CLOSE_GRACE  # a request is arriving: let it
            if wait > 0:
                self.loop.call_later(wait, self.close_if_idle)
            else:
                self.transport.close()
            return
        last = self.pipeline[-1] if self.pipeline else self.cycle
        assert last is not None
        if not last.response_started or last.head is not None:
            last.keep_alive = False
        if self.cycle is not None:
            self.cycle.wake()


def _is_websocket_handshake(scope: dict[str, Any]) -> bool:
    """GET, HTTP/1.1, ``Upgrade: websocket`` and ``Connection: upgrade`` (RFC 6455 4.1),
    without a body (one would be read as frames by one parser and as a body by the
    other: such a request stays plain HTTP)."""
    if scope["method"] != "GET" or scope["http_version"] != "1.1":
        return False
    upgrade = connection = False
    for name, value in scope["headers"]:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in list_tokens(value)
        elif name == b"connection":
            connection = connection or b"upgrade" in list_tokens(value)
        elif (name == b"content-length" and value.lstrip(b"0")) or name == b"transfer-encoding":
            return False
    return upgrade and connection


def _peer(client: Any, server: Any) -> str:
    if client:
        return f"{client[0]}:{client[1]}"
    return f"unix:{server[0]}" if server else "-"


def peer_info(transport: asyncio.BaseTransport, state: ServerState) -> tuple[Any, Any, str, bool]:
    """(server, client, scheme, trusted with proxy headers) of a new connection."""
    server = _address(transport.get_extra_info("sockname"))
    client = _address(transport.get_extra_info("peername"))
    scheme = "https" if state.is_ssl or transport.get_extra_info("sslcontext") is not None else "http"
    trusted = False
    if state.trusted is not None:
        # Unix-socket peers have no address; the socket path is what may be trusted.
        peer = client[0] if client else (server[0] if server else None)
        trusted = peer in state.trusted
    return server, client, scheme, trusted


def _address(info: Any) -> Any:
    """(host, port) for TCP, (path, None) for a Unix socket, None if unknown."""
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str) and info:
        return (info, None)
    return None


def _split_absolute(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of an absolute-form target (``http://host/p?q``), RFC 9112 3.2.2."""
    _, sep, rest = target.partition(b"://")
    if not sep:
        return target, b""
    slash = rest.find(b"/")
    if slash < 0:
        return b"/", b""
    raw_path, _, query = rest[slash:].partition(b"?")
    return raw_path, query.partition(b"#")[0]
