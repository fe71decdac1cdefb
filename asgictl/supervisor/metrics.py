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
* :class:`MetricsServer` answers ``GET /metrics`` from the master's select loop. The
  exposition is written by prometheus_client: :class:`AsgictlCollector` reads the
  tables per worker id (the ``worker`` label; a process that exits has its counts folded
  into its worker id's retired totals first, so every counter only grows across
  restarts and reloads), then the library's multiprocess collector sums the app's own
  prometheus_client metrics across its workers (:func:`app_metrics_dir`). The
  same listener answers the health probes ``/healthz`` and ``/readyz`` (:func:`health`).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from asgictl.config import Config, ConfigError
from asgictl.protocols.http.response import TEXT_PLAIN, simple_response
from asgictl.supervisor.endpoints import Channel, Endpoint
from asgictl.supervisor.hooks import MasterHooks

logger = logging.getLogger("asgictl.error")

if TYPE_CHECKING:
    from asgictl.supervisor.master import Master
    from asgictl.supervisor.observe import Sampler
    from asgictl.supervisor.workers import Worker

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
        for w in master.workers:
            values = self.read(w.cell)
            acc = result.setdefault(w.worker_id, [0] * WORDS)
            for i, value in enumerate(values):
                acc[i] += value
        return result

    def close(self) -> None:
        self._mem.close()


# --------------------------------------------------------------------------- exposition


class AsgictlCollector:
    """asgictl's own metric families, read from the shared memory at each scrape.

    A prometheus_client custom collector: the library writes the exposition (format,
    escaping, content type); this only reads the tables and the sampler.
    """

    def __init__(self, master: Master, table: MetricsTable, sampler: Sampler) -> None:
        self.master = master
        self.table = table
        self.sampler = sampler

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        master = self.master
        totals = self.table.totals(master)
        ids = sorted(totals)

        requests = CounterMetricFamily(
            "asgictl_requests",
            "HTTP responses completed, by status class.",
            labels=["worker", "status_class"],
        )
        durations = HistogramMetricFamily(
            "asgictl_request_duration_seconds", "Time from request head to response end.", labels=["worker"]
        )
        for wid in ids:
            values = totals[wid]
            for i, cls in enumerate(STATUS_CLASSES):
                if values[_CLASS0 + i] or cls != "other":
                    requests.add_metric([str(wid), cls], values[_CLASS0 + i])
            buckets, cumulative = [], 0
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                cumulative += values[_BUCKET0 + i]
                buckets.append((repr(bound) if bound != float("inf") else "+Inf", cumulative))
            durations.add_metric([str(wid)], buckets, values[_SUM] / 1e6)
        disconnects = CounterMetricFamily(
            "asgictl_client_disconnects",
            "Requests whose client left before the response was complete (counted in requests_total too).",
            labels=["worker"],
        )
        for wid in ids:
            disconnects.add_metric([str(wid)], totals[wid][_DISCONNECTS])
        yield requests
        yield durations
        yield disconnects

        connections: dict[int, int] = {}
        rss: dict[int, int] = {}
        states: dict[str, int] = {}
        for w in master.workers:
            connections[w.worker_id] = connections.get(w.worker_id, 0) + master.stats.read(w.cell).connections
            sample = self.sampler.get(w.pid)
            if sample.rss is not None:
                rss[w.worker_id] = rss.get(w.worker_id, 0) + sample.rss
            states[str(w.state)] = states.get(str(w.state), 0) + 1

        def gauge(name: str, help_text: str, label: str, values: dict[Any, int]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, help_text, labels=[label])
            for key in sorted(values):
                family.add_metric([str(key)], values[key])
            return family

        yield gauge(
            "asgictl_open_connections", "Open client connections (HTTP and WebSocket).", "worker", connections
        )
        yield gauge("asgictl_worker_rss_bytes", "Resident memory of the worker's processes.", "worker", rss)
        restarts = CounterMetricFamily(
            "asgictl_worker_restarts", "Worker replacements, by reason.", labels=["worker", "reason"]
        )
        for wid, slot in sorted(master.workers.slots.items()):
            for reason, n in sorted(slot.reasons.items()):
                restarts.add_metric([str(wid), reason], n)
        yield restarts
        yield gauge("asgictl_workers", "Worker processes by state.", "state", states)
        own = self.sampler.get(os.getpid()).rss
        master_rss = GaugeMetricFamily("asgictl_master_rss_bytes", "Resident memory of the master process.")
        if own is not None:
            master_rss.add_metric([], own)
        yield master_rss


def registry(master: Master, table: MetricsTable, sampler: Sampler, app_dir: str | None = None) -> Any:
    """A prometheus_client registry of asgictl's metrics, then (with ``app_dir``) the app's
    own, summed across its worker processes by the library's multiprocess collector."""
    from prometheus_client import CollectorRegistry

    result = CollectorRegistry(auto_describe=False)
    result.register(AsgictlCollector(master, table, sampler))  # type: ignore[arg-type]
    if app_dir is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(result, app_dir)
    return result


def exposition(master: Master, table: MetricsTable, sampler: Sampler) -> str:
    """asgictl's metrics in the Prometheus text format (what a scrape without Accept gets)."""
    from prometheus_client import generate_latest

    return generate_latest(registry(master, table, sampler)).decode("utf-8")


# ------------------------------------------------------------------ the app's own metrics

