"""Replay the raw-request corpus (tests/data/http) against both parsers.

Valid requests must reach the app as the origin suite parsed them; invalid ones must get
a 4xx/5xx answer and a closed connection, with nothing after the bad request parsed.
Run in memory (every case, fast) and over a real socket against ``asgictl serve``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from corpus import ORIGIN_DEFAULTS, Case, expected_body, load_cases
from memory import PARSERS, Harness
from recorder import app as recorder
from support import read_all, run_asgictl

CASES = load_cases()


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def check(case: Case, data: bytes, closed: bool) -> None:
    responses = split_responses(data)
    good = case.accepted
    assert [r[0] for r in responses[:good]] == [200] * good, data[:300]
    for (_, _, body), want in zip(responses[:good], case.requests, strict=False):
        got = json.loads(body)
        assert got["method"] == want["method"]
        target = want["target"]
        if not target.startswith("/") and got["method"] not in ("CONNECT", "OPTIONS"):
            target = "/" + target.split("://", 1)[-1].partition("/")[2]
        if got["method"] != "CONNECT":
            assert got["target"].encode("latin-1") == target.encode("utf-8")
        assert got["version"] == "{}.{}".format(*want["version"])
        assert [[n, v] for n, v in got["headers"]] == [[n.lower(), v] for n, v in want["headers"]]
        assert got["body"].encode("latin-1") == expected_body(want)
    if case.expect_valid:
        assert len(responses) == good
    else:
        refused = responses[good:]
        if good == 0:
            assert refused, f"no answer to an invalid request: {data[:200]!r}"
        # After a refused request nothing more is parsed: at most one error answer.
        assert len(refused) <= 1, "bytes after a bad request were parsed as a request"
        assert all(400 <= status < 600 for status, _, _ in refused), data[:300]
        assert closed


@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_in_memory(case: Case, http: str) -> None:
    h = Harness(recorder, http=http, **case.options())
    h.feed(case.data)
    h.settle(2.0)
    if not h.transport.closed:  # the client half-closes after its request(s)
        h.protocol.eof_received()
        h.settle(2.0)
    check(case, h.transport.data, h.transport.closed)
    h.close()


@pytest.fixture(scope="module", params=PARSERS)
def servers(request: pytest.FixtureRequest) -> Any:
    """Two servers per parser with the origin suite's limits: as configured by default,
    and with ``--proxy-protocol auto`` for the cases the origin suite ran with it."""
    args = ["serve", "recorder:app", "--port", "0", "--http", request.param, "--no-access-log"]
    for key, value in ORIGIN_DEFAULTS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    with run_asgictl(args) as plain, run_asgictl([*args, "--proxy-protocol", "auto"]) as proxied:
        yield plain, proxied


@pytest.mark.e2e
@pytest.mark.parametrize("case", [c for c in CASES if not c.custom_limits], ids=lambda c: c.id)
def test_corpus_over_socket(case: Case, servers: Any) -> None:
    server = servers[1] if case.proxy_protocol else servers[0]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(case.data)
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock, 10)
    check(case, data, closed=True)
    assert server.proc.poll() is None, "the worker died"
