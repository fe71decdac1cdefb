"""Prometheus metrics: per-response counters written by workers, served by the master.

Two halves, both off unless ``--metrics-bind HOST:PORT`` is given:

* :class:`MetricsTable` is a second anonymous shared-memory region, beside the stats
  cells of ``slots.py`` and indexed by the same cell numbers. A worker counts each
  completed HTTP response: one increment for the status class, one for the duration
  bucket, one addition to the duration sum, in a preallocated list of its own (the
  whole hot-path cost), published into its cell once a second and at exit (aligned
  8-byte words with a single writer: the master reads them without a lock, as it does
  the stats cells). The worker's protocols know nothing of this: they call the function
  :meth:`MetricsTable.recorder` returns, handed to them through ``ServerState``.
* :class:`MetricsServer` answers ``GET /metrics`` with the Prometheus text exposition
  format (version 0.0.4) from the master's select loop, aggregated per worker id (the
  ``worker`` label): a process that exits has its counts folded into its worker id's
  retired totals first, so every counter only grows across restarts and reloads.
"""

from __future__ import annotations

import bisect
import mmap
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgictl.config import ConfigError
from asgictl.supervisor.endpoints import Channel, Endpoint

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master, Worker
    from asgictl.supervisor.observe import Sampler

#: Upper bounds (seconds) of the request duration histogram: Prometheus' defaults.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Status classes by ``status // 100``; index 0 counts anything outside 1xx-5xx.
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

# Layout of one cell, in 8-byte signed words: status classes, histogram buckets (the
# last one is +Inf; counts per bucket, not cumulative), the duration sum in microseconds,
# the responses the client did not wait for.
_CLASS0 = 0
_BUCKET0 = len(STATUS_CLASSES)
_SUM = _BUCKET0 + len(BUCKETS) + 1
_DISCONNECTS = _SUM + 1
WORDS = _DISCONNECTS + 1
#: Padded to whole cache lines, so two workers never write into the same line.
CELL_WORDS = 32
assert WORDS <= CELL_WORDS
_CELL = struct.Struct(f"={WORDS}q")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class MetricsTable:
    """``capacity`` cells of per-response counters in memory shared with the workers."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._mem = mmap.mmap(-1, capacity * CELL_WORDS * 8)
        #: Counts of exited processes, per worker id: the counters' past.
        self.retired: dict[int, list[int]] = {}

    # -- worker side ------------------------------------------------------------------

    def recorder(self, cell: int) -> tuple[Callable[[int, float], None], Callable[[], None]]:
        """The worker's ``(observe, publish)`` pair for its cell.

        ``observe(status, seconds, disconnected=False)`` is the per-response hook: three
        increments in a preallocated list (about 0.2 us; a memoryview over the shared
        map costs twice that), a fourth for a response the client left before it was
        complete (or before one was started: status 499). ``publish()`` copies the
        totals into the shared cell: the worker calls it on its once-a-second tick and
        on exit, so the master is at most a second behind.
        """
        counts: list[float] = [0] * WORDS
        bounds = BUCKETS
        find = bisect.bisect_left  # first bound >= seconds: Prometheus' inclusive "le"
        mem = self._mem
        offset = cell * CELL_WORDS * 8
        pack = _CELL.pack_into

        def observe(status: int, seconds: float, disconnected: bool = False) -> None:
            cls = status // 100
            counts[cls if 0 < cls < 6 else 0] += 1
            counts[_BUCKET0 + find(bounds, seconds)] += 1
            counts[_SUM] += seconds
            if disconnected:
                counts[_DISCONNECTS] += 1

        def publish() -> None:
            values = [int(v) for v in counts]
            values[_SUM] = int(counts[_SUM] * 1_000_000)
            pack(mem, offset, *values)

        publish()  # a fresh cell: whatever a forgotten process left there is gone
        return observe, publish

    # -- master side ------------------------------------------------------------------

    def read(self, cell: int) -> tuple[int, ...]:
        return _CELL.unpack_from(self._mem, cell * CELL_WORDS * 8)

    def retire(self, worker_id: int, cell: int) -> None:
        """Fold an exited process's counts into its worker id and clear its cell."""
        values = self.read(cell)
        past = self.retired.setdefault(worker_id, [0] * WORDS)
        for i, value in enumerate(values):
            past[i] += value
        start = cell * CELL_WORDS * 8
        self._mem[start : start + CELL_WORDS * 8] = bytes(CELL_WORDS * 8)

    def totals(self, master: Master) -> dict[int, list[int]]:
        """Per worker id: retired counts plus those of its live processes."""
        result = {wid: list(values) for wid, values in self.retired.items()}
        for w in master.workers.values():
            values = self.read(w.cell)
            acc = result.setdefault(w.worker_id, [0] * WORDS)
            for i, value in enumerate(values):
                acc[i] += value
        return result

    def close(self) -> None:
        self._mem.close()


