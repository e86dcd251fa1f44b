"""Content: the one list of text-like media types, charsets and BOMs, and the bounded streaming decoder."""

import codecs
import gzip
import zlib

import attrs
import brotli

from sealgate.masking._errors import MaskingFailed

#: A compressed body is refused rather than inflated past this (a zip bomb
#: must not take the gateway's memory).
MAX_DECODED = 64 * 1024 * 1024

#: Media types masked as one JSON document (and any C{+json} suffix).
JSON_TYPES = frozenset({"application/json", "text/json", "application/problem+json"})

#: Media types masked as text by the detectors, besides C{text/*} and the
#: C{+xml}, C{+yaml} and C{+json-seq} suffixes.  The one list masking, HTTP
#: and HAR share (docs/masking.md).
TEXT_TYPES = frozenset({
    "application/xml", "application/javascript", "application/ecmascript",
    "application/x-javascript", "application/x-www-form-urlencoded", "application/graphql",
    "application/yaml", "application/x-yaml", "application/csv", "application/sql",
    "application/x-sql", "application/toml", "application/x-sh", "application/x-httpd-php",
    # Line-delimited and record-separated JSON: one document per line, so
    # masked by the detectors line by line rather than parsed as one.
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
    "application/jsonlines", "application/json-seq", "application/geo+json-seq",
})
_TEXT_SUFFIXES = ("+xml", "+yaml", "+json-seq")

#: Content codings the decoder undoes (RFC 9110 8.4.1); zstd is not among
#: them (no well-kept binding in the environment), so a zstd body on a
#: masked session is refused.
CODINGS = ("gzip", "x-gzip", "deflate", "br")

# (BOM, codec for what follows it): the longest first, since the UTF-32 LE
# BOM starts with UTF-16 LE's.  Endian-explicit codecs, so that re-encoding
# keeps the body's byte order (the BOM itself is kept as it was).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
# Without a BOM the "utf-16" and "utf-32" labels mean little-endian (as
# browsers read them), whatever the machine's own order.
_NO_BOM = {"utf-16": "utf-16-le", "utf-32": "utf-32-le"}
# Charsets in which every byte below 0x80 is that ASCII character and never
# part of a longer one, so masking ASCII values byte by byte is exact.
_ASCII_SAFE = ("utf-8", "ascii", "latin-1", "iso8859-", "cp125", "koi8-", "mac-", "cp437", "cp850")


class ContentTooLarge(MaskingFailed):
    """A body inflates (or accumulates) past the bound: a compressed bomb, refused."""


@attrs.frozen
class MediaType:
    """
    What a C{Content-Type} says for masking.

    @ivar mime: the type/subtype in lower case, C{""} when none was given.
    @ivar kind: "json", "text", "multipart", "none" (no type: sniffed) or
        "other" (not a text type: sniffed, then C{unknown_content}).
    @ivar charset: the C{charset} parameter, lower case, or None.
    @ivar boundary: a multipart type's C{boundary} parameter, or None.
    """

    mime: str
    kind: str
    charset: str | None = None
    boundary: str | None = None

    @property
    def textual(self) -> bool:
        """Whether the type alone says the body is text (HAR shows it as text)."""
        return self.kind in ("json", "text")


#: Parsed values: a service sends the same few Content-Types, and each
#: response asks up to three times (its mode, its masker, HAR).
_mediaTypes: dict = {}


def mediaType(contentType: str | bytes | None) -> MediaType:
    """Parse a C{Content-Type} header value (RFC 9110 8.3) into a L{MediaType}."""
    if type(contentType) not in (bytes, str) or len(contentType) > 256:  # type: ignore[arg-type]
        return _parseMediaType(contentType)
    found = _mediaTypes.get(contentType)
    if found is None:
        found = _parseMediaType(contentType)
        if len(_mediaTypes) >= 1024:
            _mediaTypes.clear()
        _mediaTypes[contentType] = found
    return found


