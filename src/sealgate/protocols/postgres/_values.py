"""Masking of one PostgreSQL value by its column's plan: the plans, text and binary values, hex bytea.

L{planColumns} decides once per RowDescription what each column needs;
L{maskValues} applies that to a DataRow's values (L{RowMasker} in
L{sealgate.protocols.postgres.masking} holds the per-session state).
"""

import re

from sealgate.masking import REDACTED, MaskingFailed, notText
from sealgate.protocols.postgres import _binary as b
from sealgate.protocols.postgres import _wire as w

TEXT_OID = 25


# Per-column plans (what maskValues does with a value of that column).
SKIP, TEXT, JSON, JSONB, BYTEA, BYTEA_HEX, AS_TEXT, RENDER, REDACT, UNKNOWN, ARRAY = range(11)

#: Binary arrays whose elements can be masked in place (so they keep their type).
_LEAF_ARRAYS = frozenset({1009, 1015, 1014, 1002, 1003, 143, 199, 3807, 1001})
#: bytea printed as hex inside text: COPY text/CSV, arrays and records in text.
_HEX_RUN = re.compile(rb"\\x((?:[0-9a-fA-F]{2}){6,})")


def maskHexRuns(masker, data: bytes) -> bytes:
    """C{data} with every hex bytea run in it masked on the bytes it stands for (hex kept)."""
    if b"\\x" not in data:
        return data

    def one(m):
        raw = bytes.fromhex(m.group(1).decode("ascii"))
        masked = masker.maskBytes(raw)
        return m.group(0) if masked == raw else b"\\x" + masked.hex().encode()

    out = _HEX_RUN.sub(one, data)
    return data if out == data else out


def _maskTextBytes(masker, v: bytes) -> bytes:
    m = masker.maskBytes(maskHexRuns(masker, v))
    return v if m == v else m


def _asText(c: w.Column) -> w.Column:
    return w.Column(c.name, c.tableOid, c.columnNumber, TEXT_OID, -1, -1, c.format)


def planColumns(masker, desc: w.RowDescription) -> tuple[tuple[int, ...], w.RowDescription]:
    """
    What each column of C{desc} needs (one of the plan constants), and the
    RowDescription to send instead (C{desc} itself when nothing changes):
    column names masked, columns that must become text declared text.
    """
    detect = bool(masker.detectors)
    cards = any(d.name == "credit_card" for d in masker.detectors)
    plan = []
    cols = []
    changed = False
    for c in desc.columns:
        name = masker.maskText(c.name) if detect else c.name
        col = c if name == c.name else w.Column(name, c.tableOid, c.columnNumber, c.typeOid,
                                                 c.typeSize, c.typeMod, c.format)
        oid, binary = c.typeOid, c.format == 1
        if masker.columnMasked(c.name):
            # Whole, whatever the type: a text column under a redacted name
            # is the usual case (an ssn kept as text), not only numbers.
            how = REDACT
        elif not detect:
            how = SKIP
        elif oid in b.TEXT_LIKE and oid != b.JSON:
            how = TEXT
        elif oid == b.JSON:
            how = JSON
        elif oid == b.JSONB:
            how = JSONB if binary else JSON
        elif oid == b.BYTEA:
            how = BYTEA if binary else BYTEA_HEX
        elif oid in b.NUMBERS:
            how = (RENDER if binary else AS_TEXT) if cards else SKIP
        elif oid in b.INERT:
            how = SKIP if binary else TEXT
        elif binary and oid in _LEAF_ARRAYS:
            how = ARRAY
        elif binary:
            how = RENDER if oid in b.ARRAYS or oid == b.RECORD else UNKNOWN
        else:
            how = TEXT
        if how in (AS_TEXT, RENDER) or (how == REDACT and oid != TEXT_OID):
            col = _asText(col)  # REDACTED is text: json, xml or a number would not parse
        plan.append(how)
        changed |= col is not c
        cols.append(col)
    return tuple(plan), (w.RowDescription(tuple(cols)) if changed else desc)


def maskValues(masker, desc: w.RowDescription, plan: tuple[int, ...],
               values: tuple[bytes | None, ...]) -> tuple[bytes | None, ...]:
    """
    A DataRow's values masked by C{plan} (C{values} itself when nothing
    changed).  C{desc} is the backend's RowDescription (names, types).

    @raise MaskingFailed: a value that cannot be vetted (fail closed).
    """
    out: list[bytes | None] = []
    changed = False
    cols = desc.columns
    for i, v in enumerate(values):
        how = plan[i] if i < len(plan) else TEXT
        if v is None or how == SKIP:
            out.append(v)
            continue
        m = _maskOne(masker, how, cols[i] if i < len(cols) else None, v)
        changed |= m is not v
        out.append(m)
    return tuple(out) if changed else values


