"""Response bodies on their way to the client: how masking reads them (JSON, text, compressed)."""



from twisted.internet.defer import Deferred, fail, succeed

from sealgate.flow import OutputRefused
from sealgate.masking import (
    BodyStream,
    ContentDecoder,
    ContentTooLarge,
    MaskingFailed,
    canDecode,
    maskHeaders,
    mediaType,
    textCodec,
    unknownPolicy,
)
from sealgate.protocols.http._wire import LAST_CHUNK


def bodyMode(contentType: bytes | None, contentEncoding: bytes | None, masker=None) -> str:
    """
    How a body is handled when masking applies (masking's one list of
    types, L{sealgate.masking.mediaType}): "json" (buffered, masked whole,
    off the reactor thread when big: JSON, multipart, text labelled UTF-16
    or UTF-32) or "text" (streamed
    through L{sealgate.masking.BodyStream}: text types, and any other type,
    sniffed and then treated by C{unknown_content}).  A coding the decoder
    cannot undo is "refuse", or "pass" for a type that is not text when
    C{unknown_content} is "pass".
    """
    media = mediaType(contentType)
    if not canDecode(contentEncoding):
        if media.kind in ("none", "other") and masker is not None and unknownPolicy(masker) == "pass":
            return "pass"
        return "refuse"
    if media.kind in ("json", "multipart"):
        return "json"
    if media.kind == "text" and media.charset and _wide(media.charset):
        # UTF-16/32 text is masked whole anyway: buffered here, so that a
        # big one is masked off the reactor thread.
        return "json"
    return "text"


def _wide(charset: str) -> bool:
    try:
        return textCodec(b"", charset)[1].startswith(("utf-16", "utf-32"))
    except MaskingFailed:
        return False   # refused by the stream, in its own words


class _Unmasked:
    """Output hooks without a masker: the body decoded, JSON buffered whole."""

    def __init__(self, contentEncoding, limit: int, whole: bool):
        self._decoder = ContentDecoder(contentEncoding, limit)
        self._held: list[bytes] | None = [] if whole else None

    def feed(self, data: bytes) -> bytes:
        data = self._decoder.decode(data)
        if self._held is None:
            return data
        self._held.append(data)
        return b""

    def finish(self) -> bytes:
        self._decoder.finish()
        return b"".join(self._held or ())


#: Bodies masked whole up to this size are masked at once, on the reactor
#: thread: a thread hop costs more than masking them.
INLINE = 64 << 10


class _Whole:
    """
    A body masked whole (JSON, multipart) with a masker: decoded as it
    comes, bounded, then masked in one go by L{BodyMasker.finishAsync}
    (off the reactor thread when it is big).
    """

    def __init__(self, contentEncoding, limit: int):
        # No coding (the usual case): nothing to undo, the bytes are the body.
        self._decoder = ContentDecoder(contentEncoding, limit) if contentEncoding else None
        self._limit = limit
        self._held: list[bytes] = []
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        if self._decoder is not None:
            data = self._decoder.decode(data)
        self.size += len(data)
        if self.size > self._limit:
            raise ContentTooLarge(f"a body masked whole is bounded to {self._limit} bytes; refused")
        if data:
            self._held.append(data)
        return b""

    def take(self) -> bytes:
        """The whole decoded body (checked complete)."""
        if self._decoder is not None:
            self._decoder.finish()
        body = b"".join(self._held)
        self._held = []
        return body


class LastBody:
    """
    The last body a client connection had masked whole, as it came and as
    masked: a kept-alive client polling one resource (wrk GET /json, a
    dashboard) mostly gets the same document again, and the same bytes
    under the same masker and type mask to the same bytes, so it is masked
    once.  Anything else is masked as it comes; a body that fails masking
    is never kept.  One body per connection, for the connection's life.
    """

    #: What one connection may hold here, the body and its masked twin
    #: together: bigger ones are masked each time.
    MAX = 32 << 10

    def __init__(self):
        self._key: tuple = ()
        self._body = b""
        self._masked = b""

    def mask(self, masker, body: bytes, contentType: str) -> bytes:
        """C{masker.maskEncodedBody(body, None, contentType, False)[0]}, the last answer when it is the same question."""
        key = self._key
        if key and key[0] is masker and key[1] == contentType and body == self._body:
            return self._masked
        masked = masker.maskEncodedBody(body, None, contentType, False)[0]
        if len(body) + len(masked) <= self.MAX:
            self._key, self._body, self._masked = (masker, contentType), body, masked
        elif self._key:
            self._key, self._body, self._masked = (), b"", b""  # nothing older is kept either
        return masked


