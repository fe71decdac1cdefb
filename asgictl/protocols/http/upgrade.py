"""Requests that ask an HTTP/1.1 connection to become something else (RFC 9110 7.8).

:class:`Upgrades` is the part of
:class:`~asgictl.protocols.http.connection.HTTPConnection` the adapters call when a
parsed request asks to switch protocols (``upgrade``: the one place where an Upgrade is
accepted or declined, and where a CONNECT ends the connection's HTTP) or when the
parser meets HTTP/2's preface (``http2_preface``). What is accepted leaves through
``handover.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgictl.protocols.http.fields import list_tokens
from asgictl.protocols.http.handover import hand_over, upgrade_h2c
from asgictl.protocols.http.parts import ConnectionPart
from asgictl.protocols.http.strict import BAD_PREFACE_REASON, BAD_PREFACE_STATUS, HTTP2_REASON, HTTP2_STATUS

if TYPE_CHECKING:
    pass


class Upgrades(ConnectionPart):
    """upgrade and http2_preface; the attributes are the connection's."""

    __slots__ = ()

    parse_error: Callable[[int, str], None]

    def upgrade(self, trailing: bytes) -> bool:
        """The request just parsed asks to switch protocols (Upgrade, RFC 9110 7.8):
        the one place where the server accepts or declines that.

        Accepted (a WebSocket handshake, ``--ws`` not none, nothing queued before it, not
        shutting down): the transport is handed to the WebSocket protocol with the
        request's scope and ``trailing`` (the bytes that followed the head), and True is
        returned: the adapter must not touch the connection again.

        Declined (any other protocol, ``h2c`` unless accepted below): False. The request is then
        plain HTTP/1.1, as RFC 9110 7.8 lets a server ignore Upgrade: its body (if it
        has one) reaches the app, and the adapter goes on parsing what follows as
        HTTP/1.1, unless the connection is closing (Connection: close). Both parsers
        stop after a CONNECT too: it is answered, and closes the connection, for what
        follows it is a tunnel's bytes, never HTTP (RFC 9110 9.3.6).

        With ``--h2c-upgrade`` (and HTTP/2 on), an ``Upgrade: h2c`` whose body is read
        is accepted instead (``handover.upgrade_h2c``): 101, and the request becomes
        stream 1 of an HTTP/2 connection.
        """
        if self.state.h2c_upgrade and upgrade_h2c(self, trailing):
            return True
        ws_protocol = self.state.ws_protocol
        pipeline = self.pipeline
        if pipeline and pipeline[-1].scope["method"] == "CONNECT":
            connect = pipeline[-1]
            self.closing = True
            if connect.scope["raw_path"][:1] == b"/":  # not authority-form (RFC 9112 3.2.3)
                pipeline.pop()
                self.parse_error(400, "CONNECT needs a host:port target")
            else:
                connect.keep_alive = False
            return False
        if (
            ws_protocol is None
            or self.cycle is not None
            or len(pipeline) != 1
            or self.state.shutting_down
            or self.transport.is_closing()
            or not is_websocket_handshake(pipeline[0].scope)
        ):
            return False
        scope = pipeline[0].scope
        pipeline.clear()
        self.parsing = None
        protocol = ws_protocol(self.state, scope)
        hand_over(self, protocol)
        protocol.handshake(trailing)
        return True

    def http2_preface(self) -> None:
        """The parser met HTTP/2's connection preface (``PRI * HTTP/2.0``, RFC 9113 3.4)
        or another request with the PRI method, reserved for it, and the connection
        closes, whichever parser saw it: with --no-http2 the answer is 505; with HTTP/2
        on (``sniff`` serves the exact preface, and a broken one that starts like it)
        this is a request with the PRI method that is no preface, 400."""
        if self.state.h2_protocol is None:
            self.parse_error(HTTP2_STATUS, HTTP2_REASON)
        else:
            self.parse_error(BAD_PREFACE_STATUS, BAD_PREFACE_REASON)


def is_websocket_handshake(scope: dict[str, Any]) -> bool:
    """GET, HTTP/1.1, ``Upgrade: websocket`` and ``Connection: upgrade`` (RFC 6455 4.1),
    without a body (one would be read as frames by one parser and as a body by the
    other: such a request stays plain HTTP)."""
    if scope["method"] != "GET" or scope["http_version"] != "1.1":
        return False
    upgrade = connection = False
    for name, value in scope["headers"]:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in list_tokens(value)
        elif name == b"connection":
            connection = connection or b"upgrade" in list_tokens(value)
        elif (name == b"content-length" and value.lstrip(b"0")) or name == b"transfer-encoding":
            return False
    return upgrade and connection