def _parseMediaType(contentType: str | bytes | None) -> MediaType:
    if isinstance(contentType, bytes):
        contentType = contentType.decode("latin-1")
    if not contentType or not contentType.strip():
        return MediaType("", "none")
    mime, _, rest = contentType.partition(";")
    mime = mime.strip().lower()
    params: dict[str, str] = {}
    for p in rest.split(";"):
        k, _, v = p.partition("=")
        if k.strip():
            params[k.strip().lower()] = v.strip().strip('"')
    charset = params.get("charset", "").lower() or None
    if mime in JSON_TYPES or mime.endswith("+json"):
        kind = "json"
    elif mime.startswith("text/") or mime in TEXT_TYPES or mime.endswith(_TEXT_SUFFIXES):
        kind = "text"
    elif mime.startswith("multipart/") and params.get("boundary"):
        return MediaType(mime, "multipart", charset, params["boundary"])
    else:
        kind = "other"
    return MediaType(mime, kind, charset)


def isTextType(contentType: str | bytes | None) -> bool:
    """Whether a body of this type is text by its type alone (JSON included)."""
    return mediaType(contentType).textual


# -- charsets -------------------------------------------------------------------


#: The first bytes of the BOMs in L{_BOMS}: anything else starts no BOM.
_BOM_STARTS = frozenset(bom[0] for bom, _codec in _BOMS)


def splitBom(data: bytes) -> tuple[bytes, str | None]:
    """C{(bom, codec)} of a body starting with a Unicode BOM, else C{(b"", None)}."""
    if not data or data[0] not in _BOM_STARTS:
        return b"", None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return bom, codec
    return b"", None


def textCodec(data: bytes, charset: str | None) -> tuple[bytes, str]:
    """
    C{(bom, codec)} to read a text body with: its BOM's if it has one (a
    BOM overrides the label, as browsers do), else its C{charset}, else
    UTF-8.  The codec reads what follows the BOM; re-encoding with it and
    putting the BOM back gives the body's own bytes.

    @raise MaskingFailed: an unknown charset.
    """
    bom, codec = splitBom(data)
    if codec is not None:
        return bom, codec
    found = _charsets.get(charset)
    if found is not None:
        return b"", found
    name = (charset or "utf-8").strip().lower()
    try:
        info = codecs.lookup(_NO_BOM.get(name, name))
    except LookupError:
        raise MaskingFailed(f"text in the unknown charset {name!r} cannot be vetted") from None
    if charset is None or (type(charset) is str and len(charset) <= 64):
        if len(_charsets) >= 256:
            _charsets.clear()
        _charsets[charset] = info.name
    return b"", info.name


#: Charset labels looked up before (a service sends the same few), by the
#: label as given; an unknown one is never kept (it is refused each time).
_charsets: dict = {}


def asciiSafe(codec: str) -> bool:
    """Whether values in this codec can be masked on the raw bytes (see L{_ASCII_SAFE})."""
    return codec.startswith(_ASCII_SAFE)


def sniffText(data: bytes, final: bool = True) -> tuple[bytes, str] | None:
    """
    C{(bom, codec)} for a body of no declared text type that reads as
    text, or None when it is not text: a BOM, else strict UTF-8 with no NUL
    (binary formats are full of NULs; text never has one).  With
    C{final=False}, C{data} is the start of a body and may end inside a
    character.
    """
    bom, codec = splitBom(data)
    if codec is None:
        if b"\x00" in data:
            return None
        codec = "utf-8"
    try:
        codecs.getincrementaldecoder(codec)().decode(data[len(bom):], final)
    except UnicodeDecodeError:
        return None
    return bom, codec


# -- content codings ------------------------------------------------------------


def codings(contentEncoding: str | bytes | None) -> list[str]:
    """The codings of a C{Content-Encoding} value in the order they were applied."""
    if isinstance(contentEncoding, bytes):
        contentEncoding = contentEncoding.decode("latin-1")
    if not contentEncoding:
        return []
    return [c.strip().lower() for c in contentEncoding.split(",")
            if c.strip() and c.strip().lower() != "identity"]


def canDecode(contentEncoding: str | bytes | None) -> bool:
    """Whether L{ContentDecoder} undoes every coding of this C{Content-Encoding}."""
    return all(c in CODINGS for c in codings(contentEncoding))


