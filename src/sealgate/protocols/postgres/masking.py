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

import re

from sealgate.masking import REDACTED, MaskingFailed, notText, unknownPolicy
from sealgate.protocols.postgres import _binary as b
from sealgate.protocols.postgres import _wire as w

TEXT_OID = 25
#: Error and notice fields that are protocol, not data: severity (twice) and SQLSTATE.
_STRUCTURAL_FIELDS = "SVC"

_T, _D, _H, _d, _c, _C, _N, _A, _S, _V, _W = (ord(c) for c in "TDHdcCNASVW")

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
        elif binary and oid in _LEAF_ARRAYS:
            how = ARRAY
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


#: How many bytes of a result a session holds back while it decides whether
#: its int8/numeric (and binary array/record) columns must be declared text.
HOLD_BYTES = 128 * 1024
#: Plans that change a column's type only because of what its values hold.
_CONDITIONAL = (AS_TEXT, RENDER)
_E = ord("E")


class RowMasker:
    """
    Per-session state: the current row shape and whether COPY OUT is running.

    A result whose columns would be declared text only if a value is masked
    (int8 and numeric with C{credit_card}, arrays and records in binary) is
    held back, RowDescription and rows, until it ends or holds
    L{HOLD_BYTES}: when it ends (CommandComplete, ErrorResponse) with no
    such value masked, the client gets the columns with their own types;
    otherwise (a value masked, the bound reached, a RowDescription answering
    Describe with no rows yet, a portal suspended) they are declared text.
    A row of a result already sent with its own types whose such value would
    be masked is refused (fail closed).
    """

    def __init__(self, masker, audit=None):
        self.masker = masker
        #: C{Session.audit}, to seal what is refused.
        self.audit = audit
        #: Dropping a refused binary COPY's data until its CommandComplete.
        self.swallow = False
        self.desc: w.RowDescription | None = None
        self.plan: tuple[int, ...] = ()
        self.copyOut = False
        self.copyText = True
        self.detectors = bool(masker.detectors)
        #: False while the current rows have nothing a rule could mask.
        self.active = True
        #: Columns of the current shape whose type depends on their values.
        self.cond: tuple[int, ...] = ()
        self.fullPlan: tuple[int, ...] = ()
        #: The held RowDescription choices and rows, while undecided.
        self.held: list | None = None
        self.heldSize = 0
        self._pending: tuple = ()
        #: The current shape was sent with its own types (see the class docstring).
        self.typed = False
        #: Shapes once described before their rows: always declared text after that.
        self._sticky: set[tuple] = set()
        self._pendingKey: tuple | None = None
        #: RowDescription bytes -> its shape: a session repeats its queries.
        self._shapes: dict[bytes, tuple] = {}

    def frame(self, f) -> bytes:
        """One backend message (a L{w.Frame}) as the client may see it."""
        t = f.type
        if t == _D:
            return self._row(f) if self.active else f.raw
        if self.held is not None:
            return self.release(t) + self.frame(f)
        return self._other(f, t)

    def _refuseCopy(self) -> bytes:
        """
        Binary COPY OUT on a session with detectors: the client gets an
        error instead of the data (the backend's CopyData, CopyDone and
        CommandComplete are dropped) and the session goes on; sealed.
        """
        reason = ("binary COPY cannot be vetted for masking (use text or CSV COPY, or set "
                  "[masking] unknown_content)")
        self.swallow = True
        if self.audit is not None:
            self.audit("output_refused", channel=0, reason=reason)
        return w.ErrorResponse.make("ERROR", "0A000", f"sealgate: {reason}").encode()

    def release(self, t: int) -> bytes:
        """A message of type C{t} that is not a row ends the held result: decide and send it."""
        if t in (_C, _E):
            return self._commit(retype=False)
        # A description sent before its rows (Describe, a suspended portal) may
        # be what the client decodes later results of that shape with: text from now on.
        if self._pendingKey is not None and len(self._sticky) < 1000:
            self._sticky.add(self._pendingKey)
        return self._commit(retype=True)

    def _other(self, f, t: int) -> bytes:
        if t == _T:
            return self._describe(f)
        masker = self.masker
        if t == _d:
            if self.swallow:
                return b""
            if self.copyOut and (self.copyText or unknownPolicy(masker) == "mask"):
                data = f.raw[5:]
                masked = masker.maskBytes(maskHexRuns(masker, data) if self.copyText else data)
                if masked != data:
                    return w.CopyData(masked).encode()
            return f.raw
        if t == _H:
            msg = w.decodeFrame(f, False)
            self.copyOut = True
            self.copyText = msg.format == 0
            if not self.copyText and self.detectors and unknownPolicy(masker) == "refuse":
                return self._refuseCopy()
            return f.raw
        if t == _c:
            self.copyOut = False
            return b"" if self.swallow else f.raw
        if t == _C:
            if self.swallow:
                self.swallow = False
                return b""
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
            hit = self._shape(f)
            if len(self._shapes) < 1000:
                self._shapes[f.raw] = hit
        self.desc, self.plan, self.active, reply, self.cond, original, key = hit
        self.fullPlan = self.plan
        self.typed = False
        if not self.cond or key in self._sticky:
            return reply
        self._pendingKey = key
        self._pending = (reply, *original)
        self.held, self.heldSize = [], len(f.raw)
        return b""

    def _shape(self, f) -> tuple:
        desc = w.decodeFrame(f, False)
        plan, sent = planColumns(self.masker, desc)
        active = any(how != SKIP for how in plan)
        cond = tuple(i for i, how in enumerate(plan) if how in _CONDITIONAL)
        # The same description with those columns' own types (names still masked).
        cols = list(sent.columns)
        for i in cond:
            c, s = desc.columns[i], cols[i]
            cols[i] = w.Column(s.name, c.tableOid, c.columnNumber, c.typeOid, c.typeSize,
                               c.typeMod, c.format)
        typed = w.RowDescription(tuple(cols))
        plain = tuple(SKIP if i in cond else how for i, how in enumerate(plan))
        original = (plain, f.raw if typed == desc else typed.encode())
        # The same columns whatever the format asked for (Describe says text for a portal
        # a later FETCH returns in binary).
        key = tuple((c.name, c.tableOid, c.columnNumber, c.typeOid, c.typeMod) for c in desc.columns)
        return desc, plan, active, f.raw if sent is desc else sent.encode(), cond, original, key

    def _hits(self, values) -> bool:
        """Whether masking would change a value of a column whose type depends on it."""
        masker, cols = self.masker, self.desc.columns if self.desc else ()
        for i in self.cond:
            v = values[i] if i < len(values) else None
            if v is None:
                continue
            if self.fullPlan[i] == AS_TEXT:
                if masker.maskBytes(v) != v:
                    return True
                continue
            try:
                text = b.toText(cols[i].typeOid, v)
            except b.Unknown:
                return True  # declared text; masking it refuses it
            if masker.maskText(text) != text:
                return True
        return False

    def _commit(self, retype: bool) -> bytes:
        reply, plain, typedReply = self._pending
        held, self.held, self._pending, self._pendingKey = self.held or [], None, (), None
        if retype:
            out = [reply]
        else:
            out = [typedReply]
            self.plan, self.typed = plain, True
        desc = self.desc if self.desc is not None else w.RowDescription(())
        for raw, values in held:
            masked = maskValues(self.masker, desc, self.plan, values)
            out.append(raw if masked is values else w.DataRow(masked).encode())
        return b"".join(out)

    def _row(self, f) -> bytes:
        row = w.decodeFrame(f, False)
        if self.held is not None:
            self.held.append((f.raw, row.values))
            self.heldSize += len(f.raw)
            if self.heldSize > HOLD_BYTES or self._hits(row.values):
                return self._commit(retype=True)
            return b""
        if self.typed and self.cond and self._hits(row.values):
            raise MaskingFailed("a value to mask in a column already sent as a number "
                                "(cast the column to text)")
        desc = self.desc if self.desc is not None else w.RowDescription(())
        plan = self.plan if self.desc is not None else (TEXT,) * len(row.values)
        values = maskValues(self.masker, desc, plan, row.values)
        return f.raw if values is row.values else w.DataRow(values).encode()
