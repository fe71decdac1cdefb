"""The kinds of protocol fault found in the field (issue reports of peers replayed, real
apps under real clients), each as a class of inputs over the in-memory transport, for
both parsers (and both WebSocket backends where one is involved).

Kinds 7, 8 and 9 (shutdown, a client that leaves, deadlines) have their end-to-end half
in test_e2e_faults.py.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import json
from typing import Any

import pytest
from memory import PARSERS, Harness, responses, serve
from recorder import app as recorder
from ws_support import KEY, WS_IMPLS, WSHarness

from asgictl.logs import ACCESS_MESSAGE_DISCONNECTED
from asgictl.protocols.http import fields, framing


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


def served(http: str, *reads: bytes, app: Any = recorder, **options: Any) -> Harness:
    """A harness fed ``reads`` one by one, settled after each."""
    return serve(app, http, *reads, **options)


def records(h: Harness) -> list[dict[str, Any]]:
    """The recorder app's JSON records, in the order the responses were written."""
    out = []
    for response in responses(h.transport.data.replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"")):
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), response
        out.append(json.loads(body))
    return out


def status_of(h: Harness) -> int:
    return int(h.transport.data.split(b" ", 2)[1])


GET_NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


# ------------------------------------------- kind 1: an Upgrade the server does not do

