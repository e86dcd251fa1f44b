"""Sans-IO codec for the PostgreSQL v3 wire protocol: framing for both directions.

The proxy's hot path uses L{Reader.drain}: complete messages it need not look
at come back as one raw byte run (no object per message), only the message
types a hook needs come back as L{Frame}s to decode.  L{Reader.next_event}
is the h11-style one-message-at-a-time interface used everywhere else.
"""

import struct

from sealgate.protocols.postgres._messages import *  # noqa: F403
from sealgate.protocols.postgres._messages import (
    BACKEND,
    DEFAULT_MAX_MESSAGE,
    FRONTEND,
    MAX_STARTUP,
    NEED_DATA,
    ProtocolError,
    SSLAnswer,
    _Body,
    decode,
    decodeStartup,
)
from sealgate.protocols.postgres._replies import *  # noqa: F403

_unpackLength = struct.Struct("!I").unpack_from

#: Per-type actions in a dispatch table: reject, forward raw, hand back a Frame.
INVALID, PASS, STOP = 0, 1, 2


def makeTable(valid, stop=()) -> bytes:
    """A 256-byte table for L{Reader.drain}: which types are valid, which to stop at."""
    t = bytearray(256)
    for c in valid:
        t[c[0]] = PASS
    for c in stop:
        t[c[0]] = STOP
    return bytes(t)


FRONTEND_TYPES = frozenset(FRONTEND)
BACKEND_TYPES = frozenset(BACKEND)


class Frame:
    """
    One complete message as it came off the wire.

    @ivar type: the type byte as an int (0 for an untagged startup packet).
    @ivar raw: the whole message, header included.
    """

    __slots__ = ("type", "raw")

    def __init__(self, type: int, raw: bytes):
        self.type = type
        self.raw = raw

    @property
    def body(self) -> bytes:
        return self.raw[5:] if self.type else self.raw[4:]

    def __repr__(self):
        return f"<Frame {chr(self.type) if self.type else 'startup'} {len(self.raw)}B>"