def _maskOne(masker, how: int, col: w.Column | None, v: bytes) -> bytes:
    if how == REDACT:
        return REDACTED.encode()
    if how == TEXT:
        return _maskTextBytes(masker, v)
    if how == ARRAY:
        arr = b.splitArray(v)
        if arr is None:
            raise MaskingFailed("a binary array that does not parse cannot be vetted")
        head, elem, items = arr
        out = [None if x is None else _maskLeaf(masker, elem, x, 0) for x in items]
        return v if all(x is y for x, y in zip(items, out, strict=True)) else b.joinArray(head, out)
    if how == JSON or how == JSONB:
        start = 1 if how == JSONB else 0
        if how == JSONB and v[:1] != b"\x01":
            raise MaskingFailed("a jsonb value of an unknown binary version cannot be vetted")
        text = v[start:].decode("utf-8", "surrogateescape")
        masked = masker.maskJsonText(text)
        return v if masked is text else v[:start] + masked.encode("utf-8", "surrogateescape")
    if how == BYTEA:
        m = masker.maskBytes(v)
        return v if m == v else m
    if how == BYTEA_HEX:
        return _maskHexBytea(masker, v)
    if how == AS_TEXT:
        # Declared text: the value stays what the server printed, masked.
        return masker.maskBytes(maskHexRuns(masker, v))
    oid = col.typeOid if col is not None else 0
    if how == RENDER:
        try:
            text = b.toText(oid, v)
        except b.Unknown as e:
            raise MaskingFailed(f"a binary value of type {oid} cannot be vetted ({e})") from None
        raw = text.encode("utf-8", "surrogateescape")
        return masker.maskBytes(maskHexRuns(masker, raw))
    # UNKNOWN: an extension type, enum or named composite in binary.
    return _maskUnknown(masker, oid, v, 0)


def _maskUnknown(masker, oid: int, v: bytes, depth: int) -> bytes:
    """
    A binary value of a type only known by its bytes: UTF-8 text (citext,
    enums, domains over text) masked as text; a record or array (named
    composites and their arrays) masked leaf by leaf, in place, so the
    value keeps its type; an hstore's keys and values as text; anything
    else by C{unknown_content}.
    """
    if b"\x00" not in v:
        try:
            text = v.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            m = masker.maskText(text)
            return v if m == text else m.encode("utf-8")
    if depth < 8:
        fields = b.splitRecord(v)
        if fields is not None:
            new = [(f, None if x is None else _maskLeaf(masker, f, x, depth)) for f, x in fields]
            return v if all(x is y for (_f, x), (_g, y) in zip(fields, new, strict=True)) \
                else b.joinRecord(new)
        arr = b.splitArray(v)
        if arr is not None:
            head, elem, items = arr
            out = [None if x is None else _maskLeaf(masker, elem, x, depth) for x in items]
            return v if all(x is y for x, y in zip(items, out, strict=True)) else b.joinArray(head, out)
        pairs = b.splitHstore(v)
        if pairs is not None:
            # hstore: keys and values are text, masked in place.
            masked = [None if x is None else masker.maskBytes(x) for x in pairs]
            return v if masked == pairs else b.joinHstore(masked)
    return notText(masker, f"a binary value of type {oid}", v)


def _maskLeaf(masker, oid: int, v: bytes, depth: int) -> bytes:
    """One field or element inside a binary record or array, in its own binary form."""
    if oid in b.TEXT_LIKE and oid != b.JSON or oid == b.BYTEA:
        m = masker.maskBytes(v)
        return v if m == v else m
    if oid in (b.JSON, b.JSONB):
        return _maskOne(masker, JSON if oid == b.JSON else JSONB, None, v)
    if oid in b.INERT:
        return v
    if oid in b.NUMBERS or oid == b.RECORD or oid in b.ARRAYS:
        try:
            text = b.toText(oid, v)
        except b.Unknown as e:
            raise MaskingFailed(f"a binary value of type {oid} cannot be vetted ({e})") from None
        if masker.maskText(text) == text:
            return v
        raise MaskingFailed(f"a value of type {oid} inside a composite or array would be masked "
                            "and cannot stay binary (ask for text format)")
    return _maskUnknown(masker, oid, v, depth + 1)


def _maskHexBytea(masker, v: bytes) -> bytes:
    if not v.startswith(b"\\x"):
        # bytea_output = escape: the octal escapes hide nothing ASCII.
        m = masker.maskBytes(v)
        return v if m == v else m
    try:
        raw = bytes.fromhex(v[2:].decode("ascii"))
    except ValueError:
        raise MaskingFailed("a bytea value in text format is not hex") from None
    m = masker.maskBytes(raw)
    return v if m == raw else b"\\x" + m.hex().encode()


def maskRow(masker, desc: w.RowDescription, row: w.DataRow) -> tuple[w.RowDescription, w.DataRow]:
    """One row and its description, as the client must see them (see the module docstring)."""
    plan, sent = planColumns(masker, desc)
    values = maskValues(masker, desc, plan, row.values)
    return sent, (row if values is row.values else w.DataRow(values))
