"""Masking of PostgreSQL replies: rows in text and binary format, COPY OUT, and every text field.

Rows: L{planColumns} decides once per RowDescription what each column
needs, L{maskValues} applies it to a DataRow; L{maskRow} is both, a pure
function of (RowDescription, DataRow) -> (RowDescription', DataRow').
Those value rules live in L{sealgate.protocols.postgres._values}; the
per-session state (held results, shapes, undescribed rows) in L{RowMasker}.

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

from sealgate.masking import MaskingFailed, unknownPolicy
from sealgate.masking._detectors import MIN_VALUE, suspect
from sealgate.protocols.postgres import _binary as b
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._described import Descriptions, replyStarts, replyTypes
from sealgate.protocols.postgres._values import (  # noqa: F401 (re-exported)
    ARRAY,
    AS_TEXT,
    BYTEA,
    BYTEA_HEX,
    JSON,
    JSONB,
    REDACT,
    RENDER,
    SKIP,
    TEXT,
    TEXT_OID,
    UNKNOWN,
    _maskTextBytes,
    maskHexRuns,
    maskRow,
    maskValues,
    planColumns,
)

#: Error and notice fields that are protocol, not data: severity (twice) and SQLSTATE.
_STRUCTURAL_FIELDS = "SVC"
_T, _D, _H, _d, _c, _C, _N, _A, _S, _V, _W = (ord(c) for c in "TDHdcCNASVW")

#: How many bytes of a result a session holds back while it decides whether
#: its int8/numeric (and binary array/record) columns must be declared text.
HOLD_BYTES = 128 * 1024
#: Plans that change a column's type only because of what its values hold.
_CONDITIONAL = (AS_TEXT, RENDER)
#: Why a COPY OUT is refused.
BINARY_COPY = "binary COPY cannot be vetted for masking (use text or CSV COPY, or set [masking] unknown_content)"
NAMED_COPY = ("COPY carries no column names, so redacted columns ([masking] columns) cannot be found in it "
              "(SELECT the columns instead, or set [masking] unknown_content = \"pass\")")
_E, _Z = ord("E"), ord("Z")
_NUMBER = re.compile(rb"\s*[-+]?[0-9]+(\.[0-9]+)?\s*")


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
        #: Some result of this session had its int8/numeric columns sent with their own types.
        self.anyTyped = False
        #: Statements described earlier, for rows that come with no RowDescription.
        self.descs = Descriptions()
        #: A RowDescription came since the last result ended (else rows are undescribed).
        self.described = False
        #: The current shape was sent with its own types (see the class docstring).
        self.typed = False
        #: Shapes once described before their rows: always declared text after that.
        self._sticky: set[tuple] = set()
        self._pendingKey: tuple | None = None
        #: RowDescription bytes -> its shape: a session repeats its queries.
        self._shapes: dict[bytes, tuple] = {}
        #: The plan L{_short} last looked at, and whether it masks only as text.
        self._plainPlan: tuple | None = None
        self._plain = False

    def frame(self, f) -> bytes:
        """One backend message (a L{w.Frame}) as the client may see it."""
        t = f.type
        if t == _D:
            if not self.described and not self._describedEarlier():
                return self._undescribed(f)
            if not self.active:
                return f.raw
            if self.held is None and not self.cond and self._plainRow(f.raw):
                return f.raw
            return self._row(f)
        if self.held is not None:
            return self.release(t) + self.frame(f)
        if t == _C:
            self.described = False
            self.descs.reply(t)
        return self._other(f, t)

    def _plainRow(self, raw: bytes) -> bool:
        """
        Whether a DataRow of the current shape passes as it is, unread:
        every column is passed or masked as text only, and either all its
        values together are shorter than the shortest value a detector
        finds, or the whole message holds nothing any detector could find
        (L{suspect}) and no hex bytea.  Each value is part of the message,
        so what the message lacks, each value lacks: none would change.
        """
        plan = self.plan
        if plan is not self._plainPlan:
            self._plainPlan = plan
            self._plain = all(how == SKIP or how == TEXT for how in plan)
        if not self._plain or self.desc is None:
            return False
        if len(raw) - 7 - 4 * ((raw[5] << 8) | raw[6]) < MIN_VALUE:
            return True
        return b"\\x" not in raw and not suspect(raw.decode("utf-8", "surrogateescape"), 0)

    def fromClient(self, t: int, raw: bytes) -> None:
        """A client message the relay forwards: statements, portals and what awaits a reply."""
        self.descs.fromClient(t, raw)

    def passing(self, t: int | bytes) -> bytes:
        """
        A reply the masker does not change went by (C{t} its type, or a run
        of such replies): a held result ends, and rows after it belong to no
        RowDescription seen in this exchange.
        """
        self.described = False
        if t.__class__ is bytes:
            last = _Z
            for last in replyTypes(t):  # type: ignore[arg-type]
                self.descs.reply(last)
        else:
            last = t  # type: ignore[assignment]
            self.descs.reply(last)
        return b"" if self.held is None else self.release(last)

    def copyRun(self, run: bytes) -> bool:
        """
        Whether a run of whole replies that came during text COPY OUT (its
        CopyData, left unsplit by the relay) goes out as it is, with one
        look at all of it: true only when nothing in the run could be a
        value any detector finds (L{suspect}) and it holds no hex bytea.
        Both tests only ask whether a string occurs, so what is absent from
        the run is absent from each row: every row would have been passed
        unchanged (C{tests/test_pg_copybatch.py}).
        """
        if self.swallow or not self.copyText or b"\\x" in run:
            return False
        return not suspect(run.decode("utf-8", "surrogateescape"), 0)

    def maskCopyRun(self, run: bytes, byMessage) -> bytes:
        """
        Such a run as the client may see it: whole when L{copyRun} says so,
        else halved (at message boundaries) while a half may hold a value,
        so rows around a rare value still pass in bulk; what is left (16
        messages or fewer, a run with values near both ends, or a COPY
        that is not text) goes to C{byMessage}, which splits it and masks
        message by message.
        """
        if self.copyRun(run):
            released = self.passing(0)  # a run the relay split off
            return released + run if released else run
        if self.swallow or not self.copyText:
            return byMessage(run)
        if len(run) > 4096 and not self.copyRun(run[:256]) and not self.copyRun(run[-256:]):
            # Values near both ends: likely dense, where halving would only look again.
            # (Either way is exact: this only chooses which.)
            return byMessage(run)
        starts = list(replyStarts(run))
        n = len(starts) - 1
        out: list[bytes] = []
        self._copyPieces(run, starts, 0, n, byMessage, out)
        return b"".join(out)

    def _copyPieces(self, run: bytes, starts: list, lo: int, hi: int, byMessage, out: list) -> None:
        if hi - lo <= 16:
            out.append(byMessage(run[starts[lo]:starts[hi]]))
            return
        mid = (lo + hi) // 2
        for start, end in ((lo, mid), (mid, hi)):
            piece = run[starts[start]:starts[end]]
            if self.copyRun(piece):
                out.append(self.passing(0))
                out.append(piece)
            else:
                self._copyPieces(run, starts, start, end, byMessage, out)

    def _describedEarlier(self) -> bool:
        """Rows with no RowDescription: take their statement's, if it was described (and bound)."""
        desc = self.descs.forRows()
        if desc is None:
            return False
        plan, _sent = planColumns(self.masker, desc)
        self.desc, self.plan, self.fullPlan = desc, plan, plan
        self.active = any(how != SKIP for how in plan)
        self.cond, self.typed, self.described = (), False, True
        return True

    def _undescribed(self, f) -> bytes:
        """
        Rows with no RowDescription before them in their exchange: a portal
        executed without Describe, its statement described earlier (asyncpg
        and JDBC statement caches).  Which description applies is not known
        here, so values are masked as text when they read as text, and a row
        with any other value (binary numbers) is refused.
        """
        row = w.decodeFrame(f, False)
        out: list[bytes | None] = []
        for v in row.values:
            if v is not None:
                if b"\x00" in v:
                    raise MaskingFailed("binary rows of a statement described in an earlier "
                                        "exchange cannot be vetted (Describe the portal)")
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    raise MaskingFailed("binary rows of a statement described in an earlier "
                                        "exchange cannot be vetted (Describe the portal)") from None
                m = _maskTextBytes(self.masker, v)
                if m is not v and self.anyTyped and _NUMBER.fullmatch(v):
                    # It may be a column the client was told is a number.
                    raise MaskingFailed("a value to mask in a column already sent as a number "
                                        "(cast the column to text)")
                v = m
            out.append(v)
        values = tuple(out)
        return f.raw if values == row.values else w.DataRow(values).encode()

    def _refuseCopy(self, reason: str) -> bytes:
        """
        COPY OUT that cannot be vetted (binary COPY on a session with
        detectors; any COPY on a session with redacted names): the client
        gets an error instead of the data (the backend's CopyData, CopyDone
        and CommandComplete are dropped) and the session goes on; sealed.
        """
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
                return self._refuseCopy(BINARY_COPY)
            if masker.names and masker.unknownContent != "pass":
                # COPY carries no column names: a redacted column would go out whole.
                return self._refuseCopy(NAMED_COPY)
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
        self.described = True
        hit = self._shapes.get(f.raw)
        if hit is None:
            hit = self._shape(f)
            if len(self._shapes) < 1000:
                self._shapes[f.raw] = hit
        self.descs.described(hit[0])
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
            self.plan, self.typed, self.anyTyped = plain, True, True
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
