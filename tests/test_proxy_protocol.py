"""The PROXY protocol (v1 text, v2 binary): the parser alone, then the reader in front of
both HTTP/1.1 parsers over the in-memory transport.

The e2e tests with HAProxy, the protocol's reference implementation, are in
test_e2e_proxy_protocol.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import pytest
from memory import PARSERS, Harness

from asgictl.config import Config, ConfigError
from asgictl.protocols.proxy_protocol import V2_SIGNATURE, InvalidProxyHeader, parse, starts_like_a_header

REQUEST = b"GET /who HTTP/1.1\r\nHost: example\r\n\r\n"


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v2_ipv4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport))


def v2_ipv6(src: str, dst: str, sport: int, dport: int) -> bytes:
    addresses = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2(1, 0x21, addresses + struct.pack("!HH", sport, dport))


# ----------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("data", "client", "server"),
    [
        (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", ("192.0.2.1", 56324), ("198.51.100.2", 443)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n", ("2001:db8::1", 0), ("2001:db8::2", 65535)),
        (v2_ipv4("192.0.2.1", "198.51.100.2", 12345, 443), ("192.0.2.1", 12345), ("198.51.100.2", 443)),
        (v2_ipv6("2001:db8::1", "2001:db8::2", 54321, 80), ("2001:db8::1", 54321), ("2001:db8::2", 80)),
    ],
)
def test_parse_gives_the_addresses_and_the_length(data: bytes, client: Any, server: Any) -> None:
    header, used = parse(data + b"GET", "auto")  # type: ignore[misc]
    assert (header.client, header.server, header.local) == (client, server, False)
    assert used == len(data)


def test_v2_tlvs_are_skipped_and_unix_addresses_give_the_server_path() -> None:
    tlv = b"\x01\x00\x02h2"  # PP2_TYPE_ALPN
    data = v2(1, 0x11, socket.inet_aton("192.0.2.1") * 2 + struct.pack("!HH", 1, 2), tlv)
    header, used = parse(data, "v2")  # type: ignore[misc]
    assert header.client == ("192.0.2.1", 1) and used == len(data)
    unix = v2(1, 0x31, b"/tmp/client".ljust(108, b"\0") + b"/run/app.sock".ljust(108, b"\0"))
    header, _ = parse(unix, "v2")  # type: ignore[misc]
    assert header.client is None and header.server == ("/run/app.sock", None)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        v2(0, 0x00, b""),  # LOCAL: a health check of the proxy's own
        v2(1, 0x00, b""),  # PROXY with AF_UNSPEC
    ],
)
def test_headers_that_keep_the_connections_own_addresses(data: bytes) -> None:
    header, used = parse(data, "auto")  # type: ignore[misc]
    assert header.local and used == len(data)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443",  # no line end yet
        b"PROX",
        V2_SIGNATURE[:5],
        v2_ipv4("192.0.2.1", "198.51.100.2", 1, 2)[:20],  # address block not all here
    ],
)
def test_an_incomplete_header_asks_for_more(data: bytes) -> None:
    assert parse(data, "auto") is None


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.168.0.1 192.16...\r\n",
        b"PROXY TCP4 192.168.0.1 192.168.0.11 65iii 100000\r\n",
        b"PROXY TCP4 not-an-ip 192.168.0.11 56324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",  # leading zero
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",  # out of range
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 443\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 443\r\n",
        b"PROXY TCP4 192.0.2.1  198.51.100.2 1 443\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443 extra\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n",  # LF alone
        b"PROXY " + b"A" * 120,  # longer than 107 bytes without CRLF
        b"GET / HTTP/1.1\r\n",  # no header where one is required
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\0" * 12,  # version 3
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\0" * 12,  # command 2
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4,  # IPv4 block too short
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\0" * 12,  # IPv6 block too short
        V2_SIGNATURE + b"\x21\x41\x00\x00",  # unknown family
        V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\0" * 12,  # unknown transport
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidProxyHeader):
        parse(data, "auto")


def test_the_mode_picks_the_version() -> None:
    with pytest.raises(InvalidProxyHeader):
        parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n", "v2")
    with pytest.raises(InvalidProxyHeader):
        parse(v2_ipv4("192.0.2.1", "198.51.100.2", 1, 2), "v1")


def test_starts_like_a_header() -> None:
    assert starts_like_a_header(b"GET / HTTP/1.1") is False
    assert starts_like_a_header(b"\r\n\r\nGET") is False
    assert starts_like_a_header(b"PRO") is None
    assert starts_like_a_header(b"\r\n") is None
    assert starts_like_a_header(b"PROXY TCP4") is True
    assert starts_like_a_header(V2_SIGNATURE) is True


def test_the_option_takes_gunicorns_values() -> None:
    for value in ("off", "v1", "v2", "auto"):
        assert Config("app:app", proxy_protocol=value).proxy_protocol == value
    with pytest.raises(ConfigError, match="--proxy-protocol"):
        Config("app:app", proxy_protocol="v3")


# ------------------------------------------------------------ the reader, in memory


async def who(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]})
    await send({"type": "http.response.body", "body": body})


def harness(http: str, mode: str, **options: Any) -> Harness:
    return Harness(who, http=http, proxy_protocol=mode, **options)


def answer(h: Harness) -> dict[str, Any]:
    data = h.transport.data
    assert data.startswith(b"HTTP/1.1 200 "), data
    return json.loads(data.partition(b"\r\n\r\n")[2])


@pytest.fixture(params=PARSERS)
def http(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_v1_header_sets_client_and_server(http: str, mode: str) -> None:
    h = harness(http, mode)
    h.feed(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST)
    h.settle()
    assert answer(h) == {"client": ["192.0.2.1", 56324], "server": ["198.51.100.2", 443]}
    h.close()


@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_v2_header_split_over_reads_sets_client_and_server(http: str, mode: str) -> None:
    h = harness(http, mode)
    data = v2_ipv6("2001:db8::1", "2001:db8::2", 40000, 8443) + REQUEST
    for i in range(0, len(data), 7):  # arrives in small pieces
        h.feed(data[i : i + 7])
    h.settle()
    assert answer(h) == {"client": ["2001:db8::1", 40000], "server": ["2001:db8::2", 8443]}
    h.close()


def test_local_header_keeps_the_connections_addresses(http: str) -> None:
    h = harness(http, "v2")
    h.feed(v2(0, 0x00, b"") + REQUEST)
    h.settle()
    assert answer(h) == {"client": ["127.0.0.1", 50000], "server": ["127.0.0.1", 8000]}
    h.close()


def test_auto_serves_a_connection_without_a_header(http: str) -> None:
    h = harness(http, "auto")
    h.feed(REQUEST)
    h.settle()
    assert answer(h)["client"] == ["127.0.0.1", 50000]
    h.close()


@pytest.mark.parametrize(
    ("mode", "data"),
    [
        ("v1", REQUEST),  # missing where required
        ("v2", REQUEST),
        ("v1", v2_ipv4("192.0.2.1", "198.51.100.2", 1, 2) + REQUEST),  # the other version
        ("v2", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n" + REQUEST),
        ("auto", b"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n" + REQUEST),  # malformed
        ("auto", b"PROXY " + b"1" * 200),
    ],
)
def test_missing_or_malformed_header_from_a_trusted_peer_is_400_and_closed(
    http: str, mode: str, data: bytes
) -> None:
    h = harness(http, mode)
    h.feed(data)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 400 ")
    assert h.transport.data.count(b"HTTP/1.1") == 1
    assert h.transport.closed
    h.close()


def test_a_header_from_an_untrusted_peer_is_refused(http: str) -> None:
    h = harness(http, "v1", peer=("203.0.113.9", 40000))
    h.feed(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST)
    h.settle()
    assert h.transport.data.startswith(b"HTTP/1.1 400 ") and h.transport.closed
    h.close()


def test_an_untrusted_peer_without_a_header_is_served_as_itself(http: str) -> None:
    h = harness(http, "v1", peer=("203.0.113.9", 40000))
    h.feed(REQUEST)
    h.settle()
    assert answer(h)["client"] == ["203.0.113.9", 40000]
    h.close()


def test_keep_alive_requests_after_the_header_keep_its_addresses(http: str) -> None:
    h = harness(http, "v1")
    h.feed(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST)
    h.settle()
    h.transport.writes.clear()
    h.feed(REQUEST)
    h.settle()
    assert answer(h)["client"] == ["192.0.2.1", 56324]
    h.close()


def test_the_header_has_the_header_read_deadline(http: str) -> None:
    h = harness(http, "v1", timeout_header_read=0.2)
    h.feed(b"PROXY TCP4 192.0.2.1")  # and nothing more

    async def wait_closed() -> None:
        deadline = h.loop.time() + 5
        while not h.transport.closed and h.loop.time() < deadline:
            await asyncio.sleep(0.02)

    h.loop.run_until_complete(wait_closed())
    assert h.transport.closed and h.transport.data == b""
    h.close()
