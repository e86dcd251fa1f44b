"""WebSocket frames from a backend, sans-IO: parsed, fragments joined, each message masked and framed again (RFC 6455)."""

import struct

from sealgate.masking import MaskingFailed, maskWebSocket
from sealgate.protocols.http._wire import NEED_DATA, FrameTooLarge, WebSocketReader, wsFrame

#: Opcodes (RFC 6455 section 5.2).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = frozenset({TEXT, BINARY})
_CONTROL = frozenset({CLOSE, PING, PONG})

#: Close codes the gateway itself sends (RFC 6455 section 7.4.1).
PROTOCOL_ERROR, POLICY, TOO_BIG, INTERNAL = 1002, 1008, 1009, 1011


class WebSocketError(Exception):
    """The backend's frames cannot be relayed: the client gets a close frame with C{code}."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server's): the whole message in one."""
    return wsFrame(opcode, payload)


def closeFrame(code: int, reason: str) -> bytes:
    """A close frame with C{code} and a short reason (at most 123 bytes, as control frames allow)."""
    return frame(CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


class FrameReader:
    """
    Reads a backend's frames: C{feed(data)} returns the whole messages and
    control frames completed so far, as C{(opcode, payload)}, fragments
    joined, in order.  A message is held until it is whole, up to
    C{maxMessage} bytes (past it: L{WebSocketError} 1009, fail closed);
    reserved bits (an extension the gateway did not let through), reserved
    opcodes and broken fragmentation raise L{WebSocketError} 1002.
    """

    def __init__(self, maxMessage: int):
        self.maxMessage = maxMessage
        self._frames = WebSocketReader()
        self._frames.MAX_FRAME = maxMessage
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        frames = self._frames
        frames.receive_data(data)
        out: list[tuple[int, bytes]] = []
        while True:
            try:
                got = frames.next_event()
            except FrameTooLarge:
                raise WebSocketError(TOO_BIG, f"a WebSocket message over {self.maxMessage} bytes") from None
            if got is NEED_DATA:
                return out
            if got.rsv:
                raise WebSocketError(PROTOCOL_ERROR, "the backend used a WebSocket extension")
            message = self._message(got.fin, got.opcode, got.payload)
            if message is not None:
                out.append(message)

    def _message(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode in _CONTROL:
            if not fin or len(payload) > 125:
                raise WebSocketError(PROTOCOL_ERROR, "a fragmented or long WebSocket control frame")
            return opcode, payload
        if opcode in _DATA:
            if self._opcode is not None:
                raise WebSocketError(PROTOCOL_ERROR, "a new WebSocket message inside a fragmented one")
            if fin:
                return opcode, payload
            self._opcode, self._parts, self._size = opcode, [payload], len(payload)
            return None
        if opcode != CONTINUATION:
            raise WebSocketError(PROTOCOL_ERROR, f"reserved WebSocket opcode {opcode}")
        if self._opcode is None:
            raise WebSocketError(PROTOCOL_ERROR, "a WebSocket continuation with no message")
        self._parts.append(payload)
        self._size += len(payload)
        if self._size > self.maxMessage:
            raise WebSocketError(TOO_BIG, f"a WebSocket message over {self.maxMessage} bytes")
        if not fin:
            return None
        whole = (self._opcode, b"".join(self._parts))
        self._opcode, self._parts, self._size = None, [], 0
        return whole


class MessageMasker:
    """
    The server-to-client direction of one WebSocket: C{feed(data)} returns
    the frames to send, each message masked by
    L{sealgate.masking.maskWebSocket} and framed whole.

    @raise WebSocketError: what to close the connection with (a binary
        message refused by C{unknown_content} is a 1008 policy close).
    """

    def __init__(self, masker, maxMessage: int):
        self._masker = masker
        self._reader = FrameReader(maxMessage)

    def feed(self, data: bytes) -> bytes:
        out = []
        for opcode, payload in self._reader.feed(data):
            try:
                masked = maskWebSocket(self._masker, opcode, payload)
            except MaskingFailed as e:
                raise WebSocketError(POLICY, f"sealgate refused a message: {e}") from None
            out.append(frame(opcode, masked))
        return b"".join(out)
