"""WebSocket frames from a backend, sans-IO: parsed, fragments joined, each message masked and framed again (RFC 6455)."""

import struct

from sealgate.masking import MaskingFailed, maskWebSocket

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
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


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
        self._buf = bytearray()
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        while True:
            got = self._frame(buf)
            if got is None:
                return out
            fin, opcode, payload = got
            message = self._message(fin, opcode, payload)
            if message is not None:
                out.append(message)

    def _frame(self, buf: bytearray) -> tuple[bool, int, bytes] | None:
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketError(PROTOCOL_ERROR, "the backend used a WebSocket extension")
        opcode, n = b0 & 0x0F, b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from("!Q", buf, 2)[0]
            pos = 10
        if n > self.maxMessage or self._size + n > self.maxMessage:
            raise WebSocketError(TOO_BIG, f"a WebSocket message over {self.maxMessage} bytes")
        key = b""
        if b1 & 0x80:
            # A masked frame from a server breaks the protocol; read it anyway.
            key = bytes(buf[pos: pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos: pos + n])
        del buf[: pos + n]
        if len(key) == 4:
            payload = _unmask(payload, key)
        return bool(b0 & 0x80), opcode, payload

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
        if not fin:
            return None
        whole = (self._opcode, b"".join(self._parts))
        self._opcode, self._parts, self._size = None, [], 0
        return whole


def _unmask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


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
