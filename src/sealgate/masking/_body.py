"""Masking whole bodies by their media type (JSON, text, multipart, sniffed), at once or streamed."""

from sealgate.masking._content import (
    MAX_DECODED,
    ContentDecoder,
    ContentTooLarge,
    MediaType,
    asciiSafe,
    canDecode,
    decodeContent,
    encodeContent,
    mediaType,
    sniffText,
    textCodec,
)
from sealgate.masking._errors import MaskingFailed

#: What C{unknown_content} may say about a body that is not text: mask its
#: ASCII runs as text anyway, refuse to send it, or pass it untouched.
UNKNOWN_CONTENT = ("mask", "refuse", "pass")

#: How much of an untyped body is looked at to tell text from binary.
SNIFF = 1024

#: Nested multipart bodies deeper than this are refused (a part is a body).
MAX_DEPTH = 4


def unknownPolicy(masker) -> str:
    """A masker's C{unknown_content}: as configured, else refuse where detectors run."""
    policy = getattr(masker, "unknownContent", None)
    if policy is not None:
        return policy
    return "refuse" if masker.detectors else "pass"


def notText(masker, what: str, data: bytes) -> bytes:
    """Data that is not text (C{what} names it in the refusal), by C{unknown_content}."""
    policy = unknownPolicy(masker)
    if policy == "pass":
        return data
    if policy == "mask":
        return masker.maskBytes(data)
    raise MaskingFailed(f"{what} that is not text cannot be vetted "
                        f"(set [masking] unknown_content = \"pass\" or \"mask\" to send it)")


def maskText(masker, data: bytes, bom: bytes, codec: str) -> bytes:
    """Text after C{bom} in C{codec}, masked; same codec, same BOM."""
    if asciiSafe(codec):
        body = data[len(bom):]
        masked = masker.maskBytes(body)
        return data if masked is body or masked == body else bom + masked
    try:
        text = data[len(bom):].decode(codec)
    except UnicodeDecodeError:
        raise MaskingFailed(f"text body is not valid {codec}") from None
    masked = masker.maskText(text)
    return data if masked == text else bom + masked.encode(codec)


def maskJson(masker, data: bytes, charset: str | None) -> bytes:
    """A JSON document in any charset (BOM or label), masked as one document."""
    bom, codec = textCodec(data, charset)
    if codec == "utf-8":
        body = data[len(bom):]
        masked = masker.maskJsonBytes(body)
        return data if masked is body else bom + masked
    try:
        text = data[len(bom):].decode(codec)
    except UnicodeDecodeError:
        raise MaskingFailed(f"JSON body is not valid {codec}") from None
    masked = masker.maskJsonText(text)
    return data if masked is text else bom + masked.encode(codec)


def maskPlain(masker, data: bytes, media: MediaType, depth: int = 0) -> bytes:
    """
    A body with no content coding left, masked by its media type: JSON as
    one document, text types by the detectors in their charset, multipart
    part by part by each part's own type, anything else as text when it
    reads as text, else by C{unknown_content}.

    @raise MaskingFailed: it cannot be vetted (and must not be sent).
    """
    if media.kind == "json":
        return maskJson(masker, data, media.charset)
    if media.kind == "text":
        return maskText(masker, data, *textCodec(data, media.charset))
    if media.kind == "multipart":
        if depth >= MAX_DEPTH:
            raise MaskingFailed(f"multipart bodies nested deeper than {MAX_DEPTH} are refused")
        return maskMultipart(masker, data, media.boundary or "", depth + 1)
    sniffed = sniffText(data)
    if sniffed is None:
        return notText(masker, f"a {media.mime or 'untyped'} body", data)
    return maskText(masker, data, *sniffed)


def maskEncodedBody(masker, body: bytes, content_encoding: str | None, content_type: str | None,
                    reencode: bool = True, limit: int = MAX_DECODED) -> tuple[bytes, str]:
    """
    Mask a whole HTTP body (see L{maskPlain}), undoing and redoing its
    C{Content-Encoding}.

    @return: C{(body, content_encoding)}: the original bytes and coding
        when nothing changed; else the masked body, compressed again with
        the same coding (or, with C{reencode=False}, identity-encoded and
        C{""} as the coding).  Callers set C{Content-Length} from the result.
    @raise MaskingFailed: the body cannot be vetted, so it must not be
        sent; L{ContentTooLarge} when it inflates past C{limit}.
    """
    encoding = content_encoding or ""
    media = mediaType(content_type)
    if not encoding:
        plain = body  # the usual case: nothing to undo
    else:
        if not canDecode(content_encoding) and media.kind in ("none", "other"):
            # Not even sniffable: unknown content, whatever the coding holds.
            if unknownPolicy(masker) == "pass":
                return body, encoding
            raise MaskingFailed(f"cannot vet a body with Content-Encoding {content_encoding!r}")
        plain = decodeContent(body, content_encoding, limit)
    masked = maskPlain(masker, plain, media)
    if masked is plain or masked == plain:
        return body, encoding
    if not reencode:
        return masked, ""
    return encodeContent(masked, content_encoding), encoding


