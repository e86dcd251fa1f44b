"""
The parts of a backend exchange that put a masked response together: a
backend's 1xx on to the client masked, a body masked whole sent with its
framing, the last chunk with masked trailers, and the switch to pass-through
when masking lets a body go as it came.  A mixin of
L{sealgate.protocols.http._backend.Exchange}, kept apart so each module
stays one concern.
"""

from typing import Any

from sealgate.masking import maskHead
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._body import BodyMasker, MaskingFailed, lastChunk


class MaskedResponse:
    """Masked-response steps of an exchange; the attributes are the exchange's."""

    client: Any
    session: Any
    backend: Any
    pairs: list
    masker: BodyMasker | None
    framing: _framing.BodyFraming | None
    passLength: bytes | None
    chunkOut: bool
    closeAfter: bool
    lengthHead: bytes
    pendingHead: bytes
    recordedHead: bytes

    def _setHead(self, pairs) -> None:
        raise NotImplementedError

    def _emit(self, data: bytes) -> bool:
        raise NotImplementedError

    def _maskFailed(self, why: str) -> None:
        raise NotImplementedError

    def _refused(self) -> None:
        raise NotImplementedError

    def _passThrough(self) -> None:
        """
        Nothing of the body is out yet and the masker passes it untouched
        (not text, C{unknown_content = "pass"}): it goes out with its own
        Content-Length, unchunked, as the backend framed it, and its
        further reads as they come (the download path's copies and
        per-read masking work are the cost this saves).
        """
        assert self.passLength is not None
        self.pairs = [p for p in self.pairs if p != (b"Transfer-Encoding", b"chunked")]
        self.pairs.append((b"Content-Length", self.passLength))
        self.chunkOut = False
        self.masker = None
        self._setHead(self.pairs)


    def _maskedWhole(self, tail: bytes) -> None:
        if self.client.gone or self.client.exchange is not self:
            return
        if self.chunkOut:
            self._setHead(self.pairs)
            sent = self._emit((_wire.chunk(tail) if tail else b"") + self._lastChunk())
        else:
            if self.lengthHead:
                self.pendingHead = self.recordedHead = self.lengthHead + b"Content-Length: %d\r\n\r\n" % len(tail)
            else:
                self._setHead([*self.pairs, (b"Content-Length", b"%d" % len(tail))])
            sent = self._emit(tail)
        if sent:
            self.client.exchangeDone(self.closeAfter)


    def _maskedWholeFailed(self, failure) -> None:
        failure.trap(MaskingFailed)
        if not self.client.gone and self.client.exchange is self:
            self._maskFailed(failure.getErrorMessage())


    def _lastChunk(self) -> bytes:
        framing = self.framing
        return lastChunk(self.session.chain.masker, framing.trailers if framing is not None else ())


    def _interim(self, parsed) -> bool:
        """A backend's 1xx (not 100, not 101) on to the client, masked; False when refused."""
        head, low, _names = parsed
        pairs = list(head.headers)
        reason = head.reason
        masker = self.session.chain.masker
        if masker is not None:
            reason, pairs = maskHead(masker, reason, pairs)
        out = _wire.serializeHead(b"HTTP/1.1 %d " % head.status + reason, pairs)
        secret = self.backend.options.secret_headers
        recorded = out if secret.isdisjoint(low) else _wire.redactHead(out, secret)
        if self.client.send(out, recorded=recorded, part="head"):
            return True
        self._refused()
        return False

