"""Property-based fuzzing of the HTTP protocol layer (hypothesis), both parsers.

Random bytes, and valid requests mutated byte by byte, are fed in random splits through
the in-memory transport. Whatever arrives: no exception escapes the protocol, every
answer is a well-formed HTTP/1.1 response, and a refused request closes the connection
(HTTP/2 is off there: bytes that happen to be its preface are not HTTP/1.1). Random
frames after the HTTP/2 preface are fed too: nothing escapes, the worker stays up.
The long run lives in benchmarks/fuzz_http.py (atheris-free: hypothesis with a big
example budget).
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory import PARSERS, Harness
from recorder import app as recorder

from asgictl.protocols.http.handover import PREFACE

EXAMPLES = int(os.environ.get("ASGICTL_FUZZ_EXAMPLES", "150"))

_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]


def well_formed(data: bytes) -> None:
    """Every response in ``data`` has a status line, a head and a framed body."""
    while data:
        assert _STATUS_LINE.match(data), data[:80]
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        fields = dict(
            (line.split(b":", 1)[0].lower(), line.split(b":", 1)[1].strip())
            for line in head.split(b"\r\n")[1:]
        )
        if head.startswith(b"HTTP/1.1 100 "):
            data = rest
            continue
        if b"content-length" in fields:
            length = int(fields[b"content-length"])
            assert len(rest) >= length
            data = rest[length:]
        else:
            assert fields.get(b"transfer-encoding") == b"chunked" or not rest, head
            return


def run(http: str, data: bytes, cuts: list[int], **options: Any) -> None:
    options.setdefault("http2", False)
    h = Harness(recorder, http=http, access_log=False, **options)
    try:
        pieces = []
        last = 0
        for cut in sorted(c % (len(data) + 1) for c in cuts):
            pieces.append(data[last:cut])
            last = cut
        pieces.append(data[last:])
        for piece in pieces:
            if h.transport.closed:
                break
            if piece:
                h.feed(piece)  # an exception here escapes the protocol: the test fails
        h.settle(0.2)
        if options["http2"]:
            return  # HTTP/2's answers are frames: only "nothing escaped" is checked
        if not h.transport.closed:
            h.protocol.eof_received()
            h.settle(0.2)
        well_formed(h.transport.data)
        status = h.transport.data[9:12]
        if status[:1] in (b"4", b"5"):
            assert h.transport.closed
    finally:
        h.close()


def mutate(seed: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(seed)
    for kind, position, value in edits:
        if not data:
            data.append(value)
            continue
        position %= len(data)
        if kind == 0:
            data[position] = value
        elif kind == 1:
            data.insert(position, value)
        else:
            del data[position]
    return bytes(data)


fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=os.environ.get("ASGICTL_FUZZ_RANDOM") is None,
)


@pytest.mark.parametrize("http", PARSERS)
@fuzz_settings
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_random_bytes(http: str, data: bytes, cuts: list[int]) -> None:
    run(http, data, cuts)


@pytest.mark.parametrize("http", PARSERS)
@fuzz_settings
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.sampled_from(b"\r\n\t \x00:;,-0aZ\x7f\xff")),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(0, 300), max_size=3),
)
def test_mutated_requests(http: str, seed: bytes, edits: list[Any], cuts: list[int]) -> None:
    run(http, mutate(seed, edits), cuts)


@pytest.mark.parametrize("http", PARSERS)
@fuzz_settings
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 330), max_size=4))
def test_random_http2_frames(http: str, data: bytes, cuts: list[int]) -> None:
    run(http, PREFACE + data, cuts, http2=True)
