"""The ``wsproto`` adapter (pure Python): wsproto frames, the shared cycle does the rest.

wsproto takes an already parsed handshake (``initiate_upgrade_connection``), negotiates
permessage-deflate in ``AcceptConnection`` and decodes text incrementally itself. It has
no message size limit and answers nothing on its own, so this adapter: puts fragments
together and enforces ``--ws-max-size`` (1009) as they arrive, answers pings and the
peer's close, and fails the connection (close frame, then TCP close) on the protocol
errors wsproto reports as a ``CloseConnection`` while still open.
"""

from __future__ import annotations

from typing import Any

from wsproto import ConnectionType
from wsproto import WSConnection as WSProtoEngine
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import RemoteProtocolError

from asgictl.protocols.http.response import simple_response
from asgictl.protocols.state import ServerState
from asgictl.protocols.websockets.connection import CLOSED, WSConnection

_REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING
_LOCAL_CLOSED = ConnectionState.CLOSED


class WSProtoConnection(WSConnection):
    __slots__ = ("engine", "parts", "size")

    def __init__(self, state: ServerState, http_scope: dict[str, Any]) -> None:
        super().__init__(state, http_scope)
        self.engine: WSProtoEngine = None  # type: ignore[assignment]
        #: fragments of the message being received, and its size so far in bytes
        self.parts: list[Any] = []
        self.size = 0

    def open_engine(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        engine = self.engine = WSProtoEngine(ConnectionType.SERVER)
        try:
            engine.initiate_upgrade_connection(headers, target)
            events = list(engine.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            body = f"Invalid WebSocket handshake: {exc}\n".encode()
            return simple_response(status, body, self.state.default_headers)
        if not events or not isinstance(events[0], Request):
            return simple_response(400, b"Invalid WebSocket handshake\n", self.state.default_headers)
        return None

    def accept_response(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        extensions = [PerMessageDeflate()] if self.state.ws_per_message_deflate else []
        return self.engine.send(
            AcceptConnection(subprotocol=subprotocol, extensions=extensions, extra_headers=headers)
        )

    def feed(self, data: bytes) -> None:
        engine = self.engine
        engine.receive_data(data)
        max_size = self.state.ws_max_size
        for event in engine.events():
            kind = type(event)
            if kind is TextMessage or kind is BytesMessage:
                payload = event.data  # type: ignore[attr-defined]
                if kind is TextMessage:
                    size = len(payload) if payload.isascii() else len(payload.encode())
                else:
                    size = len(payload)
                if event.message_finished and not self.parts:  # type: ignore[attr-defined]
                    if size > max_size:
                        self._fail(1009, "message too big")
                        return
                    self.on_message(payload if kind is TextMessage else bytes(payload))
                    continue
                self.size += size
                if self.size > max_size:
                    self._fail(1009, "message too big")
                    return
                self.parts.append(payload)
                if event.message_finished:  # type: ignore[attr-defined]
                    parts, self.parts, self.size = self.parts, [], 0
                    self.on_message("".join(parts) if kind is TextMessage else b"".join(parts))
            elif kind is Ping:
                self._write(engine.send(event.response()))  # type: ignore[attr-defined]
            elif kind is Pong:
                self.on_pong(bytes(event.payload))  # type: ignore[attr-defined]
            elif kind is CloseConnection:
                code, reason = event.code, event.reason or ""  # type: ignore[attr-defined]
                state = engine.state
                if state is _REMOTE_CLOSING:
                    # The peer closes: answer, then close the TCP connection (the server's part).
                    self._write(engine.send(event.response()))  # type: ignore[attr-defined]
                    self.transport.close()
                    self.on_close(code, reason)
                elif state is _LOCAL_CLOSED:
                    self.transport.close()  # the answer to our close
                    self.on_close(code, reason)
                else:
                    # wsproto reports a protocol error (bad frame, bad UTF-8) as a close
                    # while the connection is still open: fail it with that code.
                    self._fail(code, reason)
                return

    def _fail(self, code: int, reason: str) -> None:
        self.parts = []
        self.size = 0
        if self.phase is not CLOSED and self.engine.state is ConnectionState.OPEN:
            self._write(self.engine.send(CloseConnection(code=code, reason=reason)))
        self.transport.close()
        self.on_failure(code, reason)

    def _write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        self._write(self.engine.send(TextMessage(data=text)))

    def send_bytes(self, data: bytes) -> None:
        self._write(self.engine.send(BytesMessage(data=data)))

    def send_close(self, code: int, reason: str) -> None:
        self._write(self.engine.send(CloseConnection(code=code, reason=reason)))

    def send_ping(self, payload: bytes) -> None:
        self._write(self.engine.send(Ping(payload=payload)))
