"""What the relay does with a backend's response head (framing, body mode, the masked head it sends), worked out once per distinct head."""

import re

import attrs

from sealgate.masking import maskHead
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._body import bodyMode


@attrs.frozen
class ResponsePlan:
    """
    Everything an exchange takes from one response head: a pure function
    of the head's bytes and of the request and session facts in
    L{planKey}, so equal keys get equal plans (L{PlanCache}).  The body
    framing is described, not held: each exchange reads its own body.
    """

    status: int
    #: The body framing: None (no body), else its kind and length.
    framingKind: str | None
    framingLength: int
    #: The backend connection can carry another request after this one.
    reusable: bool
    #: "pass", "json", "text" or "refuse" (L{bodyMode}).
    mode: str
    contentType: str
    contentTypeRaw: bytes | None
    contentEncoding: bytes | None
    passLength: bytes | None
    #: The head carries a secret header (Set-Cookie...): recorded redacted.
    secretHead: bool
    closeAfter: bool
    chunkOut: bool
    rawPass: bool
    first: bytes
    pairs: tuple
    #: The head to send and the head to record (one object when equal),
    #: for every mode but "json" (its length is the masked body's).
    head: bytes
    recorded: bytes
    #: A "json" body's head up to its Content-Length line (no secret header).
    lengthHead: bytes

    def framing(self) -> _framing.BodyFraming | None:
        """A fresh reader of this response's body framing."""
        if self.framingKind is None:
            return None
        return _framing.BodyFraming(self.framingKind, self.framingLength,
                                    keepTrailers=self.framingKind == "chunked")


def planResponse(parsed, method: bytes, version: bytes, closeAfter: bool, chain,
                 secretHeaders: frozenset) -> ResponsePlan:
    """
    The plan for one parsed response head (L{_wire.parseHeadIndexed}) to
    a request of C{method} and C{version}, on a session with C{chain}.

    @raise _wire.ProtocolError: its framing is malformed.
    """
    head, low, names = parsed
    framing = _framing.responseFraming(low, head.status, method)
    connection = low.get(b"connection")
    drop = _wire.hopByHop(connection)
    reusable = not (head.version != b"HTTP/1.1" or (connection and b"close" in b",".join(connection).lower()))
    if framing is not None and framing.kind == "close":
        reusable = False
    masker = chain.masker
    ctype = (low.get(b"content-type") or [None])[0]
    encoding = (low.get(b"content-encoding") or [None])[0]
    mode = "pass"
    if framing is not None and (masker is not None or chain.wantsOutput):
        mode = bodyMode(ctype, encoding)
    skip = drop
    if framing is not None and framing.kind != "length" and b"content-length" in low:
        # Chunked wins over a Content-Length beside it (RFC 9112 6.3);
        # passing both on would leave the client to guess.
        skip = drop | {b"content-length"}
    passLength = None
    if framing is not None and framing.kind == "length" and encoding is None:
        passLength = b"%d" % framing.length
    if mode in ("json", "text"):
        skip = drop | {b"content-encoding", b"content-length"}
    pairs = [pair for pair, n in zip(head.headers, names, strict=True) if n not in skip]
    reason = head.reason
    if masker is not None and mode != "refuse":
        # Header values and the reason phrase are the backend's text too
        # (Set-Cookie, Location, Content-Disposition...): same lengths.
        reason, pairs = maskHead(masker, reason, pairs)
    secretHead = not secretHeaders.isdisjoint(low)
    chunkOut, rawPass = False, True
    if mode == "text" or (framing is not None and framing.kind == "chunked"):
        if version == b"HTTP/1.1":
            pairs = [*pairs, (b"Transfer-Encoding", b"chunked")]
            # Masked bodies are chunked again here (a JSON one as one
            # chunk, never with a Content-Length); so is a passed body
            # whose trailers must be masked.
            chunkOut = mode != "pass" or masker is not None
            rawPass = not chunkOut
        else:
            closeAfter = True
            rawPass = False
    elif framing is not None and framing.kind == "close":
        closeAfter = True
    if closeAfter:
        pairs = [*pairs, (b"Connection", b"close")]
    first = b"HTTP/1.1 %d " % head.status + reason
    sent = recorded = lengthHead = b""
    if mode not in ("json", "refuse"):
        sent = recorded = _wire.serializeHead(first, pairs)
        if secretHead:
            recorded = _wire.serializeHead(first, redactPairs(pairs, secretHeaders))
    elif mode == "json" and not secretHead:
        lengthHead = _wire.serializeHead(first, pairs)[:-2]
    return ResponsePlan(
        head.status, framing.kind if framing is not None else None,
        framing.length if framing is not None else 0, reusable, mode,
        (ctype or b"").decode("latin-1"), ctype, encoding, passLength, secretHead, closeAfter,
        chunkOut, rawPass, first, tuple(pairs), sent, recorded, lengthHead)


def redactPairs(pairs, secretHeaders: frozenset) -> list:
    """Header pairs with the values of secret headers replaced by C{[redacted]}."""
    return [(n, _wire.REDACTED if n.lower() in secretHeaders else v) for n, v in pairs]


