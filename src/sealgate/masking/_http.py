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
    out = []
    changed = False
    for name, value in headers:
        if name.lower() not in STRUCTURAL_HEADERS:
            masked = masker.maskBytes(value)
            if masked != value:
                changed = True
                value = masked
        out.append((name, value))
    return out if changed else headers


def maskReason(masker, reason: bytes) -> bytes:
    """A status line's reason phrase, masked (it is free text a backend chooses)."""
    masked = masker.maskBytes(reason)
    return reason if masked == reason else masked


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

