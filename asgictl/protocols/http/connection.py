"""One HTTP/1.1 connection: everything about it that does not depend on the parser.

:class:`HTTPConnection` is the asyncio protocol shared by the h1c, httptools and h11 adapters.
An adapter only turns bytes into four calls: :meth:`begin_request` (a complete head),
:meth:`request_body`, :meth:`end_of_request` and :meth:`parse_error`. This class owns the
rest: building the ASGI scope from per-connection pieces, running one
:class:`~asgictl.protocols.http.cycle.HTTPCycle` at a time and queueing pipelined
requests behind it, flow control both ways, and keep-alive. Its other parts live in
their own modules, as bases of the class: the response's framing (``framing.py``), the
once-a-second deadlines (``deadlines.py``), the graceful stop (``shutdown.py``) and
the requests that ask to switch protocols (``upgrade.py``).

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
from asgictl.protocols.http.deadlines import Deadlines
from asgictl.protocols.http.framing import ResponseFraming
from asgictl.protocols.http.handover import PREFACE, switch_to_http2
from asgictl.protocols.http.response import simple_response
from asgictl.protocols.http.shutdown import CLOSE_GRACE, GracefulStop
from asgictl.protocols.http.strict import EXPECT_CONTINUE, FORWARDED, KEEP_ALIVE, check_head
from asgictl.protocols.http.upgrade import Upgrades
from asgictl.protocols.state import EAGER_TASKS, ServerState

logger = logging.getLogger("asgictl.error")

TRACE = 5

#: Unread request body past this many bytes pauses reading from the socket.
HIGH_WATER = 64 * 1024
#: The start of HTTP/2's connection preface that has the shape of an HTTP/1.1 head.
PRI_LINE = PREFACE[:18]

EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.trailers": {},
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}

#: What every HTTP scope starts from: begin_request copies it and sets every entry but
#: type, asgi and extensions (placeholders keep the copy at its final size). A copy and
#: eleven stores cost less than a dict display of fourteen entries.
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


class HTTPConnection(Upgrades, Deadlines, GracefulStop, ResponseFraming):
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
        "stopped",
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
        #: the adapter parses nothing more (answered, refused or handed over)
        self.stopped = False
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

    def data_received(self, data: bytes) -> None:
        if self.preface is not None:
            data = self.sniff(data)
            if not data:
                return
        if self.stopped:
            return
        if self.parsing is None:
            # The head's size is counted here, before the adapter parses, the same for
            # every parser: the bytes of a read that may hold a head (and body, and
            # more requests after it), exact only when it could pass --limit-head.
            head_bytes = self.head_bytes + len(data)
            limit = self.state.limit_head
            if head_bytes > limit:
                # Only the head counts: the same read may carry (much) body after it.
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    head_bytes -= len(data) - end - 4
                if head_bytes > limit:
                    self.stopped = True
                    self.parse_error(431, "request head too large")
                    return
            # begin_request resets it when the head is complete.
            self.head_bytes = head_bytes
        self.feed(data)
        if self.cycle is None and self.pipeline:
            self.start_next()

    def feed(self, data: bytes) -> None:
        """The adapter's one hook: parse ``data`` (bytes the connection received, the
        HTTP/2 preface sniffed out and the head's size counted), calling
        :meth:`begin_request`, :meth:`request_body`, :meth:`end_of_request`,
        :meth:`upgrade` or :meth:`parse_error` as the bytes say; set ``stopped`` when
        nothing after them may be parsed."""
        raise NotImplementedError

    def sniff(self, data: bytes) -> bytes:
        """The adapters' first look at a connection's bytes: what HTTP/1.1 must parse, or
        b"" when it is (or may yet be) the HTTP/2 client preface (prior knowledge, RFC 9113
        3.3). Called only until that is decided, so it costs nothing per request. A
        preface that stalls half-way is a request head that does: --timeout-header-read
        cuts it, the clock running from accept."""
        data = self.preface + data if self.preface else data
        size = min(len(data), len(PREFACE))
        matches = data[:size] == PREFACE[:size]
        if not matches and not data.startswith(PRI_LINE):
            self.preface = None
            self.head_bytes = 0  # the adapter counts these bytes again, as a head's
            return data
        if matches and size < len(PREFACE):
            self.preface = data  # the preface may be split over reads
            self.head_bytes = size
            return b""
        # The preface; or its HTTP/1.1-shaped part and then something else, an HTTP/2
        # client whose preface is invalid: a connection error of type PROTOCOL_ERROR
        # (RFC 9113 3.4), which the HTTP/2 engine answers.
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
        head_size: int | None = None,
        line_checked: bool = False,
    ) -> int:
        """A request head is complete: check it, build its scope and queue its cycle;
        return ``strict.check_head``'s bits (UPGRADE: the request asks to switch).

        ``head_size`` is at least the head's size in bytes, when the adapter knows it,
        and ``line_checked`` says its parser held the request line to the policy's
        limits already (see ``strict.check_head``). Raises InvalidRequest for a head the policy
        refuses (see strict.py). Whether the connection persists after it is the
        policy's decision (its Connection tokens), the same for both parsers.
        """
        state = self.state
        flags = check_head(method, target, http_version, headers, state, head_size, line_checked)
        self.head_bytes = 0
        self.head_since = None
        if target[:1] == b"/":
            raw_path, _, query = target.partition(b"?")
        elif target == b"*":
            raw_path, query = target, b""
        else:
            raw_path, query = _split_absolute(target)
        # find, not "in": bytes.__contains__ first tries the operand as an int and
        # raises (and clears) a TypeError for bytes, a cost on every request.
        if raw_path.find(b"%") >= 0:
            path = unquote(raw_path.decode("ascii", "surrogateescape"))
        else:
            path = raw_path.decode("ascii", "surrogateescape")
        root_path = state.root_path
        if root_path:
            path = root_path + path
            raw_path = state.root_path_bytes + raw_path
        scope = SCOPE_TEMPLATE.copy()
        scope["root_path"] = root_path
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
        cycle = HTTPCycle(self, scope, keep_alive, (flags & EXPECT_CONTINUE) != 0)
        self.parsing = cycle
        if self.cycle is not None:
            self.pause_reading()
        self.pipeline.append(cycle)
        self.idle_since = None
        return flags

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
            state = self.state
            pipeline = self.pipeline
            while self.cycle is None and pipeline and not self.transport.is_closing():
                cycle = pipeline.pop(0)
                self.cycle = cycle
                state.total_requests += 1
                state.active_requests += 1
                app = state.app
                if state.limit_concurrency is not None and state.over_capacity():
                    app = service_unavailable
                if state.timed:
                    cycle.started_at = perf_counter()  # the loop's clock has 1 ms steps
                # state.start_task(cycle, app), inline (a call less per request): the
                # task is kept in state.tasks until cycle.run ends (the shutdown's).
                task = state.new_task(cycle.run(app))
                if not (EAGER_TASKS and task.done()):
                    state.tasks[cycle] = task
            if self.read_paused and not pipeline:
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
