"""Response bodies on their way to the client: how masking reads them (JSON, text, compressed)."""

import zlib

import brotli

from sealgate.flow import OutputRefused

#: Content types masked as a whole JSON document.
_JSON = ("application/json", "application/problem+json")
#: Content types masked as a text stream by the detectors.
_TEXTISH = ("application/xml", "application/javascript", "application/x-www-form-urlencoded",
            "application/x-ndjson", "application/graphql")


class MaskingFailed(Exception):
    """A body could not be masked; it must not be sent."""


def bodyMode(contentType: bytes | None, contentEncoding: bytes | None) -> str:
    """
    How a body is handled when masking applies: "json" (buffer, mask as a
    document), "text" (stream through the detectors) or "pass" (untouched,
    unbuffered).  A coding we cannot decode on a maskable type is "refuse".
    """
    ctype = (contentType or b"").split(b";")[0].strip().lower().decode("latin-1")
    if ctype in _JSON or ctype.endswith("+json"):
        mode = "json"
    elif ctype.startswith("text/") or ctype in _TEXTISH or ctype.endswith("+xml"):
        mode = "text"
    else:
        return "pass"
    if decoderFor(contentEncoding) is None:
        return "refuse"
    return mode


def decoderFor(contentEncoding: bytes | None):
    """A C{decode(bytes) -> bytes} / C{flush()} object for a content coding, or None."""
    coding = (contentEncoding or b"identity").strip().lower()
    if coding in (b"identity", b""):
        return _Identity()
    if coding in (b"gzip", b"x-gzip"):
        return _Zlib(zlib.decompressobj(16 + zlib.MAX_WBITS))
    if coding == b"deflate":
        return _Deflate()
    if coding == b"br":
        return _Brotli()
    return None


class _Identity:
    def decode(self, data):
        return data

    def flush(self):
        return b""


class _Zlib:
    def __init__(self, obj):
        self._obj = obj

    def decode(self, data):
        try:
            return self._obj.decompress(data)
        except zlib.error as e:
            raise MaskingFailed(f"cannot decode the compressed body: {e}")

    def flush(self):
        return self._obj.flush()


class _Deflate(_Zlib):
    """RFC 9110 deflate is zlib-wrapped, but some servers send it raw."""

    def __init__(self):
        super().__init__(None)
        self._head = b""

    def decode(self, data):
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            zlibWrapped = (self._head[0] & 0x0F) == 8 and int.from_bytes(self._head[:2], "big") % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if zlibWrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return super().decode(data)

    def flush(self):
        return b"" if self._obj is None else self._obj.flush()


class _Brotli:
    def __init__(self):
        self._obj = brotli.Decompressor()

    def decode(self, data):
        try:
            return self._obj.process(data)
        except brotli.error as e:
            raise MaskingFailed(f"cannot decode the br body: {e}")

    def flush(self):
        return b""


class BodyMasker:
    """
    Masks one response body for one session.  C{feed} returns what may be
    sent now; C{finish} the rest.  Raises L{MaskingFailed} when the body
    cannot be vetted (fail closed).
    """

    def __init__(self, session, mode: str, contentEncoding: bytes | None, limit: int, contentType,
                 hooks: bool = True):
        self._chain = session.chain
        # hooks=False: the caller sends through session.emit, which runs them.
        self._hooks = hooks
        self._masker = session.chain.masker
        self._mode = mode
        self._decoder = decoderFor(contentEncoding)
        self._limit = limit
        self._ctype = (contentType or b"").decode("latin-1")
        self._buffer: list[bytes] = []
        self._size = 0
        self._stream = None
        if mode == "text" and self._masker is not None:
            self._stream = self._masker.streamMasker()

    def feed(self, data: bytes) -> bytes:
        data = self._decoder.decode(data)
        if self._mode == "json":
            self._size += len(data)
            if self._size > self._limit:
                raise MaskingFailed(f"JSON body larger than {self._limit} bytes cannot be masked")
            self._buffer.append(data)
            return b""
        return self._text(data)

    def finish(self) -> bytes:
        tail = self._decoder.flush()
        if self._mode == "json":
            self._buffer.append(tail)
            body = b"".join(self._buffer)
            self._buffer = []
            try:
                if self._masker is not None:
                    body = self._masker.maskJsonBytes(body)
                return self._output(body)
            except (OutputRefused, MaskingFailed):
                raise
            except Exception as e:
                raise MaskingFailed(f"the JSON body could not be masked ({type(e).__name__})")
        out = self._text(tail) if tail else b""
        if self._stream is not None:
            out += _bytes(self._stream.flush())
        return out

    def _text(self, data: bytes) -> bytes:
        if not data:
            return b""
        try:
            if self._stream is not None:
                return _bytes(self._stream.feed(data))
            return self._output(data)
        except (OutputRefused, MaskingFailed):
            raise
        except Exception as e:
            raise MaskingFailed(f"the body could not be masked ({type(e).__name__})")

    def _output(self, data: bytes) -> bytes:
        if self._hooks and self._chain.wantsOutput:
            try:
                # masked=True: the masking interceptor skips what its own
                # masker already did; other output hooks still see the body.
                data = self._chain.output(data, content_type=self._ctype,
                                          masked=self._masker is not None)
            except OutputRefused as e:
                raise MaskingFailed(str(e))
        return _bytes(data)


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value or b"")
