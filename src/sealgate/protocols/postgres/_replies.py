"""PostgreSQL v3 backend (server-to-client) message classes with their encoders and decoders."""

import struct

import attrs

from sealgate.protocols.postgres._messages import (  # noqa: F401
    _H,
    _I32,
    _II,
    BACKEND,
    ProtocolError,
    _Body,
    _cstr,
    _empty,
    _h,
    _i32,
    _Message,
    _msg,
    _value,
)

# Backend ------------------------------------------------------------------------

AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


@_msg(b"R", BACKEND)
@attrs.frozen
class Authentication(_Message):
    """Any AuthenticationXXX request; C{code} says which, C{payload} carries its data."""

    code: int
    payload: bytes = b""

    def body(self):
        return _I32.pack(self.code) + self.payload

    @classmethod
    def decode(cls, b):
        return cls(b.u32(), b.rest())

    def mechanisms(self) -> list[str]:
        b = _Body(self.payload)
        out: list[str] = []
        while True:
            m = b.cstr()
            if not m:
                return out
            out.append(m)


@_msg(b"K", BACKEND)
@attrs.frozen
class BackendKeyData(_Message):
    pid: int
    key: int

    def body(self):
        return _II.pack(self.pid, self.key)

    @classmethod
    def decode(cls, b):
        v = cls(b.u32(), b.u32())
        b.done()
        return v


ParseComplete = _empty(b"1", "ParseComplete", BACKEND)
BindComplete = _empty(b"2", "BindComplete", BACKEND)
CloseComplete = _empty(b"3", "CloseComplete", BACKEND)
NoData = _empty(b"n", "NoData", BACKEND)
EmptyQueryResponse = _empty(b"I", "EmptyQueryResponse", BACKEND)
PortalSuspended = _empty(b"s", "PortalSuspended", BACKEND)


@_msg(b"C", BACKEND)
@attrs.frozen
class CommandComplete(_Message):
    tag: str

    def body(self):
        return _cstr(self.tag)

    @classmethod
    def decode(cls, b):
        v = cls(b.cstr())
        b.done()
        return v

    def rows(self) -> int | None:
        last = self.tag.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else None


class _CopyResponse(_Message):
    def body(self):
        return bytes([self.format]) + _H.pack(len(self.columnFormats)) + b"".join(
            _h.pack(f) for f in self.columnFormats)

    @classmethod
    def decode(cls, b):
        fmt = b.byte()
        cols = tuple(b.i16() for _ in range(b.u16()))
        b.done()
        return cls(fmt, cols)


@_msg(b"G", BACKEND)
@attrs.frozen
class CopyInResponse(_CopyResponse):
    format: int = 0
    columnFormats: tuple[int, ...] = ()


@_msg(b"H", BACKEND)
@attrs.frozen
class CopyOutResponse(_CopyResponse):
    format: int = 0
    columnFormats: tuple[int, ...] = ()


@_msg(b"W", BACKEND)
@attrs.frozen
class CopyBothResponse(_CopyResponse):
    format: int = 0
    columnFormats: tuple[int, ...] = ()


@_msg(b"D", BACKEND)
@attrs.frozen
class DataRow(_Message):
    values: tuple[bytes | None, ...]

    def body(self):
        return _H.pack(len(self.values)) + b"".join(_value(v) for v in self.values)

    @classmethod
    def decode(cls, b):
        v = tuple(b.value() for _ in range(b.u16()))
        b.done()
        return cls(v)


