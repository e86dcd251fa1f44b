"""Masking the parts of HTTP messages around bodies: header values, reason phrases, WebSocket messages."""

from sealgate.masking._body import notText
from sealgate.masking._content import sniffText

#: Response headers that are framing or protocol state, never data: they are
#: passed as they are (a mask there would break the exchange, and none can
#: carry a detected value).  Every other header value is masked.
STRUCTURAL_HEADERS = frozenset({
    b"content-length", b"transfer-encoding", b"content-encoding", b"connection", b"keep-alive",
    b"upgrade", b"te", b"trailer", b"date", b"age", b"expires", b"last-modified", b"etag",
    b"cache-control", b"pragma", b"vary", b"accept-ranges", b"content-range",
    b"sec-websocket-accept", b"sec-websocket-extensions", b"sec-websocket-protocol",
    b"sec-websocket-version", b"strict-transport-security", b"alt-svc", b"retry-after",
})

#: WebSocket opcodes (RFC 6455 5.2).
WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE = 0, 1, 2, 8


def maskHeaders(masker, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    Response header values masked by the detectors (Set-Cookie, Location,
    Content-Disposition, custom ones...), all but L{STRUCTURAL_HEADERS};
    same lengths, so a masked value stays a valid field value.  Returns
    C{headers} itself when nothing changed.
    """
    return maskHead(masker, b"", headers)[1]


def maskReason(masker, reason: bytes) -> bytes:
    """A status line's reason phrase, masked (it is free text a backend chooses)."""
    masked = masker.maskBytes(reason)
    return reason if masked == reason else masked


#: Between the values scanned as one text: no detected value spans a blank line.
_GAP = b"\n\n"


def maskHead(masker, reason: bytes, headers):
    """
    L{maskReason} and L{maskHeaders} at once, as C{(reason, headers)}: the
    values are scanned as one text (masking keeps lengths, so each is cut
    back out at its own offsets), one detector pass per response instead
    of one per header.  Returns the very objects given when nothing changed.
    """
    picked = [i for i, (name, _) in enumerate(headers) if name.lower() not in STRUCTURAL_HEADERS]
    if not picked and not reason:
        return reason, headers
    values = [reason, *(headers[i][1] for i in picked)]
    joined = _GAP.join(values)
    masked = masker.maskBytes(joined)
    if masked == joined:
        return reason, headers
    out = list(headers)
    pos = 0
    for k, value in enumerate(values):
        new = masked[pos: pos + len(value)]
        pos += len(value) + len(_GAP)
        if k == 0:
            reason = new
        elif new != value:
            i = picked[k - 1]
            out[i] = (headers[i][0], new)
    return reason, out


def maskWebSocket(masker, opcode: int, payload: bytes) -> bytes:
    """
    One whole WebSocket message (fragments joined by the caller): a text
    message masked as text (it stays valid UTF-8), a close frame's reason
    masked (its code kept), a binary message as text when it reads as text,
    else by C{unknown_content}; ping and pong payloads as text.

    @raise MaskingFailed: a binary message that cannot be vetted.
    """
    if opcode not in (WS_CLOSE, WS_BINARY, WS_CONTINUATION):
        # Text, and ping/pong payloads: the client's bytes either way.
        masked = masker.maskBytes(payload)
        return payload if masked == payload else masked
    if opcode == WS_CLOSE:
        if len(payload) <= 2:
            return payload
        tail = payload[2:]
        reason = maskReason(masker, tail)
        return payload if reason is tail else payload[:2] + reason
    if sniffText(payload) is not None:
        masked = masker.maskBytes(payload)
        return payload if masked == payload else masked
    return notText(masker, "a binary WebSocket message", payload)

