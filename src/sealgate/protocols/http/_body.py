"""Response bodies on their way to the client: how masking reads them (JSON, text, compressed)."""



from sealgate.flow import OutputRefused
from sealgate.masking import (
    BodyStream,
    ContentDecoder,
    MaskingFailed,
    canDecode,
    mediaType,
    unknownPolicy,
)


def bodyMode(contentType: bytes | None, contentEncoding: bytes | None, masker=None) -> str:
    """
    How a body is handled when masking applies (masking's one list of
    types, L{sealgate.masking.mediaType}): "json" (buffered, masked whole,
    sent with a Content-Length: JSON and multipart) or "text" (streamed
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
    return "json" if media.kind in ("json", "multipart") else "text"


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


class BodyMasker:
    """
    Masks one response body for one session.  C{feed} returns what may be
    sent now; C{finish} the rest.  Raises L{MaskingFailed} when the body
    cannot be vetted (fail closed); masking itself is the masking
    package's L{sealgate.masking.BodyStream}.
    """

    def __init__(self, session, mode: str, contentEncoding: bytes | None, limit: int, contentType,
                 hooks: bool = True):
        self._chain = session.chain
        # hooks=False: the caller sends through session.emit, which runs them.
        self._hooks = hooks
        self._masker = session.chain.masker
        self._mode = mode
        self._ctype = (contentType or b"").decode("latin-1")
        if self._masker is not None:
            self._body: BodyStream | _Unmasked = BodyStream(self._masker, contentType,
                                                            contentEncoding, limit)
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
        tail = self._body.finish()
        return self._output(tail) if tail or self._mode == "json" else b""

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


def _bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value or b"")