H2C = (
    b"POST /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)


@pytest.mark.parametrize(
    "reads",
    [
        [H2C + b"Content-Length: 5\r\n\r\nhello" + GET_NEXT],
        [H2C + b"Content-Length: 5\r\n\r\n", b"hello" + GET_NEXT],
        [H2C + b"Content-Length: 5\r\n\r\nhe", b"llo", GET_NEXT],
        [H2C + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n" + GET_NEXT],
        [
            H2C + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n",
            b"2\r\nlo\r\n0\r\nX-T: 1\r\n\r\n",
            GET_NEXT,
        ],
        [H2C + b"Transfer-Encoding: gzip, chunked\r\n\r\n"],  # refused alike (501) as without Upgrade
    ],
    ids=["same-read", "body-later", "body-split", "chunked", "chunked-later-trailer", "gzip"],
)
def test_declined_upgrade_is_plain_http_with_its_body(http: str, reads: list[bytes]) -> None:
    h = served(http, *reads)
    if b"gzip" in reads[0]:
        assert status_of(h) == 501 and h.transport.closed
        h.close()
        return
    got = records(h)
    assert [(r["target"], r["body"]) for r in got] == [("/x", "hello"), ("/next", "")]
    assert b"connection: close" not in h.transport.data
    assert not h.transport.closed
    h.close()


@pytest.mark.parametrize(
    "upgrade",
    [
        H2C[H2C.index(b"Upgrade") :],
        b"Upgrade: foo/2\r\nConnection: upgrade\r\n",
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n",  # a POST is no WebSocket handshake
        b"Upgrade: TLS/1.2\r\nConnection: Upgrade\r\n",
        b"Upgrade: websocket\r\n",  # no Connection: upgrade (h11 pauses, llhttp does not)
    ],
)
def test_every_declined_upgrade_keeps_the_pipeline_in_order(http: str, upgrade: bytes) -> None:
    request = b"POST /u HTTP/1.1\r\nHost: a\r\n" + upgrade + b"Content-Length: 2\r\n\r\nok"
    h = served(http, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + request + request + GET_NEXT)
    got = records(h)
    assert [(r["target"], r["body"]) for r in got] == [
        ("/first", ""),
        ("/u", "ok"),
        ("/u", "ok"),
        ("/next", ""),
    ]
    assert not h.transport.closed
    h.close()


def test_many_declined_upgrades_in_one_read(http: str) -> None:
    one = b"GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
    h = Harness(recorder, http=http)
    h.feed(one * 300 + GET_NEXT)
    for _ in range(400):
        h.settle(0.2)
        if h.transport.data.count(b"HTTP/1.1 200 ") == 301:
            break
    got = records(h)
    assert len(got) == 301 and got[-1]["target"] == "/next"
    h.close()


def test_declined_upgrade_with_connection_close_says_so(http: str) -> None:
    h = served(
        http, b"GET /u HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade, close\r\n\r\n" + GET_NEXT
    )
    assert [r["target"] for r in records(h)] == ["/u"]
    assert b"connection: close" in h.transport.data and h.transport.closed
    h.close()


def test_connect_is_answered_and_nothing_after_it_is_http(http: str) -> None:
    h = served(http, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n" + GET_NEXT)
    assert [r["target"] for r in records(h)] == ["a:443"]
    assert b"connection: close" in h.transport.data and h.transport.closed
    h.close()


def test_pipelined_head_split_across_reads_is_answered(http: str) -> None:
    # The second head begins in the read that ends the first request: the request-line
    # check must not look at a read that does not start with it.
    h = served(
        http,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nUser-Agent: x y z\r\n",
        b"Host: a\r\n\r\n",
    )
    assert [r["target"] for r in records(h)] == ["/a", "/b"]
    h.close()


# ------------------------------------------- kinds 2 and 3: the app's response fields


def answering(headers: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": headers,
                "trailers": trailers is not None,
            }
        )
        if trailers is None:
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await send({"type": "http.response.body", "body": b"ok", "more_body": False})
            await send({"type": "http.response.trailers", "headers": trailers})

    return app


BAD_NAMES = [
    b"x-a: injected",
    b"x injected",
    b"",
    b"x:a",
    b"x\ta",
    b"x(a)",
    b'x"a',
    b"x/a",
    b"x@a",
    b"x\x00a",
    b"x\x7fa",
    b"x\xe9a",
    b"x\r\ny",
]
BAD_VALUES = [
    b"a\x00b",
    b"a\x01b",
    b"a\x08b",
    b"a\x0bb",
    b"a\x0cb",
    b"a\x1fb",
    b"a\x7fb",
    b"a\rb",
    b"a\nb",
    b"a\r\nset-cookie: evil",
]


@pytest.mark.parametrize(
    "field", [(n, b"v") for n in BAD_NAMES] + [(b"x-a", v) for v in BAD_VALUES], ids=repr
)
def test_response_field_outside_the_grammar_is_500_before_anything(
    http: str, field: tuple[bytes, bytes], caplog: Any
) -> None:
    h = served(
        http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering([(b"content-type", b"text/plain"), field])
    )
    assert h.transport.writes and h.transport.writes[0].startswith(b"HTTP/1.1 500 "), h.transport.data
    assert len(h.transport.writes) == 1 and h.transport.closed
    assert b"injected" not in h.transport.data and b"evil" not in h.transport.data
    assert sum(r.levelname == "ERROR" for r in caplog.records) == 1
    h.close()


@pytest.mark.parametrize(
    "field",
    [
        (b"X-Fine", b"a b\tc"),
        (b"x-obs", b"caf\xe9"),
        (b"x-empty", b""),
        (b"!#$%&'*+-.^_`|~09azAZ", b"~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"),
        (b"X-Leading", b" padded\t"),
    ],
    ids=repr,
)
def test_response_fields_inside_the_grammar_are_written(http: str, field: tuple[bytes, bytes]) -> None:
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering([field]))
    assert h.transport.data.startswith(b"HTTP/1.1 200 ")
    assert b"\r\n" + field[0] + b": " + field[1] + b"\r\n" in h.transport.data
    h.close()


def test_checked_field_values_are_cached_and_bad_ones_never(http: str, monkeypatch: Any) -> None:
    # A value is scanned once and then found in the cache; a refused one is never kept,
    # so it is refused every time; long values and those past the cache's bound are
    # scanned on every response.
    monkeypatch.setattr(fields, "KNOWN_VALUES", set())
    monkeypatch.setattr(fields, "KNOWN_VALUES_MAX", 3)
    monkeypatch.setattr(framing, "KNOWN_VALUES", fields.KNOWN_VALUES)
    scans: list[bytes] = []
    count = fields.count_line_breaks
    monkeypatch.setattr(fields, "count_line_breaks", lambda value: scans.append(value) or count(value))
    long = b"v" * (fields.KNOWN_VALUE_SIZE + 1)
    good = [(b"x-a", b"one"), (b"x-b", long), (b"x-c", bytearray(b"two")), (b"x-d", b"three")]
    for _ in range(2):
        h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering(good))
        assert h.transport.data.startswith(b"HTTP/1.1 200 ") and b"x-b: " + long + b"\r\n" in h.transport.data
        h.close()
    assert fields.KNOWN_VALUES == {b"one", b"three"}
    assert scans == [b"one", long, b"two", b"three", long, b"two"]
    for _ in range(2):
        h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering([(b"x-a", b"a\r\nx-evil: 1")]))
        assert h.transport.data.startswith(b"HTTP/1.1 500 ") and b"x-evil" not in h.transport.data
        h.close()
    del scans[:]
    h = served(
        http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering([(b"x-e", b"four"), (b"x-f", b"five")])
    )
    assert h.transport.data.startswith(b"HTTP/1.1 200 ")
    h.close()
    assert fields.KNOWN_VALUES == {b"one", b"three", b"four"} and scans == [b"four", b"five"]


def test_a_str_field_value_is_a_500(http: str) -> None:
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering([(b"x-a", "text")]))  # type: ignore[list-item]
    assert h.transport.data.startswith(b"HTTP/1.1 500 ") and b"x-a" not in h.transport.data
    h.close()


@pytest.mark.parametrize(
    "trailer",
    [(n, b"v") for n in (b"x-a: injected", b"x y", b"")]
    + [(b"x-t", v) for v in (b"a\x00b", b"a\r\nx: y", b"a\x7f")]
    + [(b"content-length", b"5"), (b"Transfer-Encoding", b"chunked")],
    ids=repr,
)
def test_bad_trailer_cuts_the_response(http: str, trailer: tuple[bytes, bytes]) -> None:
    h = served(
        http,
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        app=answering([(b"trailer", b"x-t")], [trailer]),
    )
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in data
    # The head and body went out: the only signal left is a cut connection, without the
    # chunked message's end.
    assert h.transport.closed and not data.endswith(b"\r\n\r\n")
    assert b"injected" not in data and b"x: y" not in data
    h.close()


