"""Response bodies from the backend to the client: streamed with backpressure, masked when needed."""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

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

    def __init__(self, session, mode: str, contentEncoding: bytes | None, limit: int, contentType):
        self._chain = session.chain
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

    def finish(self) -> bytes:
        tail = self._body.finish()
        return self._output(tail) if tail or self._mode == "json" else b""

    def _output(self, data: bytes) -> bytes:
        if self._chain.wantsOutput:
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


class StorePacer:
    """
    Keeps a stream from outrunning the recording store: above C{high}
    queued items the stream stops reading until the store's writer is back
    under C{low}.  Memory then stays bounded however fast both ends are.
    """

    # Items are reads of up to 64 KiB: at most ~64 MiB wait for the writer,
    # enough to keep it busy through a batch's fdatasync.
    HIGH = 1024
    LOW = 256
    POLL = 0.005

    def __init__(self, store, reactor):
        self._backlog = getattr(store, "backlog", None)
        self._reactor = reactor

    def over(self) -> bool:
        return self._backlog is not None and self._backlog() > self.HIGH

    def drained(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()

        def check():
            if self._backlog() <= self.LOW:
                d.callback(None)
            else:
                self._reactor.callLater(self.POLL, check)

        self._reactor.callLater(self.POLL, check)
        return d


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """
    Receives a backend response body (C{response.deliverBody}) and writes
    it to the client's request, pausing the backend while the client is
    slow.  With a L{BodyMasker} the output is masked; a JSON body is sent
    in one write with its Content-Length set by the caller's C{onJson}.

    @ivar done: called with None when the body ended cleanly, else with a
        reason string (the client connection is then cut: a truncated
        body is never presented as complete).
    """

    _log = Logger()

    # deliverBody gives this protocol the response body's transport, an
    # IPushProducer (pause/resume/stop) rather than an ITransport.
    transport: Any

    def __init__(self, request, masker: BodyMasker | None, done, onJson=None, pacer=None):
        self._request = request
        self._masker = masker
        self._done = done
        self._onJson = onJson
        self._pacer = pacer
        self._clientGone = False
        self._clientPaused = False
        self._storePaused = False

    def connectionMade(self):
        self._request.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self._clientGone:
            return
        if self._masker is not None:
            try:
                data = self._masker.feed(data)
            except MaskingFailed as e:
                self._fail(str(e))
                return
            if not data:
                return
        self._request.write(data)
        if self._pacer is not None and not self._storePaused and self._pacer.over():
            self._storePaused = True
            self.transport.pauseProducing()
            self._pacer.drained().addCallback(self._storeDrained)

    def _storeDrained(self, _):
        self._storePaused = False
        if not self._clientPaused and not self._clientGone and self.transport is not None:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._clientGone:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._request.unregisterProducer()
            self._done(f"backend body failed: {reason.getErrorMessage()}", False)
            return
        tail = b""
        if self._masker is not None:
            try:
                tail = self._masker.finish()
            except MaskingFailed as e:
                self._request.unregisterProducer()
                self._done(str(e), True)
                return
            if self._onJson is not None:
                self._onJson(tail)
                tail = b""
        if tail:
            self._request.write(tail)
        self._request.unregisterProducer()
        self._done(None, False)

    def _fail(self, reason: str) -> None:
        self._clientGone = True
        self._request.unregisterProducer()
        if self.transport is not None:
            self.transport.stopProducing()
        self._done(reason, True)

    # IPushProducer, driven by the client's transport.
    def pauseProducing(self):
        self._clientPaused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self):
        self._clientPaused = False
        if self.transport is not None and not self._storePaused:
            self.transport.resumeProducing()

    def stopProducing(self):
        self._clientGone = True
        if self.transport is not None:
            self.transport.stopProducing()
