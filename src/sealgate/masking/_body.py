"""Masking whole HTTP bodies: content types, charsets and content encodings."""

import gzip
import zlib

from sealgate.masking._engine import MaskingFailed

#: A compressed body is refused rather than inflated past this (a zip bomb
#: must not take the gateway's memory).
MAX_DECODED = 64 * 1024 * 1024

_TEXT_TYPES = ("application/xml", "application/javascript", "application/x-www-form-urlencoded",
               "application/x-ndjson", "application/sql", "application/yaml", "application/csv")


def bodyKind(content_type: str | None) -> tuple[str | None, str | None]:
    """
    What masking does with a body of this C{Content-Type}.

    @return: C{(kind, charset)}, kind being "json", "text", "sniff" (no
        type given: masked as text if it is UTF-8) or None (passed through
        untouched); charset is the C{charset} parameter or None.
    """
    if not content_type or not content_type.strip():
        return "sniff", None
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    charset = None
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip('"').lower() or None
    if mime == "application/json" or mime.endswith("+json") or mime.endswith("/json"):
        return "json", charset
    if mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+xml"):
        return "text", charset
    return None, charset


def _codings(content_encoding: str | None) -> list[str]:
    if not content_encoding:
        return []
    return [c.strip().lower() for c in content_encoding.split(",")
            if c.strip() and c.strip().lower() != "identity"]


def decodeContent(body: bytes, content_encoding: str | None, limit: int = MAX_DECODED) -> bytes:
    """
    Undo C{Content-Encoding} (gzip, x-gzip, deflate, br; several in order).

    @raise MaskingFailed: an unknown coding, a corrupt body, or more than
        C{limit} bytes once decoded.
    """
    for coding in reversed(_codings(content_encoding)):
        try:
            if coding in ("gzip", "x-gzip"):
                body = _inflate(zlib.decompressobj(16 + zlib.MAX_WBITS), body, limit)
            elif coding == "deflate":
                try:
                    body = _inflate(zlib.decompressobj(), body, limit)
                except zlib.error:
                    # Some servers send raw deflate without the zlib wrapper.
                    body = _inflate(zlib.decompressobj(-zlib.MAX_WBITS), body, limit)
            elif coding == "br":
                body = _unbrotli(body, limit)
            else:
                raise MaskingFailed(f"cannot mask a body with Content-Encoding {coding!r}")
        except (zlib.error, OSError, EOFError) as e:
            raise MaskingFailed(f"{coding} body does not decode: {e}") from None
    return body


def _inflate(d, body: bytes, limit: int) -> bytes:
    out = d.decompress(body, limit + 1)
    if len(out) > limit:
        raise MaskingFailed(f"body inflates past {limit} bytes; refused")
    if not d.eof:
        raise MaskingFailed("compressed body is truncated")
    if d.unused_data:
        # A second gzip member or trailing bytes: refuse rather than drop them.
        raise MaskingFailed("compressed body has data after its end")
    return out


def _unbrotli(body: bytes, limit: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    try:
        out = [d.process(body, output_buffer_limit=limit + 1)]
        size = len(out[0])
        while not d.is_finished() and not d.can_accept_more_data() and size <= limit:
            chunk = d.process(b"", output_buffer_limit=limit + 1 - size)
            out.append(chunk)
            size += len(chunk)
    except brotli.error as e:
        raise MaskingFailed(f"br body does not decode: {e}") from None
    if size > limit:
        raise MaskingFailed(f"body inflates past {limit} bytes; refused")
    if not d.is_finished():
        raise MaskingFailed("br body is truncated")
    return b"".join(out)


def encodeContent(body: bytes, content_encoding: str | None) -> bytes:
    """Apply C{Content-Encoding} again (the codings L{decodeContent} accepts)."""
    for coding in _codings(content_encoding):
        if coding in ("gzip", "x-gzip"):
            body = gzip.compress(body, compresslevel=6, mtime=0)
        elif coding == "deflate":
            body = zlib.compress(body, 6)
        elif coding == "br":
            import brotli

            body = brotli.compress(body, quality=5)
        else:
            raise MaskingFailed(f"cannot encode a body with Content-Encoding {coding!r}")
    return body


def maskEncodedBody(masker, body: bytes, content_encoding: str | None, content_type: str | None,
                    reencode: bool = True) -> tuple[bytes, str]:
    """
    Mask a whole HTTP response body.

    JSON (C{application/json}, C{*+json}) is masked as JSON and stays valid;
    C{text/*} and textual application types by detectors; a body without a
    C{Content-Type} is masked as text when it is UTF-8.  Other types come
    back untouched, still encoded.

    @return: C{(body, content_encoding)}: the original bytes and encoding
        when nothing changed; else the masked body, compressed again with
        the same coding (or, with C{reencode=False}, identity-encoded and
        C{""} as the coding).  Callers set C{Content-Length} from the result.
    @raise MaskingFailed: the body cannot be decoded or parsed, so it must
        not be sent.
    """
    encoding = content_encoding or ""
    kind, charset = bodyKind(content_type)
    if kind is None:
        return body, encoding
    plain = decodeContent(body, content_encoding)
    if kind == "sniff":
        try:
            plain.decode("utf-8")
        except UnicodeDecodeError:
            return body, encoding
        kind = "text"
    if kind == "json":
        masked = masker.maskJsonBytes(plain, charset or "utf-8")
    else:
        masked = _maskText(masker, plain, charset or "utf-8")
    if masked is plain or masked == plain:
        return body, encoding
    if not reencode:
        return masked, ""
    return encodeContent(masked, content_encoding), encoding


def _maskText(masker, plain: bytes, charset: str) -> bytes:
    if charset in ("utf-8", "utf8", "us-ascii", "ascii"):
        return masker.maskBytes(plain)
    try:
        text = plain.decode(charset, "surrogateescape")
        masked = masker.maskText(text)
        return plain if masked == text else masked.encode(charset, "surrogateescape")
    except (LookupError, UnicodeError) as e:
        raise MaskingFailed(f"text body in charset {charset!r} cannot be masked: "
                            f"{type(e).__name__}") from None