@attrs.frozen
class _Fields(_Message):
    """ErrorResponse / NoticeResponse: (code, text) pairs in order."""

    fields: tuple[tuple[str, str], ...]

    def body(self):
        return b"".join(c.encode("latin-1") + _cstr(v) for c, v in self.fields) + b"\0"

    @classmethod
    def decode(cls, b):
        fields = []
        while True:
            c = b.byte()
            if c == 0:
                break
            fields.append((chr(c), b.cstr()))
        b.done()
        return cls(tuple(fields))

    def get(self, code: str, default: str | None = None) -> str | None:
        for c, v in self.fields:
            if c == code:
                return v
        return default

    @classmethod
    def make(cls, severity: str, code: str, message: str, **extra: str):
        fields = [("S", severity), ("V", severity), ("C", code), ("M", message)]
        fields += [({"detail": "D", "hint": "H"}[k], v) for k, v in extra.items() if v]
        return cls(tuple(fields))


@_msg(b"E", BACKEND)
@attrs.frozen
class ErrorResponse(_Fields):
    pass


@_msg(b"N", BACKEND)
@attrs.frozen
class NoticeResponse(_Fields):
    pass


@_msg(b"V", BACKEND)
@attrs.frozen
class FunctionCallResponse(_Message):
    value: bytes | None

    def body(self):
        return _value(self.value)

    @classmethod
    def decode(cls, b):
        v = cls(b.value())
        b.done()
        return v


@_msg(b"v", BACKEND)
@attrs.frozen
class NegotiateProtocolVersion(_Message):
    minor: int
    options: tuple[str, ...] = ()

    def body(self):
        return _I32.pack(self.minor) + _I32.pack(len(self.options)) + b"".join(
            _cstr(o) for o in self.options)

    @classmethod
    def decode(cls, b):
        minor = b.u32()
        n = b.u32()
        if n > len(b.b):
            raise ProtocolError("bad option count")
        v = cls(minor, tuple(b.cstr() for _ in range(n)))
        b.done()
        return v


@_msg(b"A", BACKEND)
@attrs.frozen
class NotificationResponse(_Message):
    pid: int
    channel: str
    payload: str

    def body(self):
        return _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload)

    @classmethod
    def decode(cls, b):
        v = cls(b.u32(), b.cstr(), b.cstr())
        b.done()
        return v


@_msg(b"t", BACKEND)
@attrs.frozen
class ParameterDescription(_Message):
    types: tuple[int, ...]

    def body(self):
        return _H.pack(len(self.types)) + b"".join(_I32.pack(t) for t in self.types)

    @classmethod
    def decode(cls, b):
        v = cls(tuple(b.u32() for _ in range(b.u16())))
        b.done()
        return v


@_msg(b"S", BACKEND)
@attrs.frozen
class ParameterStatus(_Message):
    name: str
    value: str

    def body(self):
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def decode(cls, b):
        v = cls(b.cstr(), b.cstr())
        b.done()
        return v


@_msg(b"Z", BACKEND)
@attrs.frozen
class ReadyForQuery(_Message):
    status: str = "I"

    def body(self):
        return self.status.encode("latin-1")

    @classmethod
    def decode(cls, b):
        s = chr(b.byte())
        b.done()
        if s not in "ITE":
            raise ProtocolError(f"unknown transaction status {s!r}")
        return cls(s)


@attrs.frozen
class Column:
    name: str
    tableOid: int = 0
    columnNumber: int = 0
    typeOid: int = 25
    typeSize: int = -1
    typeMod: int = -1
    format: int = 0


_COL = struct.Struct("!IhIhih")


@_msg(b"T", BACKEND)
@attrs.frozen
class RowDescription(_Message):
    columns: tuple[Column, ...]

    def body(self):
        return _H.pack(len(self.columns)) + b"".join(
            _cstr(c.name) + _COL.pack(c.tableOid, c.columnNumber, c.typeOid, c.typeSize,
                                      c.typeMod, c.format) for c in self.columns)

    @classmethod
    def decode(cls, b):
        cols = []
        for _ in range(b.u16()):
            name = b.cstr()
            b.need(_COL.size)
            cols.append(Column(name, *_COL.unpack_from(b.b, b.p)))
            b.p += _COL.size
        b.done()
        return cls(tuple(cols))


