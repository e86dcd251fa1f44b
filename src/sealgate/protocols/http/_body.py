"""Response bodies from the backend to the client: streamed with backpressure, masked when needed."""

import zlib
from typing import Any

import brotli
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

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

    def __init__(self, session, mode: str, contentEncoding: bytes | None, limit: int, contentType):
        self._chain = session.chain
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
        if self._chain.wantsOutput:
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