# --------------------------------------------------------------------------- exposition


def _labels(**labels: object) -> str:
    def escape(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def exposition(master: Master, table: MetricsTable, sampler: Sampler) -> str:
    """The Prometheus text format of everything the master knows, by ``worker`` id."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    totals = table.totals(master)
    ids = sorted(totals)

    family("asgictl_requests_total", "counter", "HTTP responses completed, by status class.")
    for wid in ids:
        values = totals[wid]
        for i, cls in enumerate(STATUS_CLASSES):
            if values[_CLASS0 + i] or cls != "other":
                out.append(f"asgictl_requests_total{_labels(worker=wid, status_class=cls)} {values[i]}")

    family("asgictl_request_duration_seconds", "histogram", "Time from request head to response end.")
    for wid in ids:
        values = totals[wid]
        cumulative = 0
        for i, bound in enumerate((*BUCKETS, "+Inf")):
            cumulative += values[_BUCKET0 + i]
            le = bound if isinstance(bound, str) else repr(bound)
            out.append(f"asgictl_request_duration_seconds_bucket{_labels(worker=wid, le=le)} {cumulative}")
        out.append(f"asgictl_request_duration_seconds_sum{_labels(worker=wid)} {values[_SUM] / 1e6!r}")
        out.append(f"asgictl_request_duration_seconds_count{_labels(worker=wid)} {cumulative}")

    family(
        "asgictl_client_disconnects_total",
        "counter",
        "Requests whose client left before the response was complete (counted in requests_total too).",
    )
    for wid in ids:
        out.append(f"asgictl_client_disconnects_total{_labels(worker=wid)} {totals[wid][_DISCONNECTS]}")

    connections: dict[int, int] = {}
    rss: dict[int, int] = {}
    states: dict[str, int] = {}
    for w in master.workers.values():
        connections[w.worker_id] = connections.get(w.worker_id, 0) + master.stats.read(w.cell).connections
        sample = sampler.get(w.pid)
        if sample.rss is not None:
            rss[w.worker_id] = rss.get(w.worker_id, 0) + sample.rss
        states[w.state] = states.get(w.state, 0) + 1

    family("asgictl_open_connections", "gauge", "Open client connections (HTTP and WebSocket).")
    for wid in sorted(connections):
        out.append(f"asgictl_open_connections{_labels(worker=wid)} {connections[wid]}")

    family("asgictl_worker_rss_bytes", "gauge", "Resident memory of the worker's processes.")
    for wid in sorted(rss):
        out.append(f"asgictl_worker_rss_bytes{_labels(worker=wid)} {rss[wid]}")

    family("asgictl_worker_restarts_total", "counter", "Worker replacements, by reason.")
    for wid, slot in sorted(master.slots.items()):
        for reason, n in sorted(slot.reasons.items()):
            out.append(f"asgictl_worker_restarts_total{_labels(worker=wid, reason=reason)} {n}")

    family("asgictl_workers", "gauge", "Worker processes by state.")
    for state, n in sorted(states.items()):
        out.append(f"asgictl_workers{_labels(state=state)} {n}")

    family("asgictl_master_rss_bytes", "gauge", "Resident memory of the master process.")
    own = sampler.get(os.getpid()).rss
    if own is not None:
        out.append(f"asgictl_master_rss_bytes {own}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- serving


class _MetricsChannel(Channel):
    """One scrape: read a request head (bounded, with a deadline), answer, close."""

    max_input = 8 * 1024
    #: The whole request head must arrive within this long of the connection.
    head_deadline = 10.0

    def __init__(self, endpoint: Endpoint, sock: socket.socket, now: float) -> None:
        super().__init__(endpoint, sock, now)
        self.server: MetricsServer = endpoint.owner  # type: ignore[attr-defined]
        self.answered = False

    def received(self) -> None:
        if self.answered:
            self.inbuf.clear()
            return
        end = self.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = self.inbuf.find(b"\n\n")
        if end < 0:
            if self.eof:
                self.respond(400, b"Bad Request\n")
            return
        line = bytes(self.inbuf[: self.inbuf.find(b"\n")]).strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.respond(400, b"Bad Request\n")
        elif parts[0] not in (b"GET", b"HEAD"):
            self.respond(405, b"Method Not Allowed\n", extra=b"allow: GET, HEAD\r\n")
        elif parts[1].split(b"?", 1)[0] not in (b"/metrics", b"/"):
            self.respond(404, b"Not Found: the metrics are at /metrics\n")
        else:
            body = self.server.render().encode("utf-8")
            self.respond(200, body, content_type=CONTENT_TYPE, head_only=parts[0] == b"HEAD")

    def too_large(self) -> None:
        self.respond(431, b"Request Header Fields Too Large\n")

    def refuse(self) -> None:
        try:
            self.sock.send(_response(503, b"Too many scrapes at once\n"))
        except OSError:
            pass

    def tick(self, now: float) -> None:
        if not self.answered and now - self.opened > self.head_deadline:
            self.respond(408, b"Request Timeout\n")

    def respond(
        self,
        status: int,
        body: bytes,
        extra: bytes = b"",
        content_type: bytes = b"text/plain; charset=utf-8",
        head_only: bool = False,
    ) -> None:
        self.answered = True
        self.inbuf.clear()
        self.close_when_flushed = True
        self.write(_response(status, body, extra, content_type, head_only))


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def _response(
    status: int,
    body: bytes,
    extra: bytes = b"",
    content_type: bytes = b"text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        content_type,
        len(body),
        extra,
    )
    return head if head_only else head + body


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-bind: {value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer:
    """The ``--metrics-bind`` listener, served from the master's loop."""

    max_clients = 16

    def __init__(self, master: Master, table: MetricsTable, sampler: Sampler, bind: str) -> None:
        self.master = master
        self.table = table
        self.sampler = sampler
        host, port = parse_bind(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--metrics-bind: cannot listen on {bind}: {exc.strerror or exc}") from None
        sock.set_inheritable(False)
        self.address = sock.getsockname()
        self.endpoint = Endpoint(master, sock, _MetricsChannel, self.max_clients)
        self.endpoint.owner = self  # type: ignore[attr-defined]
        self._cache: tuple[float, str] = (0.0, "")

    @property
    def url(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def render(self) -> str:
        # Scrapes are cheap, but several scrapers at once share one rendering per pass.
        now = time.monotonic()
        at, text = self._cache
        if now - at > 0.05 or not text:
            text = exposition(self.master, self.table, self.sampler)
            self._cache = (now, text)
        return text

    def worker_exited(self, worker: Worker) -> None:
        self.table.retire(worker.worker_id, worker.cell)

    def tick(self, now: float) -> None:
        self.endpoint.tick(now)

    def close(self) -> None:
        self.endpoint.close(flush_seconds=0.5)
