"""The PROXY protocol (HAProxy's, versions 1 and 2): the client's address from a proxy.

A TCP load balancer or proxy (HAProxy ``send-proxy``, nginx ``proxy_protocol``, cloud
network load balancers) that does not speak HTTP to the server can still tell it who the
client is: it sends one header before the connection's first byte of HTTP. The format is
HAProxy's specification, https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt:

- version 1, text: ``PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\\r\\n``, at most
  107 bytes (section 2.1);
- version 2, binary: a 12-byte signature, a version/command byte, a family/transport
  byte, a 2-byte length, the addresses, then TLVs (section 2.2).

``--proxy-protocol off|v1|v2|auto`` chooses what is accepted. With ``v1`` or ``v2`` every
connection from a trusted peer must start with such a header; ``auto`` takes either
version or none (a load balancer's own health checks often come without one). Peers are
trusted by ``--forwarded-allow-ips``. A header from an untrusted peer is refused (400 and
close: it would let anyone claim any address), as is a missing or malformed header from a
trusted one. The header must arrive within ``--timeout-header-read`` of the accept.

:class:`ProxyProtocolReader` is the asyncio protocol that reads the header, then hands the
transport to the real protocol (HTTP/1.1, and what that hands over to) with the scope's
``client`` and ``server`` taken from the header.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable

from asgictl.protocols.http.response import simple_response
from asgictl.protocols.proxy import TrustedHosts
from asgictl.protocols.state import ServerState

logger = logging.getLogger("asgictl.error")

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 1 line may not be longer, CRLF included (section 2.1).
V1_MAX = 107
#: Signature, version/command, family/transport, length (section 2.2).
V2_FIXED = 16

Address = tuple[str, int | None] | None


class InvalidProxyHeader(ValueError):
    """A PROXY header that breaks the specification (the message says how)."""


class ProxyHeader:
    """What a header said: the client and server addresses, or None for both when the
    proxy speaks for itself (v1 ``UNKNOWN``, v2 ``LOCAL`` or an unspecified family)."""

    __slots__ = ("client", "local", "server")

    def __init__(self, client: Address, server: Address, local: bool = False) -> None:
        self.client = client
        self.server = server
        #: the connection's own addresses stand (health checks, UNKNOWN)
        self.local = local


def parse(data: bytes, version: str) -> tuple[ProxyHeader, int] | None:
    """Parse a header at the start of ``data``.

    ``version``: ``"v1"``, ``"v2"`` or ``"auto"`` (either). Returns the header and the
    number of bytes it took, or None when ``data`` is a correct but incomplete start.
    Raises InvalidProxyHeader for anything else, a missing header included.
    """
    if version != "v2" and data[:6] == V1_PREFIX[: len(data[:6])]:
        if len(data) < 6:
            return None
        return _parse_v1(data)
    if version != "v1" and data[:12] == V2_SIGNATURE[: len(data[:12])]:
        if len(data) < V2_FIXED:
            return None
        return _parse_v2(data)
    raise InvalidProxyHeader("no PROXY protocol header")


def starts_like_a_header(data: bytes) -> bool | None:
    """True if ``data`` begins with a PROXY header's start, False if it cannot, None if
    too few bytes are here to tell (a prefix of both an HTTP request and a header)."""
    for prefix in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(prefix))
        if data[:n] == prefix[:n]:
            return True if n == len(prefix) else None
    return False


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise InvalidProxyHeader("PROXY line longer than 107 bytes")
        if b"\n" in data:
            raise InvalidProxyHeader("PROXY line not ended by CRLF")
        return None
    parts = data[:end].split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:
        # Whatever follows UNKNOWN is ignored (section 2.1).
        return ProxyHeader(None, None, local=True), end + 2
    if len(parts) != 6:
        raise InvalidProxyHeader("PROXY line does not have six fields")
    _, family, src, dst, sport, dport = parts
    if family == b"TCP4":
        kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == b"TCP6":
        kind = ipaddress.IPv6Address
    else:
        raise InvalidProxyHeader("PROXY line names an unknown protocol family")
    try:
        source = str(kind(src.decode("ascii")))
        destination = str(kind(dst.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise InvalidProxyHeader("PROXY line has an invalid address") from None
    return ProxyHeader((source, _port(sport)), (destination, _port(dport))), end + 2


def _port(raw: bytes) -> int:
    # 1*5DIGIT, 0-65535, no leading zero (section 2.1).
    if not raw.isdigit() or not raw.isascii() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0"):
        raise InvalidProxyHeader("PROXY line has an invalid port")
    port = int(raw)
    if port > 65535:
        raise InvalidProxyHeader("PROXY line has an invalid port")
    return port


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if data[:12] != V2_SIGNATURE:
        raise InvalidProxyHeader("bad PROXY protocol v2 signature")
    version_command, family, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise InvalidProxyHeader("unsupported PROXY protocol version")
    command = version_command & 0x0F
    if command > 1:
        raise InvalidProxyHeader("unknown PROXY protocol v2 command")
    total = V2_FIXED + length
    if len(data) < total:
        return None
    body = data[V2_FIXED:total]
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyHeader(None, None, local=True), total
    transport_family = family >> 4
    if transport_family == 0:  # AF_UNSPEC: addresses unknown, keep the connection's
        return ProxyHeader(None, None, local=True), total
    if family & 0x0F not in (1, 2):
        raise InvalidProxyHeader("unknown PROXY protocol v2 transport")
    if transport_family == 1:
        if length < 12:
            raise InvalidProxyHeader("PROXY protocol v2 address block too short")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(
            (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
        ), total
    if transport_family == 2:
        if length < 36:
            raise InvalidProxyHeader("PROXY protocol v2 address block too short")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(
            (str(ipaddress.IPv6Address(src)), sport), (str(ipaddress.IPv6Address(dst)), dport)
        ), total
    if transport_family == 3:
        if length < 216:
            raise InvalidProxyHeader("PROXY protocol v2 address block too short")
        dst = body[108:216].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        # A Unix-socket client has no address in an ASGI scope.
        return ProxyHeader(None, (dst, None)), total
    raise InvalidProxyHeader("unknown PROXY protocol v2 address family")


class ProxyProtocolReader(asyncio.Protocol):
    """Reads a connection's PROXY header, then hands the connection over.

    ``inner()`` builds the protocol that serves the connection afterwards; it gets
    ``connection_made`` with the real transport, its ``client`` and ``server`` set from
    the header, then the bytes that followed the header. Until then nothing reaches it.
    Events that still come here after the handover (an in-memory transport that does not
    follow ``set_protocol``) are passed on.
    """

    __slots__ = (
        "buffer",
        "deadline",
        "inner",
        "inner_factory",
        "mode",
        "state",
        "transport",
        "trusted",
        "trusted_hosts",
    )

    def __init__(
        self, inner: Callable[[], asyncio.Protocol], state: ServerState, trusted: TrustedHosts
    ) -> None:
        self.inner_factory = inner
        self.state = state
        self.mode: str = state.config.proxy_protocol
        self.trusted = False
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.inner: asyncio.Protocol | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.trusted_hosts = trusted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        client = transport.get_extra_info("peername")
        server = transport.get_extra_info("sockname")
        if isinstance(client, tuple) and client:
            peer: str | None = str(client[0])
        else:  # a Unix socket: the path it was accepted on is what may be trusted
            peer = server if isinstance(server, str) and server else None
        self.trusted = peer in self.trusted_hosts
        # The header is part of the head: it must come within the header-read deadline.
        self.deadline = self.state.loop.call_later(self.state.timeout_header_read, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        data = self.buffer + data if self.buffer else data
        if not self.trusted or self.mode == "auto":
            looks = starts_like_a_header(data)
            if looks is None:  # too short to tell
                self.buffer = data
                return
            if not looks:
                self._hand_over(None, data)
                return
            if not self.trusted:
                # An untrusted peer may not claim an address.
                self._refuse("PROXY protocol header from an untrusted peer")
                return
        try:
            parsed = parse(data, self.mode)
        except InvalidProxyHeader as exc:
            self._refuse(str(exc))
            return
        if parsed is None:
            self.buffer = data
            return
        header, used = parsed
        self._hand_over(header, data[used:])

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None  # closes: no header, no request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # ------------------------------------------------------------------ internals

    def _hand_over(self, header: ProxyHeader | None, rest: bytes) -> None:
        self._cancel_deadline()
        self.buffer = b""
        transport = self.transport
        assert transport is not None
        inner = self.inner = self.inner_factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        if header is not None and not header.local:
            inner.client = header.client  # type: ignore[attr-defined]
            inner.server = header.server  # type: ignore[attr-defined]
        if rest:
            inner.data_received(rest)

    def _refuse(self, reason: str) -> None:
        logger.debug("Refused PROXY protocol connection: %s", reason)
        self._cancel_deadline()
        self.buffer = b""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            body = f"Invalid PROXY protocol header: {reason}\n".encode()
            transport.write(simple_response(400, body, self.state.default_headers))
            transport.close()

    def _timed_out(self) -> None:
        self.deadline = None
        if self.inner is None and self.transport is not None and not self.transport.is_closing():
            logger.debug("Closing connection: PROXY protocol header not received in time")
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


def reader_factory(
    inner: Callable[[], asyncio.Protocol], state: ServerState
) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for a listener with ``--proxy-protocol`` on: each connection
    first reads its PROXY header, then gets ``inner()``."""
    trusted = TrustedHosts(state.config.forwarded_allow_ips)
    return lambda: ProxyProtocolReader(inner, state, trusted)
