"""The access line (asgictl/protocols/access.py): gunicorn's atoms, the default line, JSON
fields, the disconnected mark, on AccessLog directly (end to end: test_e2e_access_log.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support import Collect

from asgictl.config import ConfigError
from asgictl.logs import ACCESS_LOGGER, AccessFormatter, JsonFormatter, access_fields
from asgictl.protocols.access import ATOMS, AccessLog, compile_format

COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Collect()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def scope(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"x=1",
        "client": ("10.1.2.3", 4567),
        "headers": [
            (b"host", b"example.org"),
            (b"user-agent", b"curl/8"),
            (b"referer", b"http://example.org/"),
            (b"x-request-id", b"abc"),
            (b"authorization", b"Basic " + base64.b64encode(b"alice:secret")),
        ],
    }
    base.update(changes)
    return base


# ----------------------------------------------------------------------------- formats


def test_every_gunicorn_atom_is_known() -> None:
    assert set("hlutrmUqHsBbfaTMDLp") <= ATOMS
    text, atoms = compile_format("%(h)s %({User-Agent}i)s %({X-Out}o)s %({HOME}e)s")
    assert atoms == {"h", "{user-agent}i", "{x-out}o", "{HOME}e"}
    assert "%({user-agent}i)s" in text


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("%(zz)s", "unknown atom %(zz)s"),
        ("%(h)s %(s)d %(h)d", "does not apply"),
        ("%(h)s %", "does not apply"),
    ],
)
def test_bad_format_is_one_config_error(fmt: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)) as info:
        AccessLog(fmt)
    assert str(info.value).startswith("--access-log-format: ") and "\n" not in str(info.value)


def test_combined_format(records: list[logging.LogRecord]) -> None:
    log = AccessLog(COMBINED)
    log.response(scope(), 200, time.perf_counter())
    (record,) = records
    line = record.getMessage()
    assert re.fullmatch(
        r"10\.1\.2\.3 - alice \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /a%20b\?x=1 HTTP/1\.1" 200 - "http://example\.org/" "curl/8"',
        line,
    ), line


def test_time_atoms_and_process(records: list[logging.LogRecord]) -> None:
    log = AccessLog("%(T)s %(M)s %(D)s %(L)s %(p)s %(m)s %(U)s %(q)s %(H)s %(s)d")
    log.response(scope(method="POST", http_version="1.0", path="/p"), 404, time.perf_counter() - 1.2345)
    t, m, d, seconds, pid, method, path, query, protocol, status = records[0].getMessage().split(" ")
    assert (t, pid, method, query, protocol, status) == (
        "1",
        f"<{os.getpid()}>",
        "POST",
        "x=1",
        "HTTP/1.0",
        "404",
    )
    assert path == "/p"
    assert 1234 <= int(m) < 1300 and 1_234_500 <= int(d) < 1_300_000
    assert re.fullmatch(r"1\.2\d{5}", seconds)


def test_headers_environment_and_missing_values(
    records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASGICTL_TEST_REGION", "eu-1")
    log = AccessLog("%({X-Request-ID}i)s %({x-absent}i)s %({ASGICTL_TEST_REGION}e)s %({NOPE_X}e)s %(u)s")
    log.response(scope(headers=[(b"x-request-id", b"abc"), (b"authorization", b"Bearer t")]), 200, 0.0)
    assert records[0].getMessage() == "abc - eu-1 - -"


def test_connection_status_atom(records: list[logging.LogRecord]) -> None:
    log = AccessLog("%(X)s")
    log.response(scope(), 200, 0.0, keep_alive=True)
    log.response(scope(), 200, 0.0, keep_alive=False)
    log.response(scope(), 200, 0.0, disconnected=True)
    assert [r.getMessage() for r in records] == ["+", "-", "X"]
    assert [access_fields(r)[-1] for r in records] == [False, False, True]  # type: ignore[index]


def test_response_atoms_watch_the_apps_send(records: list[logging.LogRecord]) -> None:
    log = AccessLog("%(s)s %(B)s %(b)s %({Content-Type}o)s %({x-missing}o)s")
    assert log.needs_response

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/x")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defg"})

    request = scope()
    started = time.perf_counter()

    async def send(message: dict[str, Any]) -> None:
        # The server writes the line when the last body message is sent, as the cycle does.
        if message["type"] == "http.response.body" and not message.get("more_body"):
            log.response(request, 200, started)

    asyncio.run(log.wrap(app)(request, None, send))
    assert records[0].getMessage() == "200 7 7 text/x -"
    head = scope(method="HEAD")

    async def send_head(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            log.response(head, 200, started)

    asyncio.run(log.wrap(app)(head, None, send_head))
    assert records[1].getMessage() == "200 0 - text/x -"


def test_app_is_not_wrapped_unless_the_format_needs_it() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None: ...

    assert AccessLog(None).wrap(app) is app
    assert AccessLog(COMBINED.replace("%(b)s", "%(D)s")).wrap(app) is app
    assert AccessLog(COMBINED).wrap(app) is not app


# ----------------------------------------------------------------------------- default line


def test_default_line_has_sub_millisecond_duration(records: list[logging.LogRecord]) -> None:
    AccessLog(None).response(scope(), 200, time.perf_counter() - 0.0003)
    line = records[0].getMessage()
    assert re.fullmatch(r'10\.1\.2\.3:4567 - "GET /a b\?x=1 HTTP/1\.1" 200 0\.[3-9]ms', line), line


def test_default_line_disconnected_mark(records: list[logging.LogRecord]) -> None:
    AccessLog(None).response(scope(), 200, time.perf_counter(), disconnected=True)
    line = records[0].getMessage()
    assert line.endswith("ms (client disconnected)"), line
    colored = AccessFormatter("%(message)s", use_colors=True).format(records[0])
    assert colored.endswith("ms (client disconnected)") and "\033[32m200" in colored


def test_websocket_lines(records: list[logging.LogRecord]) -> None:
    ws = scope(type="websocket", query_string=b"")
    del ws["method"]
    AccessLog(None).websocket(ws, 101, 0.0)
    AccessLog("%(r)s %(s)s %(X)s").websocket(ws, 403, time.perf_counter())
    assert [r.getMessage() for r in records] == [
        '10.1.2.3:4567 - "WebSocket /a b" 101',
        "GET /a%20b HTTP/1.1 403 -",
    ]


@pytest.mark.parametrize("fmt", [None, COMBINED])
def test_json_lines_keep_their_fields(records: list[logging.LogRecord], fmt: str | None) -> None:
    AccessLog(fmt).response(scope(), 201, time.perf_counter() - 0.0004)
    data = json.loads(JsonFormatter().format(records[0]))
    assert data["message"] == records[0].getMessage()
    assert {k: data[k] for k in ("client", "method", "path", "http_version", "status", "disconnected")} == {
        "client": "10.1.2.3:4567",
        "method": "GET",
        "path": "/a b?x=1",
        "http_version": "1.1",
        "status": 201,
        "disconnected": False,
    }
    assert 0.4 <= data["duration_ms"] < 50


def test_text_formatter_fields_for_a_formatted_line(records: list[logging.LogRecord]) -> None:
    AccessLog("%(h)s").response(scope(), 200, time.perf_counter())
    formatter = AccessFormatter(
        "%(client_addr)s|%(request_line)s|%(status_code)s|%(message)s", use_colors=False
    )
    assert formatter.format(records[0]) == "10.1.2.3:4567|GET /a b?x=1 HTTP/1.1|200|10.1.2.3"