class _Inflate:
    """One zlib stream (gzip, zlib or raw deflate), never producing more than asked."""

    def __init__(self, coding: str):
        self.coding = coding
        self._obj: "zlib._Decompress | None" = None
        self._head = b""
        if coding in ("gzip", "x-gzip"):
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> bytes:
        if self._obj is None:
            # RFC 9110 deflate is zlib-wrapped, but some servers send it raw:
            # the first two bytes tell (a zlib header is a multiple of 31).
            self._head += data
            if len(self._head) < 2:
                return b""
            wrapped = (self._head[0] & 0x0F) == 8 and int.from_bytes(self._head[:2], "big") % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        obj = self._obj
        if obj.eof:
            if data:
                raise MaskingFailed(f"{self.coding} body has data after its end")
            return b""
        try:
            out = obj.decompress(obj.unconsumed_tail + data, room + 1)
        except zlib.error as e:
            raise MaskingFailed(f"{self.coding} body does not decode: {e}") from None
        if obj.eof and obj.unused_data:
            # A second gzip member or trailing bytes: refuse rather than drop them.
            raise MaskingFailed(f"{self.coding} body has data after its end")
        return out

    def finish(self) -> None:
        if self._obj is None:
            if self._head:
                raise MaskingFailed(f"{self.coding} body is truncated")
            return
        if not self._obj.eof:
            raise MaskingFailed(f"{self.coding} body is truncated")


class _Unbrotli:
    coding = "br"

    def __init__(self):
        self._obj = brotli.Decompressor()
        self._size = 0

    def feed(self, data: bytes, room: int) -> bytes:
        obj = self._obj
        try:
            out = [obj.process(data, output_buffer_limit=room + 1)]
            got = len(out[0])
            while got <= room and not obj.is_finished() and not obj.can_accept_more_data():
                chunk = obj.process(b"", output_buffer_limit=room + 1 - got)
                out.append(chunk)
                got += len(chunk)
        except brotli.error as e:
            raise MaskingFailed(f"br body does not decode: {e}") from None
        return b"".join(out)

    def finish(self) -> None:
        if not self._obj.is_finished():
            raise MaskingFailed("br body is truncated")


class ContentDecoder:
    """
    Undoes a C{Content-Encoding} (gzip, x-gzip, deflate, br, stacked in any
    order) on a body fed in pieces, never holding or producing more than
    C{limit} decoded bytes: a compressed bomb fails closed with
    L{ContentTooLarge} however it is chunked, without being inflated.

    C{decode(piece)} returns the decoded bytes so far; C{finish()} checks
    the body ended (a truncated or trailing-garbage stream is refused).
    """

    def __init__(self, contentEncoding: str | bytes | None, limit: int = MAX_DECODED):
        self.limit = limit
        self.produced = 0
        stack: list[_Inflate | _Unbrotli] = []
        for coding in reversed(codings(contentEncoding)):
            if coding in ("gzip", "x-gzip", "deflate"):
                stack.append(_Inflate(coding))
            elif coding == "br":
                stack.append(_Unbrotli())
            else:
                raise MaskingFailed(f"cannot vet a body with Content-Encoding {coding!r}")
        self._stack = stack

    def decode(self, data: bytes) -> bytes:
        for layer in self._stack:
            if not data:
                return b""
            data = layer.feed(data, self.limit - self.produced)
            if len(data) > self.limit - self.produced:
                raise ContentTooLarge(f"body inflates past {self.limit} bytes; refused")
        self.produced += len(data)
        return data

    def finish(self) -> None:
        for layer in self._stack:
            layer.finish()


def decodeContent(body: bytes, contentEncoding: str | bytes | None, limit: int = MAX_DECODED) -> bytes:
    """
    A whole body with its C{Content-Encoding} undone.

    @raise MaskingFailed: an unknown coding, a corrupt or truncated body;
        L{ContentTooLarge} past C{limit} bytes once decoded.
    """
    decoder = ContentDecoder(contentEncoding, limit)
    out = decoder.decode(body)
    decoder.finish()
    return out


def encodeContent(body: bytes, contentEncoding: str | bytes | None) -> bytes:
    """Apply C{Content-Encoding} again (the codings L{ContentDecoder} undoes)."""
    for coding in codings(contentEncoding):
        if coding in ("gzip", "x-gzip"):
            body = gzip.compress(body, compresslevel=6, mtime=0)
        elif coding == "deflate":
            body = zlib.compress(body, 6)
        elif coding == "br":
            body = brotli.compress(body, quality=5)
        else:
            raise MaskingFailed(f"cannot encode a body with Content-Encoding {coding!r}")
    return body