class BodyMasker:
    """
    Masks one response body for one session.  C{feed} returns what may be
    sent now; C{finish} the rest.  Raises L{MaskingFailed} when the body
    cannot be vetted (fail closed); masking itself is the masking
    package's L{sealgate.masking.BodyStream}.
    """

    def __init__(self, session, mode: str, contentEncoding: bytes | None, limit: int, contentType,
                 hooks: bool = True, memo: LastBody | None = None):
        self._chain = session.chain
        #: Where a body masked whole on the reactor thread is masked (the
        #: client connection's L{LastBody}), if anywhere.
        self._memo = memo
        # hooks=False: the caller sends through session.emit, which runs them.
        self._hooks = hooks
        self._masker = session.chain.masker
        self._mode = mode
        self._ctype = (contentType or b"").decode("latin-1")
        self._body: BodyStream | _Unmasked | _Whole
        if self._masker is not None and mode == "json":
            self._body = _Whole(contentEncoding, limit)
        elif self._masker is not None:
            self._body = BodyStream(self._masker, contentType, contentEncoding, limit)
        else:
            self._body = _Unmasked(contentEncoding, limit, whole=mode == "json")

    def feed(self, data: bytes) -> bytes:
        out = self._body.feed(data)
        return self._output(out) if out else b""

    @property
    def passing(self) -> bool:
        """The masker sniffed a body that is not text and C{unknown_content} passes it: the rest goes as it is."""
        return getattr(self._body, "state", None) == "pass"

    def finish(self) -> bytes:
        body = self._body
        if isinstance(body, _Whole):
            assert self._masker is not None
            if self._memo is not None:
                tail = self._memo.mask(self._masker, body.take(), self._ctype)
            else:
                tail = self._masker.maskEncodedBody(body.take(), None, self._ctype, False)[0]
        else:
            tail = body.finish()
        return self._output(tail) if tail or self._mode == "json" else b""

    @property
    def inline(self) -> bool:
        """Whether L{finish} is cheap enough for the reactor thread (else use L{finishAsync})."""
        body = self._body
        return not isinstance(body, _Whole) or body.size <= INLINE

    def finishAsync(self, reactor) -> Deferred:
        """
        L{finish}, with a body masked whole masked by
        L{sealgate.masking.Masker.maskBodyAsync}: a big one in a thread, so
        one large response never stalls the other sessions.  The Deferred
        fails with L{MaskingFailed} where L{finish} would raise.
        """
        body = self._body
        if not isinstance(body, _Whole):
            try:
                return succeed(self.finish())
            except Exception:
                return fail()
        assert self._masker is not None
        try:
            d = self._masker.maskBodyAsync(body.take(), None, self._ctype, False, reactor=reactor,
                                           inline=INLINE)
        except Exception:
            return fail()
        d.addCallback(lambda result: self._output(result[0]))
        return d

    def _output(self, data: bytes) -> bytes:
        if self._hooks and self._chain.wantsOutput:
            try:
                # masked=True: the masking interceptor skips what its own
                # masker already did; other output hooks still see the body.
                data = self._chain.output(data, content_type=self._ctype,
                                          masked=self._masker is not None)
            except OutputRefused as e:
                raise MaskingFailed(str(e)) from None
        return _bytes(data)


def lastChunk(masker, trailers) -> bytes:
    """The last chunk of a chunked body, with its trailer fields masked like header values."""
    if not trailers:
        return LAST_CHUNK
    pairs = []
    for line in trailers:
        name, sep, value = line.partition(b":")
        if sep and name and name == name.strip():
            pairs.append((name, value.strip()))
    if masker is not None:
        pairs = maskHeaders(masker, pairs)
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in pairs) + b"\r\n"


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value or b"")