def maskMultipart(masker, body: bytes, boundary: str, depth: int) -> bytes:
    """
    A multipart body (RFC 2046 5.1) with each part masked by its own
    C{Content-Type} (C{text/plain} when it has none), its header values by
    the detectors, the preamble and epilogue as text.

    @raise MaskingFailed: no boundary line, a part not closed, a part
        with a C{Content-Transfer-Encoding} it cannot read.
    """
    delim = b"--" + boundary.encode("latin-1")
    if body.startswith(delim):
        i = 0
    else:
        i = body.find(b"\r\n" + delim)
        if i < 0:
            raise MaskingFailed("multipart body has no boundary line")
        i += 2
    out = [masker.maskBytes(body[:i])]
    while True:
        j = i + len(delim)
        if body.startswith(b"--", j):
            out.append(body[i:j + 2])
            out.append(masker.maskBytes(body[j + 2:]))
            return b"".join(out)
        eol = body.find(b"\r\n", j)
        if eol < 0 or body[j:eol].strip(b" \t"):
            raise MaskingFailed("multipart boundary line is malformed or truncated")
        out.append(body[i:eol + 2])
        start = eol + 2
        end = body.find(b"\r\n" + delim, start)
        if end < 0:
            raise MaskingFailed("multipart body is truncated (a part is not closed)")
        out.append(_maskPart(masker, body[start:end], depth))
        out.append(b"\r\n")
        i = end + 2


def _maskPart(masker, part: bytes, depth: int) -> bytes:
    if not part:
        return part
    if part.startswith(b"\r\n"):
        head, data = b"", part[2:]
    else:
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise MaskingFailed("multipart part has no blank line after its headers")
    ctype = None
    transfer = b""
    lines = []
    for line in head.split(b"\r\n") if head else []:
        name, colon, value = line.partition(b":")
        low = name.strip().lower()
        if low == b"content-type":
            ctype = value.strip().decode("latin-1")
        elif low == b"content-transfer-encoding":
            transfer = value.strip().lower()
        lines.append(name + colon + masker.maskBytes(value) if colon else masker.maskBytes(line))
    if transfer not in (b"", b"7bit", b"8bit", b"binary"):
        raise MaskingFailed(f"a multipart part in Content-Transfer-Encoding {transfer.decode('latin-1')!r} "
                            "cannot be vetted")
    media = mediaType(ctype) if ctype is not None else MediaType("text/plain", "text")
    masked = maskPlain(masker, data, media, depth)
    newHead = b"\r\n".join(lines)
    return (newHead + b"\r\n\r\n" if head else b"\r\n") + masked


class BodyStream:
    """
    Masks one body fed in pieces, as L{maskEncodedBody} would mask it
    whole, holding back as little as it can: C{feed(piece)} returns the
    masked bytes that may go now, C{finish()} the rest (identity-encoded:
    the caller drops C{Content-Encoding} and frames the result itself).

    Text in an ASCII-safe charset streams through a
    L{sealgate.masking.StreamMasker}; JSON, multipart, UTF-16/32 text and
    other charsets are buffered (up to C{limit}) and masked whole; a body
    of no text type is judged on its first L{SNIFF} bytes: text streams,
    anything else goes by C{unknown_content}.  Decoding is bounded by
    C{limit} too (L{ContentTooLarge}: a compressed bomb fails closed).

    @raise MaskingFailed: from the constructor (a coding it cannot undo),
        from C{feed} or C{finish}: what was sent so far is then all the
        client may get (the caller cuts the response).
    """

    def __init__(self, masker, contentType, contentEncoding, limit: int = MAX_DECODED):
        self.masker = masker
        self.media = mediaType(contentType)
        self.limit = limit
        self._decoder = ContentDecoder(contentEncoding, limit)
        self._held: list[bytes] = []
        self._size = 0
        self._stream = None
        # "whole" buffers, "stream" masks piece by piece, "pass" forwards;
        # "sniff" holds the first bytes until the body shows which.
        self.state = "whole" if self.media.kind in ("json", "multipart") else "sniff"

    def feed(self, data: bytes) -> bytes:
        return self._take(self._decoder.decode(data), final=False)

    def finish(self) -> bytes:
        self._decoder.finish()
        out = self._take(b"", final=True)
        if self.state == "whole":
            body = b"".join(self._held)
            self._held = []
            return out + maskPlain(self.masker, body, self.media)
        if self.state == "stream" and self._stream is not None:
            return out + self._stream.flush(atEnd=True)
        return out

    def _take(self, data: bytes, final: bool) -> bytes:
        state = self.state
        if state == "stream":
            return self._stream.feed(data) if self._stream is not None and data else data
        if state == "pass":
            return data
        self._size += len(data)
        if self._size > self.limit:
            raise ContentTooLarge(f"a body masked whole is bounded to {self.limit} bytes; refused")
        if data:
            self._held.append(data)
        if state == "whole":
            return b""
        head = b"".join(self._held)
        if not final and len(head) < (4 if self.media.kind == "text" else SNIFF):
            return b""
        self.state = self._decide(head, final)
        if self.state == "whole":
            return b""
        self._held = []
        if self.state == "stream":
            stream = self._stream = self.masker.streamMasker()
            return stream.feed(head)
        return head

    def _decide(self, head: bytes, final: bool) -> str:
        masker = self.masker
        if self.media.kind == "text":
            _bom, codec = textCodec(head, self.media.charset)
            return "stream" if asciiSafe(codec) else "whole"
        sniffed = sniffText(head, final)
        if sniffed is not None:
            return "stream" if asciiSafe(sniffed[1]) else "whole"
        policy = unknownPolicy(masker)
        if policy == "refuse":
            notText(masker, f"a {self.media.mime or 'untyped'} body", head)
        return "pass" if policy == "pass" else "stream"
