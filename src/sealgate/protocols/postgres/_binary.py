"""PostgreSQL binary-format values as the text the server would print (for masking), by type OID.

Pure functions, no Twisted: C{toText(oid, data)} renders one binary value
(the server's C{typsend} output) in the server's text output syntax, so
masking can run its detectors on it and send it as a text value.  Arrays
and records carry their element and field OIDs, so any nesting of the
types here renders.  An OID this module does not know raises L{Unknown}.
"""

import datetime
import struct
import uuid

#: Types whose values can carry no sensitive text (numbers too short for a
#: card, dates, times, addresses, geometry): passed as they are in binary.
INERT = frozenset({
    16, 21, 23, 26, 700, 701, 790, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 869, 650, 829,
    774, 600, 601, 602, 603, 604, 628, 718, 1560, 1562, 3220, 28, 29, 5069, 2202, 2203,
    2204, 2205, 2206, 3734, 3769, 4089, 4096, 24,
    # ...and arrays of them.
    1000, 1005, 1007, 1028, 1021, 1022, 791, 1182, 1183, 1115, 1185, 1187, 1270, 2951, 1041, 651,
    1040, 775, 1017, 1018, 1019, 1020, 1027, 629, 719, 1561, 1563, 3221, 1010, 1011,
})
#: Types whose binary form is their UTF-8 text: text, varchar, bpchar,
#: name, "char", unknown, xml, json, refcursor, regtype and friends print text too.
TEXT_LIKE = frozenset({25, 1043, 1042, 19, 18, 705, 142, 114, 1790})
JSON, JSONB, BYTEA, INT8, NUMERIC, RECORD = 114, 3802, 17, 20, 1700, 2249
#: Array types of element types that can carry a value (text-like, numbers
#: long enough for a card, JSON, bytea, records).
ARRAYS = frozenset({1009, 1015, 1014, 1002, 1003, 143, 199, 3807, 1001, 1016, 1231, 2287})
#: Types a card number fits in: their masked text is no longer a number.
NUMBERS = frozenset({INT8, NUMERIC, 1016, 1231})

_EPOCH = datetime.datetime(2000, 1, 1)
_I16, _I32, _U32, _I64 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!I"), struct.Struct("!q")


class Unknown(ValueError):
    """A binary value of a type this module cannot render (or malformed for its type)."""


def _int(fmt: struct.Struct):
    def render(data: bytes) -> str:
        if len(data) != fmt.size:
            raise Unknown(f"a {fmt.size}-byte integer of {len(data)} bytes")
        return str(fmt.unpack(data)[0])
    return render


def _float(fmt: str):
    unpack = struct.Struct(fmt).unpack

    def render(data: bytes) -> str:
        (x,) = unpack(data)
        if x != x:
            return "NaN"
        if x in (float("inf"), float("-inf")):
            return "Infinity" if x > 0 else "-Infinity"
        return repr(x).removesuffix(".0")
    return render


def _numeric(data: bytes) -> str:
    if len(data) < 8:
        raise Unknown("numeric header cut short")
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign == 0xC000:
        return "NaN"
    if sign == 0xD000:
        return "Infinity"
    if sign == 0xF000:
        return "-Infinity"
    if len(data) != 8 + 2 * ndigits or sign not in (0, 0x4000):
        raise Unknown("numeric digits do not match their count")
    digits = struct.unpack_from(f"!{ndigits}H", data, 8)
    # Base-10000 digits, the first at 10000**weight.
    intPart = "".join(f"{d:04d}" for d in digits[:max(weight + 1, 0)])
    intPart += "0000" * max(0, weight + 1 - ndigits)
    intPart = intPart.lstrip("0") or "0"
    frac = "0000" * max(0, -weight - 1) + "".join(f"{d:04d}" for d in digits[max(weight + 1, 0):])
    frac = (frac + "0" * dscale)[:dscale]
    out = intPart + ("." + frac if dscale > 0 else "")
    return "-" + out if sign == 0x4000 else out


