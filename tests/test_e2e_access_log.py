"""End to end: the access line of the real server, under start and serve, both parsers:
gunicorn's combined format, JSON fields with a format, the default line's sub-millisecond
durations, a bad atom refused before forking."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from support import run_asgictl, wait_count

COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def _line(server: Any, pattern: str) -> str:
    wait_count(server, pattern, 1)
    return next(line for line in server.output.splitlines() if re.search(pattern, line))


@pytest.mark.parametrize("http", ["httptools", "h11", "h1c"])
def test_e2e_combined_format_under_start(http: str) -> None:
    fmt = COMBINED + " %(D)sus %({x-request-id}i)s %({content-type}o)s %(B)s %(X)s"
    with run_asgictl(
        ["start", "basic:app", "--port", "0", "--http", http, "--access-log-format", fmt]
    ) as server:
        r = httpx.get(
            server.url + "/?q=1",
            headers={"x-request-id": "req-7", "referer": "http://ref/", "user-agent": "tester/1"},
            auth=("carol", "pw"),
        )
        assert r.status_code == 200
        line = _line(server, r"req-7")
    assert re.search(
        r'INFO:     127\.0\.0\.1 - carol \[[^]]+\] "GET /\?q=1 HTTP/1\.1" 200 13 "http://ref/" "tester/1" '
        r"\d+us req-7 text/plain 13 \+$",
        line,
    ), line


def test_e2e_server_500_and_json_fields_with_a_format() -> None:
    args = ["serve", "basic:app", "--port", "0", "--log-format", "json", "--access-log-format", "%(s)s %(r)s"]
    with run_asgictl(args) as server:
        assert httpx.get(server.url + "/error").status_code == 500
        line = _line(server, r'"logger": "asgictl.access"')
    data = json.loads(line)
    assert data["message"] == "500 GET /error HTTP/1.1"
    assert (data["status"], data["path"], data["client"].startswith("127.0.0.1:")) == (500, "/error", True)


def test_e2e_default_line_unchanged_with_sub_millisecond_duration() -> None:
    with run_asgictl(["serve", "basic:app", "--port", "0"]) as server:
        with httpx.Client() as client:
            for _ in range(20):
                assert client.get(server.url + "/").status_code == 200
        wait_count(server, r'"GET / HTTP/1\.1" 200 ', 20)
    durations = [
        float(m)
        for m in re.findall(
            r'INFO:     127\.0\.0\.1:\d+ - "GET / HTTP/1\.1" 200 (\d+\.\d)ms$', server.output, re.M
        )
    ]
    assert len(durations) == 20, server.output
    # A hello answer takes well under a millisecond: with the loop's 1 ms clock most read 0.0.
    assert any(0.0 < d < 1.0 for d in durations), durations


def test_e2e_unknown_atom_is_one_line_before_forking() -> None:
    with run_asgictl(
        ["start", "basic:app", "--port", "0", "--access-log-format", "%(h)s %(Q)s"], ready=False
    ) as server:
        assert server.wait_exit() == 2
    assert server.output.strip() == (
        "asgictl: error: --access-log-format: unknown atom %(Q)s; known: "
        "h l u t r m U q H s B b f a T M D L p X, {header}i, {header}o, {variable}e"
    )