class PlanCache:
    """
    The plans of the response heads one backend sent lately.  A backend
    sends the same head again and again but for its Date (once a second)
    and its Content-Length (from one document to the next), so a head is
    looked up by its bytes without those two values (L{headKey}) and the
    facts a plan depends on (L{planKey}); a plan found for other values
    is the same plan with those two header values (and the body's length)
    put in, where the head has each exactly once (L{_Entry}), else the head
    is planned again.  Bounded; a head with a secret header (its
    Set-Cookie differs each time anyway, and no secret is kept here), a
    refusal and an interim answer are never kept.
    """

    MAX = 256
    #: Longer heads are planned each time.
    MAX_HEAD = 8192

    def __init__(self):
        self._plans: dict = {}
        #: The head found last, as it came, with its context and plan.
        self._last: tuple = (None, None, None)

    def get(self, raw: bytes, context: tuple) -> ResponsePlan | None:
        """The plan for head C{raw} in C{context} (L{planKey}), or None: plan it, then L{put} it."""
        last = self._last
        if raw == last[0] and context == last[1]:
            return last[2]
        if len(raw) > self.MAX_HEAD:
            return None
        key, date, length = headKey(raw)
        entry = self._plans.get((key, context))
        if entry is None:
            return None
        if entry.date != date or entry.length != length:
            entry = entry.again(date, length)
            if entry is None:
                return None
            self._plans[key, context] = entry
        self._last = (raw, context, entry.plan)
        return entry.plan

    def put(self, raw: bytes, context: tuple, plan: ResponsePlan, low: dict) -> None:
        """Keep C{plan}, made for head C{raw} (its header values by lower-cased name in C{low})."""
        if plan.secretHead or plan.mode == "refuse" or len(raw) > self.MAX_HEAD:
            return
        key, date, length = headKey(raw)
        plans = self._plans
        if len(plans) >= self.MAX:
            plans.clear()  # what recurs comes back at once
        plans[key, context] = _Entry.of(plan, date, length, low)


@attrs.frozen
class _Entry:
    """
    A kept plan and the Date and Content-Length values it was made for;
    C{dateAt}/C{lengthAt} are where those headers are in the plan's pairs
    (-1: not sent on), C{None} when the plan cannot be made again for other
    values (the header is not there exactly once, or the length is not
    what frames the body) and a head with other values is planned anew.
    """

    plan: ResponsePlan
    date: bytes | None
    length: bytes | None
    dateAt: int | None
    lengthAt: int | None

    @classmethod
    def of(cls, plan: ResponsePlan, date: bytes | None, length: bytes | None, low: dict) -> "_Entry":
        dateAt = lengthAt = None
        if date is not None and len(low.get(b"date", ())) == 1:
            dateAt = _onlyPair(plan.pairs, b"Date", date)
        if length is not None and len(low.get(b"content-length", ())) == 1 \
                and plan.framingKind == "length" and plan.framingLength == int(length):
            lengthAt = _onlyPair(plan.pairs, b"Content-Length", length)
        return cls(plan, date, length, dateAt, lengthAt)

    def again(self, date: bytes | None, length: bytes | None) -> "_Entry | None":
        """This entry's plan for a head with these values, or None when it must be planned anew."""
        plan = self.plan
        pairs = list(plan.pairs)
        if date != self.date:
            if self.dateAt is None or date is None:
                return None
            if self.dateAt >= 0:
                pairs[self.dateAt] = (b"Date", date)
        framingLength, passLength = plan.framingLength, plan.passLength
        if length != self.length:
            if self.lengthAt is None or length is None or int(length) == 0:
                return None
            framingLength = int(length)
            if passLength is not None:
                passLength = b"%d" % framingLength
            if self.lengthAt >= 0:
                pairs[self.lengthAt] = (b"Content-Length", length)
        sent = recorded = lengthHead = b""
        if plan.mode == "json":
            lengthHead = _wire.serializeHead(plan.first, pairs)[:-2]
        else:
            sent = recorded = _wire.serializeHead(plan.first, pairs)
        return _Entry(attrs.evolve(plan, framingLength=framingLength, passLength=passLength,
                                   pairs=tuple(pairs), head=sent, recorded=recorded,
                                   lengthHead=lengthHead),
                      date, length, self.dateAt, self.lengthAt)


def _onlyPair(pairs: tuple, name: bytes, value: bytes) -> int | None:
    """Where the one pair named C{name} (holding C{value}) is, -1 if none is; None if that is not so."""
    at = [i for i, (n, _v) in enumerate(pairs) if n.lower() == name.lower()]
    if not at:
        return -1
    if len(at) == 1 and pairs[at[0]] == (name, value):
        return at[0]
    return None


#: A C{Date} line's value and a C{Content-Length} line's value, spelled so,
#: each one a strict parse takes unchanged (IMF-fixdate and the like; digits).
_HOLES = re.compile(rb"\r\n(?:Date: ([A-Za-z0-9][A-Za-z0-9 ,:]{0,62}[A-Za-z0-9])"
                    rb"|Content-Length: ([0-9]{1,18}))(?=\r\n|\Z)")


def headKey(raw: bytes) -> tuple[bytes | tuple, bytes | None, bytes | None]:
    """
    C{(key, date, length)}: head C{raw} cut around its one C{Date} line and
    its one C{Content-Length} line (L{_HOLES}), and their values (None:
    there is no such line, or more than one, and the head is its own
    key).  The key and the values give back C{raw}.
    """
    parts = _HOLES.split(raw)
    n = len(parts)
    if n == 4:
        return (parts[0], parts[3], parts[1] is not None), parts[1], parts[2]
    if n == 7 and (parts[1] is None) != (parts[4] is None):
        dateFirst = parts[1] is not None
        return (parts[0], parts[3], parts[6], dateFirst), parts[1] or parts[4], parts[2] or parts[5]
    return raw, None, None


def planKey(method: bytes, version: bytes, closeAfter: bool, chain) -> tuple:
    """What a plan depends on besides its head and its backend's options (one cache per backend)."""
    return method, version, closeAfter, chain.masker, chain.wantsOutput