#: prometheus_client's multiprocess mode reads this in every process that imports it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Names the master that made the directory: a USR2 successor inheriting the variable
#: knows the directory is not the user's (and makes its own).
_OWNER_ENV = "_ASGICTL_PROMETHEUS_OWNER"


@contextlib.contextmanager
def app_metrics_dir(config: Config) -> Iterator[str | None]:
    """With ``--metrics-bind``: a private, empty multiprocess directory for the app's
    prometheus_client metrics, in ``PROMETHEUS_MULTIPROC_DIR`` before anything imports
    prometheus_client (the app under ``--preload``, every forked worker), removed when the
    block ends. A directory the user set already is used as it is and left alone.
    Yields the directory (None without ``--metrics-bind``).

    The removal is explicit, not an atexit handler: the master ends with ``os._exit``.
    """
    if not config.metrics_bind:
        yield None
        return
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited and os.environ.get(_OWNER_ENV) is None:
        logger.info("The app's Prometheus metrics: %s=%s (set by the user)", MULTIPROC_ENV, inherited)
        yield inherited
        return
    path = tempfile.mkdtemp(prefix="asgictl-prometheus-")
    os.environ[MULTIPROC_ENV] = path
    os.environ[_OWNER_ENV] = str(os.getpid())
    logger.info("The app's Prometheus metrics: %s=%s", MULTIPROC_ENV, path)
    owner = os.getpid()
    try:
        yield path
    finally:
        if os.getpid() == owner:  # never from a forked child unwinding this frame
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ health

HEALTH_PATHS = (b"/healthz", b"/readyz")


def health(master: Master, ready: bool) -> tuple[bool, str]:
    """``/healthz`` (``ready=False``) and ``/readyz``: (answer 200?, a one-line reason).

    Live: the master runs (it answers) and at least one worker serves. Ready: every
    worker of the target number serves and the server is not stopping, so a load
    balancer stops sending new connections as soon as a graceful stop begins.
    """
    serving = {w.worker_id for w in master.ready_workers()}
    counts = f"{len(serving)}/{master.target} workers ready"
    if not ready:
        return bool(serving), ("ok: " if serving else "no worker ready: ") + counts
    if master.stopping:
        return False, f"stopping: {counts}"
    full = len({wid for wid in serving if wid <= master.target}) >= master.target
    return full, ("ready: " if full else "not ready: ") + counts


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
        else:
            path = parts[1].split(b"?", 1)[0]
            head_only = parts[0] == b"HEAD"
            if path in (b"/metrics", b"/"):
                body, content_type = self.server.render(_header(self.inbuf, b"accept"))
                self.respond(200, body, content_type=content_type.encode(), head_only=head_only)
            elif path in HEALTH_PATHS:
                ok, text = health(self.server.master, ready=path == b"/readyz")
                self.respond(200 if ok else 503, text.encode() + b"\n", head_only=head_only)
            else:
                self.respond(404, b"Not Found: the metrics are at /metrics, health at /healthz and /readyz\n")

    def too_large(self) -> None:
        self.respond(431, b"Request Header Fields Too Large\n")

    def refuse(self) -> None:
        try:
            self.sock.send(simple_response(503, b"Too many scrapes at once\n", b""))
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
        content_type: bytes = TEXT_PLAIN,
        head_only: bool = False,
    ) -> None:
        """Answer and close; ``extra``: more field lines (each ending in CRLF)."""
        self.answered = True
        self.inbuf.clear()
        self.close_when_flushed = True
        self.write(simple_response(status, body, extra, content_type=content_type, head=head_only))


def _header(head: bytearray, name: bytes) -> str:
    """The value of header ``name`` in a raw request head ("" when absent)."""
    for line in bytes(head).split(b"\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--metrics-bind: {value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer(MasterHooks):
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
        self.endpoint = Endpoint(master.loop, sock, _MetricsChannel, self.max_clients)
        self.endpoint.owner = self  # type: ignore[attr-defined]
        #: The app's multiprocess directory (see app_metrics_dir), if there is one.
        self.app_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.app_dir is not None and not os.path.isdir(self.app_dir):
            logger.warning(
                "%s=%s is not a directory: the app's metrics are left out", MULTIPROC_ENV, self.app_dir
            )
            self.app_dir = None
        self.registry = registry(master, table, sampler, self.app_dir)
        self._cache: dict[str, tuple[float, bytes, str]] = {}

    @property
    def url(self) -> str:
        host, port = self.address[0], self.address[1]
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scrape: the format prometheus_client picks for the
        scraper's Accept header (OpenMetrics when asked, else its text format)."""
        from prometheus_client.exposition import choose_encoder

        # Several scrapers at once share one rendering per pass.
        now = time.monotonic()
        cached = self._cache.get(accept)
        if cached is None or now - cached[0] > 0.05:
            encode, content_type = choose_encoder(accept)
            cached = self._cache[accept] = (now, encode(self.registry), content_type)
        return cached[1], cached[2]

    def worker_exited(self, master: Master, worker: Worker) -> None:
        self.table.retire(worker.worker_id, worker.cell)
        if self.app_dir is not None:
            # The library's bookkeeping for a dead process: its live gauges go away,
            # its counters stay in the sum.
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, self.app_dir)

    def tick(self, master: Master, now: float) -> None:
        self.endpoint.tick(now)

    def close(self) -> None:
        self.endpoint.close(flush_seconds=0.5)
