"""The ``websockets`` adapter: its sans-IO ``ServerProtocol`` frames, the shared cycle does the rest.

The HTTP protocol has already parsed and checked the handshake request; it is given to
the engine re-serialized (its only documented entry point is bytes), once per connection.
``accept()`` validates it and negotiates permessage-deflate at once, but the 101 waits
for the app's ``websocket.accept`` (which adds the subprotocol and its headers).

The engine assembles nothing: fragments come as frames, so messages are put together
here, and text is decoded incrementally so that invalid UTF-8 fails the connection with
1007 as soon as it arrives (not at the end of a long fragmented message). Message size
(``max_size``, 1009), control frames, close codes and pongs are the engine's.
"""

from __future__ import annotations

import codecs
import logging
from typing import Any

from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.server import ServerProtocol

from asgictl.protocols.http.response import simple_response
from asgictl.protocols.state import ServerState
from asgictl.protocols.websockets.connection import CLOSED, OPEN, WSConnection

#: The engine logs every open/close at INFO: ours are the server's logs, not the library's.
_engine_logger = logging.getLogger("asgictl.websockets.engine")
_engine_logger.setLevel(logging.WARNING)

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class _Engine(ServerProtocol):
    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is _CLOSE and self.current_size is not None:
            # A close in the middle of a fragmented message is legal (control frames
            # may be interleaved, RFC 6455 5.4): the partial message is dropped and the
            # close answered normally. websockets fails the connection with 1002
            # instead, which Autobahn's case 7.1.5 counts as a failure.
            self.current_size = None
        super().recv_frame(frame)


class WebsocketsConnection(WSConnection):
    __slots__ = ("decoder", "engine", "parts", "response")

    def __init__(self, state: ServerState, http_scope: dict[str, Any]) -> None:
        super().__init__(state, http_scope)
        self.engine: _Engine = None  # type: ignore[assignment]
        self.response: Response | None = None
        #: fragments of the message being received; decoder set for a text message
        self.parts: list[Any] = []
        self.decoder: codecs.IncrementalDecoder | None = None

    def open_engine(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        state = self.state
        engine = self.engine = _Engine(
            extensions=enable_server_permessage_deflate(None) if state.ws_per_message_deflate else None,
            max_size=state.ws_max_size,
            logger=_engine_logger,
        )
        head = [b"GET ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        engine.receive_data(b"".join(head))
        events = engine.events_received()
        if not events:  # the engine refused what our parser accepted (its own limits)
            return simple_response(400, b"Invalid WebSocket handshake request\n", state.default_headers)
        response = engine.accept(events[0])  # type: ignore[arg-type]
        if response.status_code != 101:
            engine.send_response(response)
            return b"".join(engine.data_to_send())
        del response.headers["Date"]  # the server's own date and server headers are added
        self.response = response
        return None

    def accept_response(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        response = self.response
        assert response is not None
        self.response = None
        if subprotocol is not None:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in headers:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        engine = self.engine
        engine.send_response(response)
        return b"".join(engine.data_to_send())

    def feed(self, data: bytes) -> None:
        engine = self.engine
        engine.receive_data(data)
        for frame in engine.events_received():
            opcode = frame.opcode
            if opcode is _TEXT:
                if frame.fin:
                    try:
                        text = frame.data.decode()
                    except UnicodeDecodeError:
                        self._invalid_utf8()
                        break
                    self.on_message(text)
                else:
                    decoder = self.decoder = _utf8_decoder()
                    if not self._decode(decoder, frame.data, False):
                        break
            elif opcode is _BINARY:
                if frame.fin:
                    payload = frame.data
                    self.on_message(payload if type(payload) is bytes else bytes(payload))
                else:
                    self.decoder = None
                    self.parts.append(bytes(frame.data))
            elif opcode is _CONT:
                decoder = self.decoder
                if decoder is not None:
                    if not self._decode(decoder, frame.data, frame.fin):
                        break
                    if frame.fin:
                        self.decoder = None
                        self.on_message("".join(self.parts))
                        self.parts = []
                else:
                    self.parts.append(bytes(frame.data))
                    if frame.fin:
                        self.on_message(b"".join(self.parts))
                        self.parts = []
            elif opcode is _PONG:
                self.on_pong(bytes(frame.data))
            # PING is answered by the engine; CLOSE is read from its state below.
        self.flush()
        if self.phase is not CLOSED:
            received = engine.close_rcvd
            if received is not None:
                self.on_close(received.code, received.reason)
            elif engine.close_sent is not None and self.phase is OPEN:  # the engine failed it
                sent = engine.close_sent
                self.on_failure(sent.code, sent.reason)

    def _decode(self, decoder: codecs.IncrementalDecoder, data: Any, final: bool) -> bool:
        try:
            self.parts.append(decoder.decode(data, final))
        except UnicodeDecodeError:
            self._invalid_utf8()
            return False
        return True

    def _invalid_utf8(self) -> None:
        self.parts = []
        self.decoder = None
        self.engine.fail(1007, "invalid UTF-8")

    def flush(self) -> None:
        out = self.engine.data_to_send()
        if not out:
            return
        transport = self.transport
        if transport.is_closing():
            return
        data = b"".join(out)
        if data:
            transport.write(data)
        if out[-1] == b"":
            # The engine's EOF: a server closes the TCP connection once the close
            # handshake is done (or the connection failed).
            transport.close()

    def send_text(self, text: str) -> None:
        self.engine.send_text(text.encode())
        self.flush()

    def send_bytes(self, data: bytes) -> None:
        self.engine.send_binary(data)
        self.flush()

    def send_close(self, code: int, reason: str) -> None:
        self.engine.send_close(code, reason)
        self.flush()

    def send_ping(self, payload: bytes) -> None:
        self.engine.send_ping(payload)
        self.flush()
