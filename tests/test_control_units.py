"""Unit tests of issue 7's pieces without processes: the shared metrics table and its
exposition, the control socket's path and binding rules, the client's parsing and table,
and the JSON log formatter."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgictl.config import ConfigError
from asgictl.control.client import ControlError
from asgictl.control.commands import parse_scale
from asgictl.control.render import format_status
from asgictl.logs import JsonFormatter, set_worker_id
from asgictl.supervisor.control import bind_control_socket
from asgictl.supervisor.metrics import BUCKETS, MetricsTable, exposition, parse_bind
from asgictl.supervisor.observe import ProcessSample
from asgictl.supervisor.policy import Limits
from asgictl.supervisor.slots import StatsTable, WorkerState
from asgictl.supervisor.workers import Worker, WorkerTable

# --------------------------------------------------------------------------- metrics


def _worker(worker_id: int, cell: int) -> Worker:
    worker = Worker(worker_id, 1000 + cell, cell, 1, 0.0, Limits(None, None, None))
    worker.state = WorkerState.READY
    return worker


def _fake_master(table_cells: dict[int, int], stats: StatsTable) -> SimpleNamespace:
    workers = WorkerTable()
    for cell, wid in table_cells.items():
        workers.add(_worker(wid, cell))
    workers.slot(1).reasons.update({"reload": 2, "crash": 1})
    workers.slot(2)
    return SimpleNamespace(workers=workers, stats=stats)


def _record(table: MetricsTable, cell: int, status: int, seconds: float = 0.01) -> None:
    observe, publish = table.recorder(cell)
    observe(status, seconds)
    publish()


def test_recorder_counts_classes_buckets_and_sum() -> None:
    table = MetricsTable(4)
    observe, publish = table.recorder(1)
    for status, seconds in ((200, 0.001), (204, 0.005), (404, 0.2), (503, 20.0), (101, 0.0), (99, 0.0)):
        observe(status, seconds)
    observe(200, 0.001, True)  # the client left before the response was complete
    assert table.read(1) == (0,) * len(table.read(1))  # the master sees counts once published
    publish()
    values = table.read(1)
    assert values[:6] == (1, 1, 3, 0, 1, 1)  # other, 1xx, 2xx, 3xx, 4xx, 5xx
    buckets = values[6 : 6 + len(BUCKETS) + 1]
    assert buckets[0] == 5  # 0, 0, 0.001 (twice) and 0.005 (le is inclusive)
    assert buckets[BUCKETS.index(0.25)] == 1
    assert buckets[-1] == 1  # 20 s: +Inf
    assert values[6 + len(BUCKETS) + 1] == 2_000 + 5_000 + 200_000 + 20_000_000
    assert values[-1] == 1  # responses the client left
    assert table.read(0) == (0,) * len(values)  # other cells untouched


def test_retired_counts_keep_counters_monotonic_and_the_cell_is_cleared() -> None:
    table = MetricsTable(4)
    stats = StatsTable(4)
    _record(table, 0, 200)
    _record(table, 1, 500)
    master = _fake_master({0: 1, 1: 2}, stats)
    before = table.totals(master)  # type: ignore[arg-type]
    table.retire(1, 0)  # worker 1's process exits...
    master.workers.remove(1000)
    assert table.read(0) == (0,) * len(table.read(0))
    _record(table, 2, 200)  # ...and its replacement serves one more
    master.workers.add(_worker(1, 2))
    after = table.totals(master)  # type: ignore[arg-type]
    assert after[1][2] == before[1][2] + 1 == 2
    assert after[2] == before[2]


def test_exposition_parses_as_prometheus_text() -> None:
    table = MetricsTable(4)
    stats = StatsTable(4)
    observe, publish = table.recorder(0)
    for _ in range(3):
        observe(200, 0.02)
    observe(200, 0.02, True)
    publish()
    _record(table, 1, 404, 0.3)
    master = _fake_master({0: 1, 1: 2}, stats)
    sampler = SimpleNamespace(get=lambda pid: ProcessSample(rss=10_000_000 + pid))
    text = exposition(master, table, sampler)  # type: ignore[arg-type]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["worker"], s.labels["status_class"]): s.value for s in families["asgictl_requests"].samples
    }
    assert requests[("1", "2xx")] == 4 and requests[("2", "4xx")] == 1
    disconnects = {s.labels["worker"]: s.value for s in families["asgictl_client_disconnects"].samples}
    assert disconnects == {"1": 1, "2": 0}
    hist = families["asgictl_request_duration_seconds"]
    count = {s.labels["worker"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert count == {"1": 4, "2": 1}
    le_025 = [s.value for s in hist.samples if s.labels.get("le") == "0.025" and s.labels["worker"] == "1"]
    assert le_025 == [4]
    restarts = {
        (s.labels["worker"], s.labels["reason"]): s.value for s in families["asgictl_worker_restarts"].samples
    }
    assert restarts == {("1", "reload"): 2, ("1", "crash"): 1}
    assert {s.labels["worker"]: s.value for s in families["asgictl_worker_rss_bytes"].samples} == {
        "1": 10_001_000,
        "2": 10_001_001,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("0.0.0.0", 9100)), ("[::1]:0", ("::1", 0))],
)
def test_parse_bind(value: str, expected: tuple[str, int]) -> None:
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["9100", "host:", "host:port", "h:70000"])
def test_parse_bind_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-bind"):
        parse_bind(value)


# ----------------------------------------------------------------------- control socket


def test_bind_is_0600_replaces_stale_refuses_live_and_non_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "c.ctl")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on
    live = bind_control_socket(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with pytest.raises(ConfigError, match="in use by another running master"):
            bind_control_socket(path)
        taken = bind_control_socket(path, take_over=True)  # a USR2 successor
        taken.close()
    finally:
        live.close()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(ConfigError, match="not a socket"):
        bind_control_socket(str(regular))
    with pytest.raises(ConfigError, match="longer than"):
        bind_control_socket(str(tmp_path / ("x" * 120)))


# ------------------------------------------------------------------------------ client


@pytest.mark.parametrize(
    ("spec", "request_args"), [("4", {"count": 4}), ("+2", {"delta": 2}), ("-1", {"delta": -1})]
)
def test_parse_scale(spec: str, request_args: dict[str, int]) -> None:
    assert parse_scale(spec) == request_args


@pytest.mark.parametrize("spec", ["0", "two", "", "1.5"])
def test_parse_scale_refuses(spec: str) -> None:
    with pytest.raises(ControlError) as info:
        parse_scale(spec)
    assert info.value.code == 2


def test_status_table() -> None:
    worker = {
        "id": 1,
        "pid": 11,
        "state": "draining",
        "age": 75.0,
        "requests": 5,
        "connections": 2,
        "requests_per_second": 1.25,
        "rss": 30 * 1024 * 1024,
        "cpu_percent": 3.0,
        "restarts": 2,
        "last_reason": "max-requests",
    }
    master = {
        "pid": 10,
        "state": "ready",
        "age": 7300.0,
        "version": "0.1",
        "app": "m:app",
        "target": 1,
        "generation": 3,
        "requests": 5,
        "connections": 2,
        "requests_per_second": 1.25,
        "rss": None,
        "cpu_percent": None,
        "listeners": ["http://127.0.0.1:8000"],
        "metrics": None,
    }
    text = format_status({"master": master, "workers": [worker]})
    lines = text.splitlines()
    assert "master 10 ready" in lines[0] and "0/1 workers ready" in lines[0] and "up 2h01m" in lines[0]
    assert lines[4].split() == ["master", "10", "ready", "2h01m", "5", "2", "1.2", "-", "-"]
    assert lines[5].split() == [
        "1",
        "11",
        "draining",
        "1m15s",
        "5",
        "2",
        "1.2",
        "30.0M",
        "3.0",
        "2",
        "max-requests",
    ]


# -------------------------------------------------------------------------------- logs


def test_json_formatter_access_line_and_worker_id() -> None:
    record = logging.LogRecord(
        "asgictl.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d %.1fms',
        ("1.2.3.4:5", "GET", "/x?y", "1.1", 201, 12.345), None,
    )  # fmt: skip
    set_worker_id(3)
    try:
        data = json.loads(JsonFormatter().format(record))
    finally:
        set_worker_id(None)
    assert data["worker"] == 3 and data["logger"] == "asgictl.access" and data["level"] == "INFO"
    assert data["status"] == 201 and data["duration_ms"] == 12.3 and data["path"] == "/x?y"
    assert data["message"] == '1.2.3.4:5 - "GET /x?y HTTP/1.1" 201 12.3ms'
    assert data["time"].endswith("Z")


def test_json_formatter_exception_and_no_worker_in_master() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "asgictl.error", logging.ERROR, __file__, 1, "failed %d", (1,), sys.exc_info()
        )
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "failed 1" and "worker" not in data
    assert "ValueError: boom" in data["exc_info"]
