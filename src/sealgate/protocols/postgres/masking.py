"""Masking of PostgreSQL results: DataRow (text and binary), COPY TO, error and notice texts.

Values of text-like types are masked in place in either format (binary
text is the same UTF-8).  A binary column of another type whose name a
column rule masks cannot hold a masked string, so that column is sent as
text: its RowDescription entry says format 0, type text, and its values
are the masked text.  Binary COPY is not decoded (text and CSV COPY are).
"""

from sealgate.protocols.postgres import _wire as w

#: text, varchar, bpchar, name, json, xml, unknown, citext-like domains fall back.
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 114, 142, 705, 0})
JSONB = 3802
TEXT_OID = 25

_T, _D, _H, _d, _c, _N, _A = (ord(c) for c in "TDHdcNA")


class RowMasker:
    """Per-session state: the current row shape and whether COPY OUT is running."""

    def __init__(self, masker):
        self.masker = masker
        self.plan: list | None = None
        self.copyOut = False
        self.copyText = True
        self.detectors = bool(masker.detectors)
        #: False while the current rows have nothing a rule could mask.
        self.active = True
        #: RowDescription bytes -> (plan, active, reply): a session repeats its queries.
        self._shapes: dict[bytes, tuple] = {}

    def frame(self, f) -> bytes:
        t = f.type
        if t == _D:
            return self._row(f) if self.active else f.raw
        if t == _T:
            return self._describe(f)
        if t == _d:
            if self.copyOut and self.copyText:
                data = f.raw[5:]
                masked = self.masker.maskBytes(data)
                if masked != data:
                    return w.CopyData(masked).encode()
            return f.raw
        if t == _H:
            msg = w.decodeFrame(f, False)
            self.copyOut = True
            self.copyText = msg.format == 0
            return f.raw
        if t == _c:
            self.copyOut = False
            return f.raw
        if t == _N:
            msg = w.decodeFrame(f, False)
            fields = self.fields(msg.fields)
            return f.raw if fields is msg.fields else w.NoticeResponse(fields).encode()
        if t == _A:
            msg = w.decodeFrame(f, False)
            payload = self.masker.maskText(msg.payload)
            if payload != msg.payload:
                return w.NotificationResponse(msg.pid, msg.channel, payload).encode()
        return f.raw

    def fields(self, fields):
        """Mask an ErrorResponse/NoticeResponse's message, detail, hint and where."""
        out = []
        changed = False
        for k, v in fields:
            if k in "MDHW":
                m = self.masker.maskText(v)
                changed |= m != v
                v = m
            out.append((k, v))
        return tuple(out) if changed else fields

    def _describe(self, f) -> bytes:
        hit = self._shapes.get(f.raw)
        if hit is None:
            hit = self._plan(f)
            if len(self._shapes) < 1000:
                self._shapes[f.raw] = hit
        self.plan, self.active, reply = hit
        return reply

    def _plan(self, f) -> tuple:
        desc = w.decodeFrame(f, False)
        plan = []
        cols = []
        changed = False
        for c in desc.columns:
            named = self.masker.columnMasked(c.name)
            if c.format == 1 and c.typeOid not in TEXT_TYPES and c.typeOid != JSONB:
                if named:
                    plan.append((c.name, "astext"))
                    cols.append(w.Column(c.name, c.tableOid, c.columnNumber, TEXT_OID, -1, -1, 0))
                    changed = True
                    continue
                plan.append((c.name, "skip"))
            elif c.format == 1 and c.typeOid == JSONB:
                plan.append((c.name, "jsonb"))
            elif c.format == 0 and c.typeOid not in TEXT_TYPES and not named:
                # Numbers, dates and the like: detectors still see their text
                # (a card number stored as numeric).
                plan.append((c.name, "text"))
            else:
                plan.append((c.name, "text"))
            cols.append(c)
        active = self.detectors or any(how == "astext" or self.masker.columnMasked(name)
                                       for name, how in plan)
        return plan, active, (w.RowDescription(tuple(cols)).encode() if changed else f.raw)

    def _row(self, f) -> bytes:
        row = w.decodeFrame(f, False)
        plan = self.plan
        masker = self.masker
        out: list[bytes | None] = []
        changed = False
        for i, v in enumerate(row.values):
            if v is None:
                out.append(v)
                continue
            name, how = plan[i] if plan is not None and i < len(plan) else (None, "text")
            if how == "skip":
                out.append(v)
                continue
            if how == "astext":
                m = masker.maskValue(name, v.hex()).encode()
                changed = True
            elif how == "jsonb" and v[:1] == b"\x01":
                s = v[1:].decode("utf-8", "surrogateescape")
                ms = masker.maskValue(name, s)
                m = v if ms == s else b"\x01" + ms.encode("utf-8", "surrogateescape")
            else:
                s = v.decode("utf-8", "surrogateescape")
                ms = masker.maskValue(name, s)
                m = v if ms == s else ms.encode("utf-8", "surrogateescape")
            changed |= m is not v
            out.append(m)
        return w.DataRow(tuple(out)).encode() if changed else f.raw