def test_good_trailer_is_written(http: str) -> None:
    h = served(
        http,
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
        app=answering([(b"trailer", b"x-checksum")], [(b"x-checksum", b"abc def")]),
    )
    assert h.transport.data.endswith(b"0\r\nx-checksum: abc def\r\n\r\n")
    assert not h.transport.closed
    h.close()


@pytest.mark.parametrize(
    "lengths",
    [
        [b"2", b"3"],
        [b"+2"],
        [b"1_0"],
        [b"-1"],
        [b" 2"],
        [b"2 "],
        [b"2, 2"],
        [b"0x2"],
        [b""],
        [b"\xd9\xa2"],  # an Arabic-Indic digit: int() would read it
        [b"2", b"02", b"3"],
    ],
    ids=repr,
)
def test_app_content_length_must_be_one_number(http: str, lengths: list[bytes]) -> None:
    headers = [(b"content-length", v) for v in lengths]
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering(headers))
    assert h.transport.data.startswith(b"HTTP/1.1 500 ") and h.transport.closed
    assert len(h.transport.writes) == 1
    h.close()


def test_identical_content_lengths_fold_into_one(http: str) -> None:
    h = served(
        http,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + GET_NEXT,
        app=answering([(b"content-length", b"2"), (b"Content-Length", b"2")]),
    )
    assert h.transport.data.count(b"HTTP/1.1 200 ") == 2
    assert h.transport.data.lower().count(b"content-length: 2\r\n") == 2  # one per response
    assert not h.transport.closed
    h.close()


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"2"), (b"transfer-encoding", b"chunked")],
        [(b"transfer-encoding", b"gzip")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked, chunked")],
    ],
    ids=repr,
)
def test_app_framing_the_server_cannot_honour_is_refused(
    http: str, headers: list[tuple[bytes, bytes]]
) -> None:
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering(headers))
    assert h.transport.data.startswith(b"HTTP/1.1 500 ") and h.transport.closed
    h.close()


def test_app_chunked_and_connection_close_with_whitespace(http: str) -> None:
    headers = [(b"Transfer-Encoding", b" Chunked\t"), (b"Connection", b"keep-alive ,\tClose")]
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=answering(headers))
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked\r\n" in data
    assert data.endswith(b"2\r\nok\r\n0\r\n\r\n") and b"connection: close\r\n" in data
    assert h.transport.closed
    h.close()


def test_body_longer_than_the_apps_content_length_cuts_the_connection(http: str) -> None:
    h = served(
        http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + GET_NEXT, app=answering([(b"content-length", b"1")])
    )
    assert h.transport.data.startswith(b"HTTP/1.1 500 ") and h.transport.closed
    h.close()


# --------------------------------------------------------- kind 4: Host is validated

BAD_HOSTS = [
    b"exa mple.org",
    b"exa\tmple.org",
    b"a/b",
    b"a?b",
    b"a#b",
    b"a@b",
    b"user@a",
    b"a:b",
    b"a:80:80",
    b"a:-1",
    b"a:65536",
    b"a:8x",
    b"[::1",
    b"::1",
    b"[::g]",
    b"[1.2.3.4]",
    b"[::1]x",
    b"[::1]:x",
    b"a%zz",
    b"a%2",
    b"caf\xe9.example",
    b'a"b',
    b"a<b>",
    b"a\\b",
    b"a{b}",
    b"a|b",
    b"a^b",
    b"a`b",
]
GOOD_HOSTS = [
    b"example.org",
    b"example.org:8080",
    b"EXAMPLE.org.",
    b"127.0.0.1",
    b"127.0.0.1:80",
    b"[::1]",
    b"[::1]:8000",
    b"[2001:db8::ff00:42:8329]",
    b"[::ffff:192.0.2.1]:443",
    b"[v1.fe80::a+en1]",
    b"xn--caf-dma.example",
    b"a_b-c~d",
    b"a%20b",
    b"a!$&'()*+,;=b",
    b"example.org:",
    b"",
]


