"""What the relay does with a backend's response head (framing, body mode, the masked head it sends), worked out once per distinct head."""

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
    The plans of the response heads one backend sent lately, by the head's
    exact bytes and the facts a plan depends on (L{planKey}): a backend
    sends the same head again and again but for its Date (once a second)
    and, between documents, its Content-Length.  Bounded; a head with a
    secret header (its Set-Cookie differs each time anyway, and no secret
    is kept here), a refusal and an interim answer are never kept.
    """

    MAX = 256
    #: Longer heads are planned each time.
    MAX_HEAD = 8192

    def __init__(self):
        self._plans: dict = {}

    def get(self, key) -> ResponsePlan | None:
        return self._plans.get(key)

    def put(self, key, plan: ResponsePlan) -> None:
        if plan.secretHead or plan.mode == "refuse" or len(key[0]) > self.MAX_HEAD:
            return
        plans = self._plans
        if len(plans) >= self.MAX:
            plans.clear()  # what recurs comes back at once
        plans[key] = plan


def planKey(raw: bytes, method: bytes, version: bytes, closeAfter: bool, chain) -> tuple:
    """What a plan for head C{raw} depends on besides its backend's options (one cache per backend)."""
    return raw, method, version, closeAfter, chain.masker, chain.wantsOutput