class Reader:
    """
    Splits one direction's byte stream into messages.

    @param frontend: True to read what a frontend (client) sends, False for
        what a backend (server) sends.
    @param startup: True when the stream begins with an untagged startup
        packet (the client leg); call L{expectStartup} again after an
        SSLRequest was answered.
    """

    def __init__(self, frontend: bool, startup: bool = False, maxMessage: int = DEFAULT_MAX_MESSAGE):
        self.frontend = frontend
        self.maxMessage = maxMessage
        self._table = makeTable(FRONTEND_TYPES if frontend else BACKEND_TYPES)
        self._untagged = startup
        self._sslAnswer = False
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 1
        self._buf = b""

    def expectStartup(self) -> None:
        """The next message is an untagged startup packet (after SSL/GSS negotiation)."""
        self._untagged = True

    def expectSSLAnswer(self) -> None:
        """The next byte answers an SSLRequest ('S' or 'N'), read as an L{SSLAnswer}."""
        self._sslAnswer = True

    def receive_data(self, data: bytes) -> None:
        if not data:
            return
        if not self._buf and not self._chunks:
            self._buf = data
            self._have = len(data)
            return
        # Joining only once enough has arrived keeps a big message linear.
        self._chunks.append(data)
        self._have += len(data)

    def _collect(self) -> bytes | None:
        if self._chunks:
            if self._have < self._need:
                return None
            self._buf = self._buf + b"".join(self._chunks)
            self._chunks.clear()
        return self._buf

    def pending(self) -> bytes:
        """Bytes received but not yet returned (e.g. to hand over after TLS starts)."""
        return self._buf + b"".join(self._chunks)

    def clear(self) -> None:
        self._buf = b""
        self._chunks.clear()
        self._have = 0
        self._need = 1

    def next_event(self):
        """The next complete message as a L{Frame} (or L{SSLAnswer}), or L{NEED_DATA}."""
        buf = self._collect()
        if buf is None:
            return NEED_DATA
        n = len(buf)
        if self._sslAnswer:
            if not n:
                return NEED_DATA
            self._sslAnswer = False
            c = buf[0]
            self._take(1)
            if c not in b"SN":
                raise ProtocolError(f"bad answer to SSLRequest {chr(c)!r}")
            return SSLAnswer(c == ord("S"))
        if self._untagged:
            if n < 4:
                self._need = 4
                return NEED_DATA
            ln = _unpackLength(buf, 0)[0]
            if ln < 8 or ln > MAX_STARTUP:
                raise ProtocolError(f"startup packet length {ln} out of range")
            if n < ln:
                self._need = ln
                return NEED_DATA
            self._untagged = False
            f = Frame(0, buf[:ln])
            self._take(ln)
            return f
        if n < 5:
            self._need = 5
            return NEED_DATA
        t = buf[0]
        ln = _unpackLength(buf, 1)[0]
        self._check(t, ln)
        if n < ln + 1:
            self._need = ln + 1
            return NEED_DATA
        f = Frame(t, buf[:ln + 1])
        self._take(ln + 1)
        return f

    def _take(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._have = len(self._buf)
        self._need = 1

    def _check(self, t: int, ln: int) -> None:
        if ln < 4 or ln > self.maxMessage:
            raise ProtocolError(f"message length {ln} out of range")
        if not self._table[t]:
            side = "frontend" if self.frontend else "backend"
            raise ProtocolError(f"unknown {side} message type {bytes((t,))!r}")

    def drain(self, table: bytes) -> list:
        """
        All complete tagged messages: runs of PASS types as one C{bytes}, STOP
        types as L{Frame}s, in order.  Use only once startup is over.  Every
        L{Frame} returned is well formed (L{checkFrame}): its consumer may
        slice it without guarding each field; a malformed one is a
        L{ProtocolError} (PASS runs are forwarded unread: their receiver
        rejects what it cannot parse).

        @param table: from L{makeTable}; it must not make types valid that the
            direction does not have.
        """
        buf = self._collect()
        if buf is None:
            return []
        n = len(buf)
        checks = _CHECKS[self.frontend]
        pos = run = 0
        out: list[bytes | Frame] = []
        maxMessage = self.maxMessage
        while n - pos >= 5:
            t = buf[pos]
            ln = _unpackLength(buf, pos + 1)[0]
            action = table[t]
            if not action or ln < 4 or ln > maxMessage:
                self._check(t, ln)
                raise ProtocolError(f"unexpected message type {bytes((t,))!r}")
            end = pos + 1 + ln
            if end > n:
                self._need = end - pos
                break
            if action == STOP:
                if pos > run:
                    out.append(buf[run:pos])
                raw = buf[pos:end]
                check = checks[t]
                # The one-string types (Query, CommandComplete) inline: they are most round trips.
                if (raw.find(b"\0", 5) != ln if check is _cstrLast else not check(raw)):
                    raise ProtocolError(f"malformed {_NAMES[self.frontend][t]} message")
                out.append(Frame(t, raw))
                run = end
            pos = end
        else:
            self._need = 5 if pos < n else 1
        if pos > run:
            out.append(buf[run:pos] if run or pos < n else buf)
        self._buf = buf[pos:] if pos < n else b""
        self._have = len(self._buf)
        return out


def _cstrLast(raw: bytes) -> bool:
    """One string, filling the body: terminated by the last byte and by no earlier one."""
    return raw.find(b"\0", 5) == len(raw) - 1


def _empty(raw: bytes) -> bool:
    return len(raw) == 5


def _anything(raw: bytes) -> bool:
    return True


_u16 = struct.Struct("!H").unpack_from
_i32 = struct.Struct("!i").unpack_from


def _dataRow(raw: bytes) -> bool:
    """A DataRow's shape as L{DataRow.decode} reads it: its count of values, each -1 (NULL) or a length that fits, nothing after."""
    n = len(raw)
    if n < 7:
        return False
    p = 7
    for _ in range(_u16(raw, 5)[0]):
        if p + 4 > n:
            return False
        ln = _i32(raw, p)[0]
        p += 4
        if ln < 0:
            if ln != -1:
                return False
        else:
            p += ln
            if p > n:
                return False
    return p == n


def _rowDescription(raw: bytes) -> bool:
    """A RowDescription's shape as L{RowDescription.decode} reads it: per column a terminated name and 18 bytes, nothing after."""
    n = len(raw)
    if n < 7:
        return False
    p = 7
    for _ in range(_u16(raw, 5)[0]):
        end = raw.find(b"\0", p)
        if end < 0:
            return False
        p = end + 19
        if p > n:
            return False
    return p == n


#: Well-formedness of the types a relay reads on every round trip, checked
#: without building the message; every other type is checked by decoding it.
_FAST_CHECKS = {
    True: {ord("Q"): _cstrLast, ord("S"): _empty, ord("H"): _empty, ord("X"): _empty,
           ord("c"): _empty, ord("d"): _anything},
    False: {ord("C"): _cstrLast, ord("I"): _empty, ord("s"): _empty, ord("c"): _empty,
            ord("Z"): lambda raw: len(raw) == 6 and raw[5] in b"IET", ord("d"): _anything,
            ord("D"): _dataRow, ord("T"): _rowDescription},
}
_NAMES = {frontend: [getattr((FRONTEND if frontend else BACKEND).get(bytes((t,))), "__name__", f"type {t}")
                      for t in range(256)] for frontend in (True, False)}


def _decodes(table: dict, t: int):
    cls = table.get(bytes((t,)))

    def check(raw: bytes) -> bool:
        if cls is None:
            raise ProtocolError(f"unknown message type {chr(t)!r}")
        try:
            cls.decode(_Body(raw[5:]))
        except ProtocolError as e:
            raise ProtocolError(f"malformed {cls.__name__} message: {e}")
        return True
    return check


#: Per direction, one well-formedness check per type byte (for L{Reader.drain}).
_CHECKS = {frontend: [_FAST_CHECKS[frontend].get(t) or _decodes(FRONTEND if frontend else BACKEND, t)
                      for t in range(256)] for frontend in (True, False)}


def checkFrame(frontend: bool, t: int, raw: bytes) -> None:
    """
    Raise L{ProtocolError} unless C{raw}, a whole tagged message of type
    C{t}, is well formed for its direction.
    """
    if not _CHECKS[frontend][t](raw):
        raise ProtocolError(f"malformed {_NAMES[frontend][t]} message")


def decodeFrame(frame: Frame, frontend: bool):
    """The typed message for a L{Frame}."""
    if frame.type == 0:
        return decodeStartup(frame.raw[4:])
    return decode(FRONTEND if frontend else BACKEND, frame.type, frame.raw[5:])


frontendTable = makeTable(FRONTEND_TYPES)
backendTable = makeTable(BACKEND_TYPES)
