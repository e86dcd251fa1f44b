"""Masking of PostgreSQL replies: rows in text and binary format, COPY OUT, and every text field.

Rows: L{planColumns} decides once per RowDescription what each column
needs, L{maskValues} applies it to a DataRow; L{maskRow} is both, a pure
function of (RowDescription, DataRow) -> (RowDescription', DataRow').

- Text-like types (text, varchar, bpchar, name, char, xml, unknown) are
  masked in place in either format (their binary form is their UTF-8);
  json and jsonb as JSON documents, so they stay valid JSON.
- bytea is masked on its bytes (binary), or on the bytes its hex text
  stands for (text format), so it stays valid bytea.
- A column a name rule redacts, or whose masked value would no longer be a
  value of its type (int8 and numeric, their arrays, arrays and records of
  anything in binary), is declared C{text} (OID 25) in RowDescription and
  sent as masked text, in the format the client asked for (the binary form
  of text is its UTF-8): typed drivers (psycopg, asyncpg) load it as a
  string.  int8 and numeric are declared text only with C{credit_card} on,
  the one detector a bare number can match.
- Types that cannot hold a value (bool, int2, int4, floats, dates, times,
  uuid, inet, geometry...) are passed in binary; their text is still
  scanned.
- Any other binary value (an extension type, an enum, a named composite)
  is masked in place when it reads as UTF-8 text (citext, enums and
  domains over text do), or leaf by leaf when it is a record, an array or
  an hstore; else C{unknown_content} decides (refuse by default with
  detectors: the reply is refused, sealed as such).

COPY OUT in text or CSV is masked as text; binary COPY goes by
C{unknown_content}.  Every field of ErrorResponse and NoticeResponse but
severity and SQLSTATE, RowDescription column names, ParameterStatus
values, NotificationResponse channels and payloads, and
FunctionCallResponse results are masked by the detectors.
"""

from sealgate.masking import REDACTED, MaskingFailed, notText, unknownPolicy
from sealgate.protocols.postgres import _binary as b
from sealgate.protocols.postgres import _wire as w

TEXT_OID = 25
#: Error and notice fields that are protocol, not data: severity (twice) and SQLSTATE.
_STRUCTURAL_FIELDS = "SVC"

_T, _D, _H, _d, _c, _N, _A, _S, _V, _W = (ord(c) for c in "TDHdcNASVW")

# Per-column plans (what maskValues does with a value of that column).
SKIP, TEXT, JSON, JSONB, BYTEA, BYTEA_HEX, AS_TEXT, RENDER, REDACT, UNKNOWN = range(10)


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
            how = REDACT if oid not in b.TEXT_LIKE else TEXT
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
        elif binary:
            how = RENDER if oid in b.ARRAYS or oid == b.RECORD else UNKNOWN
        else:
            how = TEXT
        if how in (REDACT, AS_TEXT, RENDER):
            col = _asText(col)
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
        m = masker.maskBytes(v)
        return v if m == v else m
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
        return masker.maskBytes(v)
    oid = col.typeOid if col is not None else 0
    if how == RENDER:
        try:
            text = b.toText(oid, v)
        except b.Unknown as e:
            raise MaskingFailed(f"a binary value of type {oid} cannot be vetted ({e})") from None
        return masker.maskText(text).encode("utf-8", "surrogateescape")
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


class RowMasker:
    """Per-session state: the current row shape and whether COPY OUT is running."""

    def __init__(self, masker):
        self.masker = masker
        self.desc: w.RowDescription | None = None
        self.plan: tuple[int, ...] = ()
        self.copyOut = False
        self.copyText = True
        self.detectors = bool(masker.detectors)
        #: False while the current rows have nothing a rule could mask.
        self.active = True
        #: RowDescription bytes -> (desc, plan, active, reply): a session repeats its queries.
        self._shapes: dict[bytes, tuple] = {}

    def frame(self, f) -> bytes:
        """One backend message (a L{w.Frame}) as the client may see it."""
        t = f.type
        if t == _D:
            return self._row(f) if self.active else f.raw
        if t == _T:
            return self._describe(f)
        masker = self.masker
        if t == _d:
            if self.copyOut and (self.copyText or unknownPolicy(masker) == "mask"):
                data = f.raw[5:]
                masked = masker.maskBytes(data)
                if masked != data:
                    return w.CopyData(masked).encode()
            return f.raw
        if t == _H:
            msg = w.decodeFrame(f, False)
            self.copyOut = True
            self.copyText = msg.format == 0
            if not self.copyText and self.detectors and unknownPolicy(masker) == "refuse":
                raise MaskingFailed("binary COPY cannot be vetted (use text or CSV COPY, or set "
                                    "[masking] unknown_content)")
            return f.raw
        if t == _c:
            self.copyOut = False
            return f.raw
        if t == _W and (self.detectors or self.masker.names):
            # Streaming replication: WAL records carry row data in binary.
            raise MaskingFailed("a replication stream cannot be vetted on a masked session")
        if not self.detectors:
            return f.raw
        if t == _N:
            msg = w.decodeFrame(f, False)
            fields = self.fields(msg.fields)
            return f.raw if fields is msg.fields else w.NoticeResponse(fields).encode()
        if t == _A:
            msg = w.decodeFrame(f, False)
            channel, payload = masker.maskText(msg.channel), masker.maskText(msg.payload)
            if (channel, payload) != (msg.channel, msg.payload):
                return w.NotificationResponse(msg.pid, channel, payload).encode()
        elif t == _S:
            msg = w.decodeFrame(f, False)
            value = masker.maskText(msg.value)
            if value != msg.value:
                return w.ParameterStatus(msg.name, value).encode()
        elif t == _V:
            msg = w.decodeFrame(f, False)
            if msg.value is not None:
                value = masker.maskBytes(msg.value)
                if value != msg.value:
                    return w.FunctionCallResponse(value).encode()
        return f.raw

    def fields(self, fields):
        """Mask every field of an ErrorResponse/NoticeResponse but severity and SQLSTATE."""
        if not self.detectors:
            return fields
        out = []
        changed = False
        for k, v in fields:
            if k not in _STRUCTURAL_FIELDS:
                m = self.masker.maskText(v)
                changed |= m != v
                v = m
            out.append((k, v))
        return tuple(out) if changed else fields

    def _describe(self, f) -> bytes:
        hit = self._shapes.get(f.raw)
        if hit is None:
            desc = w.decodeFrame(f, False)
            plan, sent = planColumns(self.masker, desc)
            active = any(how != SKIP for how in plan)
            hit = (desc, plan, active, f.raw if sent is desc else sent.encode())
            if len(self._shapes) < 1000:
                self._shapes[f.raw] = hit
        self.desc, self.plan, self.active, reply = hit
        return reply

    def _row(self, f) -> bytes:
        row = w.decodeFrame(f, False)
        desc = self.desc if self.desc is not None else w.RowDescription(())
        plan = self.plan if self.desc is not None else (TEXT,) * len(row.values)
        values = maskValues(self.masker, desc, plan, row.values)
        return f.raw if values is row.values else w.DataRow(values).encode()
