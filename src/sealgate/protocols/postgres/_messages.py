"""PostgreSQL v3 message classes: shared encoding helpers, startup packets and frontend messages."""

import struct
from typing import ClassVar

import attrs

_I32 = struct.Struct("!I")
_i32 = struct.Struct("!i")
_H = struct.Struct("!H")
_h = struct.Struct("!h")
_II = struct.Struct("!II")
_III = struct.Struct("!III")


class _Sentinel:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


#: Returned by L{Reader.next_event} when more bytes are needed.
NEED_DATA = _Sentinel("NEED_DATA")

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
#: Postgres itself refuses startup packets longer than this.
MAX_STARTUP = 10000
DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024


class ProtocolError(Exception):
    """Bad framing or content; the session must end with a protocol error."""


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    if b"\0" in b:
        raise ValueError("string contains NUL")
    return b + b"\0"


class _Body:
    """Cursor over one message body; every overrun is a ProtocolError."""

    __slots__ = ("b", "p")

    def __init__(self, b: bytes, p: int = 0):
        self.b = b
        self.p = p

    def need(self, n: int) -> None:
        if n < 0 or self.p + n > len(self.b):
            raise ProtocolError("message truncated")

    def i32(self) -> int:
        self.need(4)
        v = _i32.unpack_from(self.b, self.p)[0]
        self.p += 4
        return v

    def u32(self) -> int:
        self.need(4)
        v = _I32.unpack_from(self.b, self.p)[0]
        self.p += 4
        return v

    def i16(self) -> int:
        self.need(2)
        v = _h.unpack_from(self.b, self.p)[0]
        self.p += 2
        return v

    def u16(self) -> int:
        self.need(2)
        v = _H.unpack_from(self.b, self.p)[0]
        self.p += 2
        return v

    def byte(self) -> int:
        self.need(1)
        v = self.b[self.p]
        self.p += 1
        return v

    def cstr(self) -> str:
        end = self.b.find(b"\0", self.p)
        if end < 0:
            raise ProtocolError("string not terminated")
        v = self.b[self.p:end].decode("utf-8", "surrogateescape")
        self.p = end + 1
        return v

    def raw(self, n: int) -> bytes:
        self.need(n)
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def rest(self) -> bytes:
        v = self.b[self.p:]
        self.p = len(self.b)
        return v

    def value(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        if n < 0:
            raise ProtocolError("negative value length")
        return self.raw(n)

    def done(self) -> None:
        if self.p != len(self.b):
            raise ProtocolError("trailing bytes in message")


def _value(v: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if v is None else _i32.pack(len(v)) + v


def frame(typ: bytes, body: bytes = b"") -> bytes:
    """One tagged message: type byte, length, body."""
    return typ + _I32.pack(len(body) + 4) + body


# -- messages -------------------------------------------------------------------

FRONTEND: dict[bytes, type] = {}
BACKEND: dict[bytes, type] = {}


def _msg(typ: bytes, *tables):
    def deco(cls):
        cls.TYPE = typ
        for t in tables:
            t[typ] = cls
        return cls
    return deco


def _empty(typ, name, *tables):
    @_msg(typ, *tables)
    @attrs.frozen
    class Empty(_Message):
        def body(self) -> bytes:
            return b""

        @classmethod
        def decode(cls, b):
            b.done()
            return cls()

    Empty.__name__ = Empty.__qualname__ = name
    return Empty


class _Message:
    TYPE: ClassVar[bytes]  # set by @_msg

    def body(self) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} has no tagged body")

    def encode(self) -> bytes:
        return frame(self.TYPE, self.body())


# Untagged startup packets (frontend only) ----------------------------------------


@attrs.frozen
class StartupMessage(_Message):
    params: tuple[tuple[str, str], ...] = ()
    version: int = PROTOCOL_V3

    def encode(self) -> bytes:
        body = _I32.pack(self.version) + b"".join(_cstr(k) + _cstr(v) for k, v in self.params) + b"\0"
        return _I32.pack(len(body) + 4) + body

    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == key:
                return v
        return default


@attrs.frozen
class SSLRequest(_Message):
    def encode(self) -> bytes:
        return _II.pack(8, SSL_REQUEST_CODE)


@attrs.frozen
class GSSENCRequest(_Message):
    def encode(self) -> bytes:
        return _II.pack(8, GSSENC_REQUEST_CODE)


@attrs.frozen
class CancelRequest(_Message):
    pid: int
    key: int

    def encode(self) -> bytes:
        return _I32.pack(16) + _I32.pack(CANCEL_REQUEST_CODE) + _II.pack(self.pid, self.key)


@attrs.frozen
class SSLAnswer(_Message):
    """The single untagged byte a server answers an SSLRequest with."""

    accepted: bool

    def encode(self) -> bytes:
        return b"S" if self.accepted else b"N"


def decodeStartup(body: bytes):
    """Decode an untagged packet body (after its length word)."""
    b = _Body(body)
    code = b.u32()
    if code == SSL_REQUEST_CODE:
        b.done()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        b.done()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, key = b.u32(), b.u32()
        b.done()
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    params = []
    while True:
        k = b.cstr()
        if not k:
            break
        params.append((k, b.cstr()))
    b.done()
    return StartupMessage(tuple(params), code)


# Frontend ---------------------------------------------------------------------


@_msg(b"Q", FRONTEND)
@attrs.frozen
class Query(_Message):
    text: str

    def body(self):
        return _cstr(self.text)

    @classmethod
    def decode(cls, b):
        v = cls(b.cstr())
        b.done()
        return v


@_msg(b"P", FRONTEND)
@attrs.frozen
class Parse(_Message):
    name: str
    query: str
    paramTypes: tuple[int, ...] = ()

    def body(self):
        return (_cstr(self.name) + _cstr(self.query) + _H.pack(len(self.paramTypes))
                + b"".join(_I32.pack(t) for t in self.paramTypes))

    @classmethod
    def decode(cls, b):
        name, query = b.cstr(), b.cstr()
        types = tuple(b.u32() for _ in range(b.u16()))
        b.done()
        return cls(name, query, types)


@_msg(b"B", FRONTEND)
@attrs.frozen
class Bind(_Message):
    portal: str
    statement: str
    paramFormats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    resultFormats: tuple[int, ...] = ()

    def body(self):
        return b"".join([
            _cstr(self.portal), _cstr(self.statement),
            _H.pack(len(self.paramFormats)), *(_h.pack(f) for f in self.paramFormats),
            _H.pack(len(self.params)), *(_value(p) for p in self.params),
            _H.pack(len(self.resultFormats)), *(_h.pack(f) for f in self.resultFormats),
        ])

    @classmethod
    def decode(cls, b):
        portal, stmt = b.cstr(), b.cstr()
        pf = tuple(b.i16() for _ in range(b.u16()))
        params = tuple(b.value() for _ in range(b.u16()))
        rf = tuple(b.i16() for _ in range(b.u16()))
        b.done()
        return cls(portal, stmt, pf, params, rf)


class _KindName(_Message):
    def body(self):
        return self.kind.encode("latin-1") + _cstr(self.name)

    @classmethod
    def decode(cls, b):
        kind = chr(b.byte())
        if kind not in "SP":
            raise ProtocolError(f"{cls.__name__} of unknown kind {kind!r}")
        v = cls(kind, b.cstr())
        b.done()
        return v


@_msg(b"D", FRONTEND)
@attrs.frozen
class Describe(_KindName):
    kind: str
    name: str


@_msg(b"C", FRONTEND)
@attrs.frozen
class Close(_KindName):
    kind: str
    name: str


@_msg(b"E", FRONTEND)
@attrs.frozen
class Execute(_Message):
    portal: str
    maxRows: int = 0

    def body(self):
        return _cstr(self.portal) + _i32.pack(self.maxRows)

    @classmethod
    def decode(cls, b):
        v = cls(b.cstr(), b.i32())
        b.done()
        return v


@_msg(b"F", FRONTEND)
@attrs.frozen
class FunctionCall(_Message):
    oid: int
    argFormats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    resultFormat: int = 0

    def body(self):
        return b"".join([
            _I32.pack(self.oid), _H.pack(len(self.argFormats)),
            *(_h.pack(f) for f in self.argFormats), _H.pack(len(self.args)),
            *(_value(a) for a in self.args), _h.pack(self.resultFormat)])

    @classmethod
    def decode(cls, b):
        oid = b.u32()
        af = tuple(b.i16() for _ in range(b.u16()))
        args = tuple(b.value() for _ in range(b.u16()))
        rf = b.i16()
        b.done()
        return cls(oid, af, args, rf)


@_msg(b"d", FRONTEND, BACKEND)
@attrs.frozen
class CopyData(_Message):
    data: bytes

    def body(self):
        return self.data

    @classmethod
    def decode(cls, b):
        return cls(b.rest())


CopyDone = _empty(b"c", "CopyDone", FRONTEND, BACKEND)
Sync = _empty(b"S", "Sync", FRONTEND)
Flush = _empty(b"H", "Flush", FRONTEND)
Terminate = _empty(b"X", "Terminate", FRONTEND)


@_msg(b"f", FRONTEND)
@attrs.frozen
class CopyFail(_Message):
    message: str

    def body(self):
        return _cstr(self.message)

    @classmethod
    def decode(cls, b):
        v = cls(b.cstr())
        b.done()
        return v


@_msg(b"p", FRONTEND)
@attrs.frozen
class PasswordMessage(_Message):
    """Any 'p' message: its meaning (password, SASL, GSS) depends on the auth request."""

    data: bytes = attrs.field(repr=False)

    def body(self):
        return self.data

    @classmethod
    def decode(cls, b):
        return cls(b.rest())

    def password(self) -> str:
        b = _Body(self.data)
        v = b.cstr()
        b.done()
        return v

    @classmethod
    def cleartext(cls, password: str) -> "PasswordMessage":
        return cls(_cstr(password))

    @classmethod
    def saslInitial(cls, mechanism: str, data: bytes | None) -> "PasswordMessage":
        return cls(_cstr(mechanism) + _value(data))

    def parseSaslInitial(self) -> tuple[str, bytes | None]:
        b = _Body(self.data)
        mech, data = b.cstr(), b.value()
        b.done()
        return mech, data


def decode(table: dict, typ: int, body: bytes):
    """Decode one tagged message body with a direction's table (FRONTEND/BACKEND)."""
    cls = table.get(bytes((typ,)))
    if cls is None:
        raise ProtocolError(f"unknown message type {chr(typ)!r}")
    return cls.decode(_Body(body))


