"""The ``h2`` engine (python-hyper's sans-IO HTTP/2): frames and HPACK, nothing else.

The adapter turns h2's events into calls on the HTTP/2 connection (the seam:
:mod:`~asgictl.protocols.http2.engine`) and
the connection's answers into h2 calls. h2 is configured to leave request fields
alone (``validate_inbound_headers=False``): the connection checks them itself, so that
a malformed request is a stream error, as RFC 9113 8.1.1 says, not the connection
error h2 would make of it.

What h2 does differently here, in a subclass (each override small, its comment says
what it replaces; the h2, hpack and hyperframe versions are bounded in pyproject.toml
to the ones it was tested with):

- a HEADERS frame past SETTINGS_MAX_CONCURRENT_STREAMS ends the connection in h2; it is
  refused with RST_STREAM REFUSED_STREAM instead (RFC 9113 5.1.2), its block still
  decoded so that the connection's HPACK state stays right;
- a GOAWAY with NO_ERROR, received or sent, leaves the streams in flight able to finish
  (h2 closes the whole connection at once; RFC 9113 6.8 lets them complete);
- the connection's receive window starts larger than the protocol's 65,535 bytes (a
  WINDOW_UPDATE right after SETTINGS), so that one upload is not held to 64 KiB in
  flight;
- for speed, the same protocol with less work: hpack's coders remember the header
  blocks that repeat (:mod:`~asgictl.protocols.http2.hpack_cache`); a received frame is
  dispatched without the trace line h2 formats for each one (a hex dump of its
  payload); a response's HEADERS and DATA frames are written as bytes after h2's own
  state machines and flow-control windows took them, not through h2's frame objects.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionInputs, ConnectionState, _decode_headers  # h2's one HPACK decode path
from h2.stream import StreamClosedBy, StreamInputs
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from asgictl.protocols.http2.engine import EngineError
from asgictl.protocols.http2.hpack_cache import CachingDecoder, CachingEncoder

if TYPE_CHECKING:
    from asgictl.protocols.http2.connection import HTTP2Connection

_REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM
_SEND_HEADERS = ConnectionInputs.SEND_HEADERS
_SEND_DATA = ConnectionInputs.SEND_DATA
_STREAM_SEND_HEADERS = StreamInputs.SEND_HEADERS
_STREAM_SEND_DATA = StreamInputs.SEND_DATA
_SEND_END_STREAM = StreamInputs.SEND_END_STREAM
#: A frame's 9-byte header (RFC 9113 4.1): length (24 bits, as 16 + 8), type, flags, stream.
_FRAME_HEAD = struct.Struct(">HBBBL")
_END_STREAM = 0x1
_END_HEADERS = 0x4
_INFORMATIONAL = frozenset((b":status", b"%d" % code) for code in range(100, 200))


class _Connection(h2.connection.H2Connection):
    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        # hpack's coders, remembering the blocks that repeat (see hpack_cache).
        self.encoder = CachingEncoder()
        decoder = CachingDecoder(self.decoder.max_header_list_size)
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder

    def _receive_frame(self, frame: Any) -> Any:
        # h2's own first formats repr(frame) for a trace log line, for every frame and
        # whether or not anything logs (its payload hex-dumped): not done here. A frame
        # on a closed stream still gets h2's exact answer (_frame_on_closed_stream).
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError) as exc:
            return self._frame_on_closed_stream(frame, exc)
        if frames:
            self._prepare_for_sending(frames)
        return events

    def _frame_on_closed_stream(self, frame: Any, exc: Exception) -> Any:
        """h2's answer to ``frame`` whose handler raised ``exc`` (a RST_STREAM or a
        connection error, by how the stream was closed): h2's _receive_frame, run with
        a handler that raises ``exc`` again (the real one already changed the state)."""
        table = self._frame_dispatch_table
        kind = frame.__class__
        handler = table[kind]

        def raise_again(frame: Any) -> Any:
            raise exc

        table[kind] = raise_again
        try:
            return super()._receive_frame(frame)
        finally:
            table[kind] = handler

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False, **priority: Any) -> None:
        # A response head or trailers on a stream the client opened: h2's state changes
        # (the connection's and the stream's, END_STREAM), its HPACK encoder, and the
        # frames' bytes written here instead of through h2's per-call checks, header
        # re-encoding, frame objects and validation (turned off in the configuration).
        # 1xx heads, priorities and streams h2 does not know go through h2. (An empty
        # trailer section is one empty HEADERS frame here; h2 fails on it.)
        stream = self.streams.get(stream_id)
        if stream is None or priority or (headers and headers[0] in _INFORMATIONAL):
            super().send_headers(stream_id, headers, end_stream, **priority)
            return
        self.state_machine.process_input(_SEND_HEADERS)
        machine = stream.state_machine
        machine.process_input(_STREAM_SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(_SEND_END_STREAM)
        elif machine.trailers_sent:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        stream.request_method = None  # h2 keeps the :method of what it sent last
        out = self._data_to_send
        size = self.max_outbound_frame_size
        flags = _END_STREAM if end_stream else 0
        if len(block) <= size:
            out += _FRAME_HEAD.pack(len(block) >> 8, len(block) & 0xFF, 0x1, flags | _END_HEADERS, stream_id)
            out += block
            return
        # A block larger than a frame: HEADERS, then CONTINUATION frames (RFC 9113 6.10).
        for start in range(0, len(block), size):
            piece = block[start : start + size]
            last = _END_HEADERS if start + size >= len(block) else 0
            kind, head_flags = (0x1, flags) if start == 0 else (0x9, 0)
            out += _FRAME_HEAD.pack(len(piece) >> 8, len(piece) & 0xFF, kind, head_flags | last, stream_id)
            out += piece

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None) -> None:
        # DATA that fits the windows and the peer's frame size, without padding: h2's
        # state changes and window accounting (the connection's and the stream's), the
        # frame's bytes written here instead of through a frame object. Anything else
        # goes through h2 (which raises for what does not fit).
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or pad_length is not None
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            or size > self.max_outbound_frame_size
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        self.state_machine.process_input(_SEND_DATA)
        machine = stream.state_machine
        machine.process_input(_STREAM_SEND_DATA)
        if end_stream:
            machine.process_input(_SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _FRAME_HEAD.pack(size >> 8, size & 0xFF, 0x0, _END_STREAM if end_stream else 0, stream_id)
        out += data

    def _receive_headers_frame(self, frame: Any) -> Any:
        stream_id = frame.stream_id
        if (
            stream_id not in self.streams
            and stream_id % 2 == 1
            and stream_id > self.highest_inbound_stream_id
            # the streams h2 holds include the open ones: counted (a scan) only if need be
            and len(self.streams) >= (limit := self.local_settings.max_concurrent_streams)
            and self.open_inbound_streams >= limit
        ):
            _decode_headers(self.decoder, frame.data)
            self.highest_inbound_stream_id = stream_id
            self._closed_streams[stream_id] = StreamClosedBy.SEND_RST_STREAM
            reset = RstStreamFrame(stream_id)
            reset.error_code = _REFUSED
            return [reset], []
        return super()._receive_headers_frame(frame)

    def _receive_goaway_frame(self, frame: Any) -> Any:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        # A graceful GOAWAY: the client opens no new streams but still wants the answers
        # of those in flight, which h2 would no longer let us send.
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Engine:
    """One HTTP/2 connection's framing, by the ``h2`` library."""

    __slots__ = ("conn", "h2")

    def __init__(
        self,
        conn: HTTP2Connection,
        settings: dict[int, int],
        connection_window: int,
        upgrade: bytes | None = None,
    ) -> None:
        """``upgrade``: the HTTP2-Settings of an accepted ``Upgrade: h2c`` (stream 1 is
        then the request that asked, half-closed by the client)."""
        self.conn = conn
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        engine = self.h2 = _Connection(config=config)
        engine.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        engine.max_inbound_frame_size = engine.local_settings.max_frame_size
        engine.decoder.max_header_list_size = settings[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE]
        if upgrade is None:
            engine.initiate_connection()
        else:
            engine.initiate_upgrade_connection(upgrade)
        extra = connection_window - 65535
        if extra > 0:
            engine.increment_flow_control_window(extra)

    # ---------------------------------------------------------------- bytes in

    def receive(self, data: bytes) -> None:
        """Parse ``data`` and call the connection for each event; raises EngineError
        for a connection error (the GOAWAY is already queued)."""
        conn = self.conn
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = exc.error_code if isinstance(exc.error_code, int) else h2.errors.ErrorCodes.PROTOCOL_ERROR
            if self.h2.state_machine.state is not ConnectionState.CLOSED:
                # An invalid client preface: h2 refuses it before it would queue a
                # GOAWAY (RFC 9113 3.4 lets it be omitted; zttp sends one: so do we).
                self.h2.close_connection(code)
            raise EngineError(int(code), str(exc)) from None
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                conn.on_request(event.stream_id, event.headers, event.stream_ended is not None)
            elif kind is h2.events.DataReceived:
                conn.on_data(
                    event.stream_id, event.data, event.flow_controlled_length, event.stream_ended is not None
                )
            elif kind is h2.events.StreamEnded:
                pass  # reported with the HEADERS or DATA that carried END_STREAM
            elif kind is h2.events.WindowUpdated:
                conn.on_window_update(event.stream_id)
            elif kind is h2.events.StreamReset:
                conn.on_reset(event.stream_id, int(event.error_code), event.remote_reset)
            elif kind is h2.events.TrailersReceived:
                conn.on_trailers(event.stream_id, event.headers)
            elif kind is h2.events.RemoteSettingsChanged:
                conn.on_settings(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings)
            elif kind is h2.events.PingReceived:
                conn.on_ping()
            elif kind is h2.events.PingAckReceived:
                conn.on_ping_ack(event.ping_data)
            elif kind is h2.events.PriorityUpdated:
                conn.on_priority()
            elif kind is h2.events.ConnectionTerminated:
                conn.on_goaway(int(event.error_code))
            # SettingsAcknowledged, UnknownFrameReceived: nothing to do.

    # ---------------------------------------------------------------- frames out

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """``data`` fits the windows and the peer's frame size (see :meth:`window`)."""
        self.h2.send_data(stream_id, data, end_stream=end_stream)

    def window(self, stream_id: int) -> int:
        """Bytes of DATA the peer accepts on ``stream_id`` now (its and the connection's
        window), at most one frame."""
        engine = self.h2
        stream = engine.streams.get(stream_id)
        if stream is None:
            return min(engine.local_flow_control_window(stream_id), engine.max_outbound_frame_size)
        return min(
            engine.outbound_flow_control_window,
            stream.outbound_flow_control_window,
            engine.max_outbound_frame_size,
        )

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream_id`` were consumed: reopen windows."""
        self.h2.acknowledge_received_data(size, stream_id)

    def reset(self, stream_id: int, code: int) -> bool:
        """RST_STREAM; False if the stream is closed (both ends sent END_STREAM)."""
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            return False
        return True

    def goaway(self, code: int, last_stream_id: int) -> None:
        """GOAWAY. With NO_ERROR the streams up to ``last_stream_id`` may still finish;
        with an error the connection is over."""
        if code:
            self.h2.close_connection(code, last_stream_id=last_stream_id)
            return
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = 0
        self.h2._data_to_send += frame.serialize()

    def ping(self, payload: bytes) -> None:
        self.h2.ping(payload)

    @property
    def headers_pending(self) -> bool:
        """A header block has begun (HEADERS without END_HEADERS) and is not complete."""
        return bool(self.h2.incoming_buffer._headers_buffer)

    @property
    def highest_stream_id(self) -> int:
        return self.h2.highest_inbound_stream_id

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()