def _utf8(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bytea(data: bytes) -> str:
    return "\\x" + data.hex()


def _jsonb(data: bytes) -> str:
    if data[:1] != b"\x01":
        raise Unknown("jsonb of an unknown version")
    return _utf8(data[1:])


def _date(data: bytes) -> str:
    (days,) = _I32.unpack(data)
    if days in (0x7FFFFFFF, -0x80000000):
        return "infinity" if days > 0 else "-infinity"
    return (_EPOCH + datetime.timedelta(days=days)).date().isoformat()


def _timestamp(tz: str):
    def render(data: bytes) -> str:
        (us,) = _I64.unpack(data)
        if us in (0x7FFFFFFFFFFFFFFF, -0x8000000000000000):
            return "infinity" if us > 0 else "-infinity"
        text = (_EPOCH + datetime.timedelta(microseconds=us)).isoformat(" ")
        if "." in text:
            # The server prints only the fraction's significant digits.
            text = text.rstrip("0").rstrip(".")
        return text + tz
    return render


def _bool(data: bytes) -> str:
    return "t" if data == b"\x01" else "f"


def _uuid(data: bytes) -> str:
    return str(uuid.UUID(bytes=data))


_RENDER = {
    16: _bool, 21: _int(_I16), 23: _int(_I32), 20: _int(_I64), 26: _int(_U32), 1700: _numeric,
    700: _float("!f"), 701: _float("!d"), 17: _bytea, 3802: _jsonb, 1082: _date,
    1114: _timestamp(""), 1184: _timestamp("+00"), 2950: _uuid,
}
for _oid in TEXT_LIKE:
    _RENDER[_oid] = _utf8


def toText(oid: int, data: bytes) -> str:
    """
    One binary value of type C{oid} in the server's text output syntax.

    @raise Unknown: a type not rendered here, or bytes malformed for it.
    """
    render = _RENDER.get(oid)
    try:
        if render is not None:
            return render(data)
        if len(data) >= 12 and oid not in INERT:
            # Arrays and records say what they hold: try them by shape.
            if oid == RECORD or (oid not in ARRAYS and _looksLikeRecord(data)):
                return _record(data)
            return _array(data)
    except (struct.error, ValueError, IndexError, OverflowError) as e:
        raise Unknown(f"type {oid}: {e}") from None
    raise Unknown(f"no binary rendering for type {oid}")


def _looksLikeRecord(data: bytes) -> bool:
    """Whether C{data} parses exactly as a binary record (fields with OIDs and lengths)."""
    try:
        (n,) = _I32.unpack_from(data)
        p = 4
        for _ in range(n):
            _oid, size = struct.unpack_from("!Ii", data, p)
            p += 8 + max(size, 0)
        return p == len(data) and n >= 0
    except struct.error:
        return False


def _record(data: bytes) -> str:
    fields = splitRecord(data)
    if fields is None:
        raise Unknown("not a binary record")
    return "(" + ",".join("" if v is None else _quoteField(toText(oid, v)) for oid, v in fields) + ")"


def _quoteField(s: str) -> str:
    if s == "" or any(c in s for c in '(),"\\ \t\n\r\v\f'):
        return '"' + s.replace("\\", "\\\\").replace('"', '""') + '"'
    return s


def _quoteElement(s: str) -> str:
    if s == "" or s.upper() == "NULL" or any(c in s for c in '{},"\\ \t\n\r\v\f'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


def _array(data: bytes) -> str:
    ndim, _flags, elem = struct.unpack_from("!iiI", data)
    if not 0 <= ndim <= 6:
        raise Unknown("array with a bad dimension count")
    p = 12
    dims = []
    for _ in range(ndim):
        size, lower = struct.unpack_from("!ii", data, p)
        if size < 0:
            raise Unknown("array with a negative dimension")
        dims.append((size, lower))
        p += 8
    items = []
    total = 1
    for size, _lower in dims:
        total *= size
    for _ in range(total if ndim else 0):
        (size,) = _I32.unpack_from(data, p)
        p += 4
        if size < 0:
            items.append("NULL")
            continue
        items.append(_quoteElement(toText(elem, data[p:p + size])))
        p += size
    if p != len(data):
        raise Unknown("array with bytes after its last element")
    if not ndim:
        return "{}"
    it = iter(items)

    def nest(d: int) -> str:
        if d == ndim - 1:
            return "{" + ",".join(next(it) for _ in range(dims[d][0])) + "}"
        return "{" + ",".join(nest(d + 1) for _ in range(dims[d][0])) + "}"

    body = nest(0)
    if any(lower != 1 for _size, lower in dims):
        body = "".join(f"[{lower}:{lower + size - 1}]" for size, lower in dims) + "=" + body
    return body


def splitRecord(data: bytes) -> list[tuple[int, bytes | None]] | None:
    """A binary record's (field OID, value) pairs, or None when C{data} is not one exactly."""
    if not _looksLikeRecord(data):
        return None
    (n,) = _I32.unpack_from(data)
    p = 4
    out: list[tuple[int, bytes | None]] = []
    for _ in range(n):
        oid, size = struct.unpack_from("!Ii", data, p)
        p += 8
        out.append((oid, None if size < 0 else data[p:p + size]))
        p += max(size, 0)
    return out


def joinRecord(fields: list[tuple[int, bytes | None]]) -> bytes:
    out = [_I32.pack(len(fields))]
    for oid, v in fields:
        out.append(struct.pack("!Ii", oid, -1 if v is None else len(v)))
        if v is not None:
            out.append(v)
    return b"".join(out)


def splitArray(data: bytes) -> tuple[bytes, int, list[bytes | None]] | None:
    """A binary array's header, element OID and elements, or None when C{data} is not one exactly."""
    try:
        ndim, _flags, elem = struct.unpack_from("!iiI", data)
        if not 0 <= ndim <= 6:
            return None
        p = 12
        total = 1 if ndim else 0
        for _ in range(ndim):
            size, _lower = struct.unpack_from("!ii", data, p)
            if size < 0:
                return None
            total *= size
            p += 8
        head = data[:p]
        items: list[bytes | None] = []
        for _ in range(total):
            (size,) = _I32.unpack_from(data, p)
            p += 4
            items.append(None if size < 0 else data[p:p + size])
            p += max(size, 0)
    except struct.error:
        return None
    return (head, elem, items) if p == len(data) else None


def joinArray(head: bytes, items: list[bytes | None]) -> bytes:
    out = [head]
    for v in items:
        out.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    return b"".join(out)


def splitHstore(data: bytes) -> list[bytes | None] | None:
    """
    A binary hstore's keys and values in order (a NULL value as None), or
    None when C{data} is not one exactly (hstore's OID is the extension's own).
    """
    try:
        (n,) = _I32.unpack_from(data)
        if n < 0:
            return None
        p = 4
        out: list[bytes | None] = []
        for _ in range(n):
            for isKey in (True, False):
                (size,) = _I32.unpack_from(data, p)
                p += 4
                if size < 0:
                    if isKey:
                        return None
                    out.append(None)
                    continue
                if p + size > len(data):
                    return None
                out.append(data[p:p + size])
                p += size
    except struct.error:
        return None
    return out if p == len(data) else None


def joinHstore(items: list[bytes | None]) -> bytes:
    out = [_I32.pack(len(items) // 2)]
    for v in items:
        out.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    return b"".join(out)