@pytest.mark.parametrize("host", BAD_HOSTS, ids=repr)
def test_invalid_host_is_400_and_nothing_after_it(http: str, host: bytes) -> None:
    bad = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    h = served(http, bad + GET_NEXT)
    assert status_of(h) == 400 and h.transport.closed
    assert h.transport.data.count(b"HTTP/1.1 ") == 1
    h.close()
    # Behind a good request: that one is answered (as the last), nothing after the bad one.
    h = served(http, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n" + bad + GET_NEXT)
    assert h.transport.data.startswith(b"HTTP/1.1 200 ") and h.transport.closed
    assert b'"/next"' not in h.transport.data and b"HTTP/1.1 200 " not in h.transport.data[12:]
    h.close()


@pytest.mark.parametrize("host", GOOD_HOSTS, ids=repr)
def test_valid_host_forms_are_served(http: str, host: bytes) -> None:
    h = served(http, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert records(h)[0]["headers"] == [["host", host.decode("latin-1")]]
    h.close()


@pytest.mark.parametrize(
    "target",
    [
        b"http://example.org/p",
        b"http://example.org:8080/p?q",
        b"https://[::1]:8443/",
        b"http://u:p@example.org/",
    ],
)
def test_absolute_form_with_any_valid_host(http: str, target: bytes) -> None:
    for host in (b"", b"other.example", b"[::1]"):
        h = served(http, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert status_of(h) == 200, (target, host, h.transport.data)
        h.close()


@pytest.mark.parametrize(
    "target",
    [
        b"http://exa%zzmple/",
        b"http:///p",
        b"http://:80/p",
        b"http://[::1/p",
        b"http://a:99999/",
        b"http://a:b/",
        b"ftp://example.org/",
        b"http://a{b}/",
    ],
)
def test_absolute_form_with_a_bad_authority_is_400(http: str, target: bytes) -> None:
    h = served(http, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n" + GET_NEXT)
    assert status_of(h) == 400 and h.transport.closed and h.transport.data.count(b"HTTP/1.1 ") == 1
    h.close()


@pytest.mark.parametrize("target", [b"a b:443", b":443", b"a:", b"a", b"/path", b"[::1]:x", b"a:70000"])
def test_connect_with_a_bad_authority_is_400(http: str, target: bytes) -> None:
    if b" " in target:
        target = target.replace(b" ", b"%")  # a space would break the request line itself
    h = served(http, b"CONNECT " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(h) == 400 and h.transport.closed
    h.close()


# ----------------------------------------- kind 5: optional whitespace, both parsers

OWS = [b" ", b"\t", b" \t", b"\t \t", b""]


@pytest.mark.parametrize("before", OWS, ids=repr)
@pytest.mark.parametrize("after", OWS, ids=repr)
def test_transfer_encoding_with_ows(http: str, before: bytes, after: bytes) -> None:
    head = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:" + before + b"chunked" + after + b"\r\n\r\n"
    body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    for reads in ([head + body + GET_NEXT], [head, body + GET_NEXT], [head + body[:4], body[4:], GET_NEXT]):
        h = served(http, *reads)
        assert [(r["target"], r["body"]) for r in records(h)] == [("/c", "abcde"), ("/next", "")], reads
        h.close()


@pytest.mark.parametrize("before", OWS, ids=repr)
@pytest.mark.parametrize("after", OWS, ids=repr)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"Content-Length", b"3"),
        (b"Host", b"example.org:80"),
        (b"Connection", b"keep-alive"),
        (b"Expect", b"100-continue"),
        (b"Transfer-Encoding", b"gzip ,\tchunked"),
    ],
)
def test_every_policy_field_is_trimmed_alike(
    http: str, before: bytes, after: bytes, field: bytes, value: bytes
) -> None:
    host = b"" if field == b"Host" else b"Host: a\r\n"
    body = b"abc" if field in (b"Content-Length", b"Expect") else b""
    extra = b"Content-Length: 3\r\n" if field == b"Expect" else b""
    h = served(
        http,
        b"POST /f HTTP/1.1\r\n"
        + host
        + extra
        + field
        + b":"
        + before
        + value
        + after
        + b"\r\n\r\n"
        + body
        + GET_NEXT,
    )
    data = h.transport.data
    if field == b"Transfer-Encoding":  # trimmed, it is a coding the server does not decode
        assert status_of(h) == 501 and h.transport.closed
    else:
        got = records(h)
        assert [(r["target"], r["body"]) for r in got] == [("/f", body.decode()), ("/next", "")], data
        headers = dict(got[0]["headers"])
        assert headers[field.decode().lower()] == value.decode()  # the app sees it trimmed too
    h.close()


@pytest.mark.parametrize("before", OWS, ids=repr)
@pytest.mark.parametrize("after", OWS, ids=repr)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_connection_close_and_keep_alive_with_ows(
    http: str, before: bytes, after: bytes, version: bytes
) -> None:
    close = (
        b"GET /c HTTP/"
        + version
        + b"\r\nHost: a\r\nConnection:"
        + before
        + b"foo ,\tClose"
        + after
        + b"\r\n\r\n"
    )
    h = served(http, close + GET_NEXT)
    assert [r["target"] for r in records(h)] == ["/c"] and h.transport.closed
    h.close()
    keep = (
        b"GET /k HTTP/"
        + version
        + b"\r\nHost: a\r\nConnection:"
        + before
        + b"Keep-Alive"
        + after
        + b"\r\n\r\n"
    )
    h = served(http, keep + GET_NEXT)
    assert [r["target"] for r in records(h)] == ["/k", "/next"] and not h.transport.closed
    h.close()


@pytest.mark.parametrize("token", [b"x-close", b"closed", b"close-ish", b"keep-alive-x"])
def test_connection_tokens_are_whole_tokens(http: str, token: bytes) -> None:
    h = served(http, b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: " + token + b"\r\n\r\n" + GET_NEXT)
    assert [r["target"] for r in records(h)] == ["/t", "/next"] and not h.transport.closed
    h.close()


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (b"chunked, chunked", 400),
        (b"chunked ,\tchunked", 400),
        (b"gzip, chunked", 501),
        (b",chunked", 400),
        (b"gzip,,chunked", 400),
        (b"chunked,", 400),
        (b"gzip\t,  chunked", 501),
    ],
)
def test_transfer_encoding_lists_are_judged_alike(http: str, value: bytes, status: int) -> None:
    h = served(http, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value + b"\r\n\r\n0\r\n\r\n")
    assert status_of(h) == status, h.transport.data
    h.close()


# ------------------------------------- empty lines before a request line, every parser

GET_A = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
#: RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request line;
#: llhttp ignores any number, and every adapter does the same.
EMPTY_LINES = {
    "one": [b"\r\n" + GET_A],
    "three": [b"\r\n\r\n\r\n" + GET_A],
    "own-read": [b"\r\n", b"\r\n" + GET_A],
    "between-pipelined": [GET_A + b"\r\n\r\n" + GET_NEXT],
    "after-a-body": [b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r\n" + GET_NEXT],
    # an empty line's CR and LF in different reads
    "cr-then-lf": [b"\r", b"\n" + GET_A],
    "cr-lf-cr-then-lf": [b"\r\n\r", b"\n" + GET_A],
    "cr-alone-then-lf-alone": [b"\r", b"\n", GET_A],
    "cr-then-lf-and-more": [b"\r", b"\n\r\n\r\n" + GET_A],
    "cr-after-pipelined": [GET_A + b"\r", b"\n" + GET_NEXT],
    "cr-after-a-body": [b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r", b"\n" + GET_NEXT],
}


@pytest.mark.parametrize("reads", EMPTY_LINES.values(), ids=EMPTY_LINES)
def test_empty_lines_before_a_request_line_are_ignored(http: str, reads: list[bytes]) -> None:
    h = served(http, *reads)
    paths = [record["target"] for record in records(h)]
    expected = 2 if b"/next" in b"".join(reads) else 1
    assert len(paths) == expected and paths[0] == "/a", h.transport.data
    assert not h.transport.closed
    h.close()


# ------------------------------------------------- kind 10: HTTP/2's connection preface


PREFACES = {
    "preface": [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    "preface+settings": [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"],
    "split": [b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"],
}
#: The preface's HTTP/1.1-shaped first part, then not the rest of it: an HTTP/2 client
#: with an invalid preface. (Bytes that do not start "PRI * HTTP/2.0", such as h2spec
#: 3.5/2's "INVALID CONNECTION PREFACE", are an HTTP/1.1 request on a cleartext port
#: that serves both, and get HTTP/1.1's 400.)
BROKEN_PREFACES = {
    "bad-preface": [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"],
    "bad-preface-split": [b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\r"],
    "bad-last-byte": [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ"],
}
#: Requests with the PRI method that are not HTTP/2's preface at all.
NOT_PREFACES = {
    "with-host": [b"PRI * HTTP/2.0\r\nHost: a\r\n\r\n"],
    "pri-1.1": [b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n"],
}
ALL_PRI = {**PREFACES, **BROKEN_PREFACES, **NOT_PREFACES}


@pytest.mark.parametrize("reads", ALL_PRI.values(), ids=ALL_PRI)
def test_http2_preface_gets_one_answer_with_http2_off(http: str, reads: list[bytes]) -> None:
    h = served(http, *reads, http2=False)
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"), data
    assert data.endswith(b"HTTP/2 is not served here: use HTTP/1.1\n") and h.transport.closed
    h.close()


@pytest.mark.parametrize("reads", PREFACES.values(), ids=PREFACES)
def test_http2_preface_is_served_with_http2_on(http: str, reads: list[bytes]) -> None:
    h = served(http, *reads)
    data = h.transport.data
    # The server's connection preface: a SETTINGS frame (type 4 on stream 0) first.
    assert data[3:4] == b"\x04" and data[5:9] == b"\x00\x00\x00\x00", data
    assert not h.transport.closed
    h.close()


@pytest.mark.parametrize("reads", NOT_PREFACES.values(), ids=NOT_PREFACES)
def test_a_pri_request_that_is_no_preface_is_400_with_http2_on(http: str, reads: list[bytes]) -> None:
    h = served(http, *reads)
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert data.endswith(b"Invalid HTTP/2 connection preface\n") and h.transport.closed
    h.close()


@pytest.mark.parametrize("engine", ["h2", "zttp"])
@pytest.mark.parametrize("reads", BROKEN_PREFACES.values(), ids=BROKEN_PREFACES)
def test_a_broken_preface_is_an_http2_connection_error(http: str, engine: str, reads: list[bytes]) -> None:
    # RFC 9113 3.4: an invalid preface is a connection error of type PROTOCOL_ERROR.
    if engine == "zttp":
        pytest.importorskip("zttp")
    h = served(http, *reads, http2_engine=engine)
    data = h.transport.data
    assert b"HTTP/1.1" not in data and h.transport.closed, data
    # The last frame: GOAWAY (type 7, stream 0, 8 bytes) with error code PROTOCOL_ERROR (1).
    assert data[-17:-8] == b"\x00\x00\x08\x07\x00\x00\x00\x00\x00", data
    assert data[-4:] == b"\x00\x00\x00\x01", data
    h.close()


def test_other_http2_requests_are_505_too(http: str) -> None:
    h = served(http, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    assert status_of(h) == 505 and h.transport.closed
    h.close()


# ------------------------------ kind 6: one judge of the WebSocket opening handshake

WS_HEAD = b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
VERSION_13 = b"Sec-WebSocket-Version: 13\r\n"
KEY_LINE = b"Sec-WebSocket-Key: " + KEY + b"\r\n"


def ws_answer(ws: str, http: str, fields: bytes, app: Any = None) -> tuple[bytes, list[Any]]:
    """The head of the server's answer to ``WS_HEAD + fields`` and the scopes the app saw."""
    scopes: list[Any] = []

    async def accepting(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    h = WSHarness(app or accepting, ws, http=http)
    h.feed(WS_HEAD + fields + b"\r\n")
    h.run_until(lambda: b"\r\n\r\n" in h.transport.data)
    head = h.transport.data.partition(b"\r\n\r\n")[0]
    h.close()
    return head, scopes


REFUSED_HANDSHAKES = [
    (VERSION_13, 400),  # no key
    (VERSION_13 + KEY_LINE + KEY_LINE, 400),
    (VERSION_13 + b"Sec-WebSocket-Key: " + base64.b64encode(b"12345") + b"\r\n", 400),
    (VERSION_13 + b"Sec-WebSocket-Key: " + base64.b64encode(b"x" * 17) + b"\r\n", 400),
    (VERSION_13 + b"Sec-WebSocket-Key: " + base64.b64encode(b"x" * 16).rstrip(b"=") + b"\r\n", 400),
    (VERSION_13 + b"Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n", 400),
    (VERSION_13 + b"Sec-WebSocket-Key: \r\n", 400),
    (KEY_LINE, 426),  # no version
    (KEY_LINE + b"Sec-WebSocket-Version: 8\r\n", 426),
    (KEY_LINE + b"Sec-WebSocket-Version: 14\r\n", 426),
    (KEY_LINE + b"Sec-WebSocket-Version: 13, 8\r\n", 426),
    (KEY_LINE + b"Sec-WebSocket-Version: thirteen\r\n", 426),
    (KEY_LINE + VERSION_13 + VERSION_13, 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Protocol: chat room\r\n", 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Protocol: chat, [x]\r\n", 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Protocol: ,\r\n", 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: permessage-deflate;\r\n", 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: ; x\r\n", 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: permessage-deflate; a=b=c\r\n", 400),
    (KEY_LINE + VERSION_13 + b'Sec-WebSocket-Extensions: permessage-deflate; a="b\r\n', 400),
    (KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: x y\r\n", 400),
]


@pytest.mark.parametrize("ws", WS_IMPLS)
@pytest.mark.parametrize(("fields", "status"), REFUSED_HANDSHAKES, ids=repr)
def test_bad_handshakes_are_refused_alike(http: str, ws: str, fields: bytes, status: int) -> None:
    head, scopes = ws_answer(ws, http, fields)
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert (b"\r\nsec-websocket-version: 13" in head.lower()) is (status == 426)
    assert not scopes  # refused before the app (and the library) saw it


ACCEPTED_HANDSHAKES = [
    KEY_LINE + VERSION_13,
    b"Sec-WebSocket-Key:\t " + KEY + b" \t\r\nSec-WebSocket-Version: \t13\t\r\n",
    KEY_LINE + VERSION_13 + b"Sec-WebSocket-Protocol: chat, , superchat\r\nSec-WebSocket-Protocol: x\r\n",
    KEY_LINE + VERSION_13 + b"Origin: http://elsewhere.example\r\n",
    KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: x-unknown; a=1; b, other\r\n",
    KEY_LINE + VERSION_13 + b'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits="10"\r\n',
]


@pytest.mark.parametrize("ws", WS_IMPLS)
@pytest.mark.parametrize("fields", ACCEPTED_HANDSHAKES, ids=repr)
def test_valid_handshakes_are_accepted_alike(http: str, ws: str, fields: bytes) -> None:
    head, scopes = ws_answer(ws, http, fields)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert len(scopes) == 1


@pytest.mark.parametrize("ws", WS_IMPLS)
@pytest.mark.parametrize(
    ("offer", "negotiated"),
    [
        (b"permessage-deflate", True),
        (b"permessage-deflate; client_max_window_bits", True),
        (b"permessage-deflate; server_max_window_bits=10; client_no_context_takeover", True),
        (b'permessage-deflate; client_max_window_bits="12"', True),
        (b"permessage-deflate; server_max_window_bits", False),
        (b"permessage-deflate; server_max_window_bits=8", False),
        (b"permessage-deflate; client_max_window_bits=abc", False),
        (b"permessage-deflate; client_max_window_bits=16", False),
        (b"permessage-deflate; server_no_context_takeover=1", False),
        (b"permessage-deflate; unknown", False),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", False),
        (b"x-other, permessage-deflate; client_max_window_bits=abc", False),
    ],
)
def test_deflate_offers_are_judged_alike(http: str, ws: str, offer: bytes, negotiated: bool) -> None:
    head, _ = ws_answer(ws, http, KEY_LINE + VERSION_13 + b"Sec-WebSocket-Extensions: " + offer + b"\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert (b"permessage-deflate" in head.lower()) is negotiated, head


@pytest.mark.parametrize("ws", WS_IMPLS)
@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.accept", "subprotocol": "not-offered"},
        {"type": "websocket.accept", "headers": [(b"x-a: injected", b"v")]},
        {"type": "websocket.accept", "headers": [(b"x-a", b"v\r\nx-b: injected")]},
        {"type": "websocket.accept", "headers": [(b"x-a", b"v\x00")]},
        {"type": "websocket.http.response.start", "status": 403, "headers": [(b"x-a", b"\r\ninjected: 1")]},
        {"type": "websocket.http.response.start", "status": 403, "headers": [(b"content-length", b"+1")]},
    ],
    ids=repr,
)
def test_the_apps_handshake_answer_is_held_to_the_grammar(
    http: str, ws: str, message: dict[str, Any]
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(message)
        await send({"type": "websocket.http.response.body", "body": b"x"})

    head, _ = ws_answer(ws, http, KEY_LINE + VERSION_13 + b"Sec-WebSocket-Protocol: chat\r\n", app=app)
    assert head.startswith(b"HTTP/1.1 500 ") and b"injected" not in head, head


# ------------------------------------ kind 7: the server going away ends a stream


async def sse(scope: Any, receive: Any, send: Any) -> None:
    """Head, one event, then wait for the end: what an SSE endpoint does."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    )
    await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
    heard.append("disconnect")


heard: list[str] = []


def going_away(h: Harness) -> None:
    """What the Server does to a busy connection when it stops (TERM, HUP, max requests)."""
    h.state.shutting_down = True
    h.protocol.shutdown()


def test_shutdown_tells_a_waiting_stream_at_once(http: str, caplog: Any) -> None:
    caplog.set_level("INFO", logger="asgictl")
    heard.clear()
    h = served(http, b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n", app=sse, access_log=True)
    assert h.transport.data.endswith(b"data: one\n\n\r\n") and not h.transport.closed
    going_away(h)
    h.settle(0.5)
    assert heard == ["disconnect"] and h.state.active_requests == 0
    assert h.transport.closed  # the stream is cut where it is: no last chunk
    assert not h.transport.data.endswith(b"0\r\n\r\n")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    access = [r for r in caplog.records if r.name == "asgictl.access"]
    assert len(access) == 1 and access[0].args[4] == 200 and not getattr(access[0], "disconnected", False)
    h.close()


def test_shutdown_after_the_body_then_a_later_receive(http: str) -> None:
    seen: list[str] = []

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message["body"].decode())
        while message.get("more_body"):
            message = await receive()
            seen.append(message["body"].decode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await asyncio.sleep(0.05)  # the stop happens now
        seen.append((await receive())["type"])

    h = served(http, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc", app=reader)
    going_away(h)  # the body is not complete yet: the app must still get the rest
    h.feed(b"def")
    h.settle(1.0)
    assert seen == ["abc", "def", "http.disconnect"]
    h.close()


def test_shutdown_does_not_disturb_a_response_in_progress(http: str) -> None:
    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"complete"})

    h = Harness(slow, http=http)
    h.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    going_away(h)
    h.settle(1.0)
    assert h.transport.data.endswith(b"\r\n\r\ncomplete") and b"connection: close" in h.transport.data
    h.close()


def test_shutdown_before_any_response_is_503(http: str) -> None:
    async def long_poll(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    h = served(http, b"GET /poll HTTP/1.1\r\nHost: a\r\n\r\n", app=long_poll)
    going_away(h)
    h.settle(0.5)
    assert h.transport.data.startswith(b"HTTP/1.1 503 ") and h.transport.closed
    h.close()


def test_shutdown_with_only_a_start_held_back_is_503(http: str) -> None:
    async def started(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # held back
        while (await receive())["type"] != "http.disconnect":
            pass

    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=started)
    assert h.transport.data == b""
    going_away(h)
    h.settle(0.5)
    assert h.transport.data.startswith(b"HTTP/1.1 503 ") and h.transport.closed
    h.close()


# -------------------------------------------- kind 8: a client that leaves is no error


def observed(h: Harness) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    h.state.observe_responses(lambda *args: calls.append(args))
    return calls


async def streams_until_told(scope: Any, receive: Any, send: Any) -> None:
    """Starlette's StreamingResponse: a stream, and a receive() waiting for the end."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


@pytest.mark.parametrize("how", ["eof", "lost"])
def test_client_leaving_a_stream_is_one_access_line(http: str, how: str, caplog: Any) -> None:
    caplog.set_level("DEBUG", logger="asgictl")
    h = served(http, b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n", app=streams_until_told, access_log=True)
    calls = observed(h)
    if how == "eof":
        h.protocol.eof_received()  # curl --max-time: FIN first
    else:
        h.protocol.connection_lost(ConnectionResetError())
    h.settle(0.5)
    assert not [r for r in caplog.records if r.levelno >= 30]
    access = [r for r in caplog.records if r.name == "asgictl.access"]
    assert len(access) == 1 and access[0].args[4] == 200 and access[0].msg == ACCESS_MESSAGE_DISCONNECTED
    assert [(c[0], c[2]) for c in calls] == [(200, True)]
    assert h.state.active_requests == 0 and h.transport.closed
    h.close()


@pytest.mark.parametrize("shape", ["plain", "resend", "group"])
def test_disconnect_escaping_the_app_is_one_debug_line(http: str, shape: str, caplog: Any) -> None:
    caplog.set_level("DEBUG", logger="asgictl")

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(1000):
            try:
                await send({"type": "http.response.body", "body": b"row\n", "more_body": True})
            except OSError as exc:
                if shape == "resend":  # Datasette: write the error into the stream
                    await send({"type": "http.response.body", "body": str(exc).encode()})
                if shape == "group" and hasattr(builtins, "ExceptionGroup"):
                    raise builtins.ExceptionGroup("task group", [exc]) from None
                raise
            await asyncio.sleep(0.01)

    h = Harness(stream, http=http, access_log=True)
    h.feed(b"GET /t.csv HTTP/1.1\r\nHost: a\r\n\r\n")
    h.settle(0.05)
    h.protocol.connection_lost(ConnectionResetError())
    h.settle(1.0)
    records = [r for r in caplog.records if r.name == "asgictl.error"]
    assert [r.levelname for r in records] == ["DEBUG"] and not records[0].exc_info
    assert "client disconnected" in records[0].getMessage()
    access = [r for r in caplog.records if r.name == "asgictl.access"]
    assert len(access) == 1 and access[0].args[4] == 200 and access[0].msg == ACCESS_MESSAGE_DISCONNECTED
    h.close()


def test_client_leaving_before_any_response_is_499(http: str, caplog: Any) -> None:
    async def long_poll(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    caplog.set_level("INFO", logger="asgictl")
    h = served(http, b"GET /poll HTTP/1.1\r\nHost: a\r\n\r\n", app=long_poll, access_log=True)
    calls = observed(h)
    h.protocol.connection_lost(None)
    h.settle(0.5)
    access = [r for r in caplog.records if r.name == "asgictl.access"]
    assert len(access) == 1 and access[0].args[4] == 499 and access[0].msg == ACCESS_MESSAGE_DISCONNECTED
    assert [(c[0], c[2]) for c in calls] == [(499, True)]
    assert not [r for r in caplog.records if r.levelno >= 30]
    h.close()


def test_an_incomplete_response_with_the_client_there_is_still_an_error(http: str, caplog: Any) -> None:
    async def forgetful(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", app=forgetful)
    assert any(
        "without completing response" in r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    )
    assert h.transport.closed
    h.close()


# ------------------------------------------- kind 9: deadlines, a reader that stalls


def test_a_client_that_stops_reading_is_cut_and_send_raises(http: str) -> None:
    errors: list[BaseException] = []

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(100):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
        except OSError as exc:
            errors.append(exc)
            raise

    h = Harness(big, http=http, timeout_send=5)
    h.transport.buffered = 10_000_000  # the client stopped reading: the buffer is full
    h.protocol.pause_writing()
    h.feed(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    h.settle(0.2)
    assert h.state.active_requests == 1  # the app waits in send()
    start = h.loop.time()
    for second in range(1, 5):
        h.protocol.check_idle(start + second)
        h.transport.buffered -= 1000  # it still takes a little: no deadline yet
    assert not h.transport.aborted
    for second in range(5, 11):
        h.protocol.check_idle(start + second)  # it took nothing since
    assert h.transport.aborted
    h.settle(1.0)
    assert len(errors) == 1 and h.state.active_requests == 0
    h.close()


def test_send_deadline_zero_waits_forever(http: str) -> None:
    h = served(http, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout_send=0)
    h.transport.buffered = 100
    start = h.loop.time()
    for second in range(1, 100, 10):
        h.protocol.check_idle(start + second)
    assert not h.transport.aborted
    h.close()


def test_first_head_deadline_runs_from_accept(http: str) -> None:
    h = Harness(recorder, http=http, timeout_header_read=5, timeout_keep_alive=100)
    accepted = h.loop.time()  # the protocol was made at accept (before a TLS handshake)
    h.protocol.check_idle(accepted + 4)
    h.feed(b"GET / HTTP/1.1\r\n")  # the head starts 4 s after accept
    h.protocol.check_idle(accepted + 5)
    assert h.transport.closed and status_of(h) == 408
    h.close()


@pytest.mark.parametrize("ws", WS_IMPLS)
def test_a_websocket_peer_that_stops_reading_is_cut(ws: str) -> None:
    async def pusher(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    h = WSHarness(pusher, ws, timeout_send=3)
    h.feed(WS_HEAD + KEY_LINE + VERSION_13 + b"\r\n")
    h.run_until(lambda: h.transport.data.startswith(b"HTTP/1.1 101 "))
    h.transport.buffered = 1_000_000
    start = h.loop.time()
    for second in range(1, 5):
        h.ws.check_idle(start + second)
    assert h.transport.aborted
    h.close()
