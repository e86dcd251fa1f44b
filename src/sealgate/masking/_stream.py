"""Masking a byte stream (terminal output) whose values may be split across packets."""

import codecs
import re

from sealgate.masking._detectors import MAX_HOLD
from sealgate.masking._scanning import applySpans

# The detectors' boundary checks look one character back; keep a few.
_CONTEXT = 8
_SMOTHER_CLASS = r"A-Za-z0-9+/=\s:,.\-_"
_SMOTHER_END = re.compile(r"[^%s]" % _SMOTHER_CLASS, re.A)
_SMOTHER = str.maketrans({c: "*" for c in
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="})


class StreamMasker:
    """
    Masks one output stream (a terminal, a COPY stream...) fed in pieces.

    C{feed(data)} returns what may be sent now; it holds back only a
    trailing piece that could still become (part of) a value: trailing
    digits and separators (cards, SSNs, phones, up to ~40 bytes), a
    trailing word (the local part of an e-mail, IBAN, AWS key prefix, up
    to ~600 bytes when an '@' was seen), and an unfinished JWT or PEM
    private key (up to L{MAX_HOLD} = 16 KiB characters).  The concatenated
    output of any sequence of feeds and a final L{flush} is exactly
    C{masker.maskBytes(b"".join(feeds))}.

    A candidate longer than C{maxHold} is not waited for: the stream
    masks every base64/word character from there until a character that
    cannot be part of such a value (fails closed).

    The caller should call L{flush} when no output arrived for a short
    while (a few milliseconds; the SSH proxy's timer) and at the end of
    the stream, so an interactive echo is never held longer than that
    timer.  A flush sends what was held as it stands, but remembers it:
    if a value turns out to continue in the next packet, the rest of the
    value is still masked, only the part already sent was not.
    """

    def __init__(self, masker, maxHold: int = MAX_HOLD):
        self._masker = masker
        self.maxHold = maxHold
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._buf = ""
        self._start = 0      # where the next scan starts (a point no value straddles)
        self._emitted = 0    # how much of _buf was already sent
        self._smother = False

    @property
    def pending(self) -> int:
        """How many characters (about bytes) are held back right now."""
        return len(self._buf) - self._emitted + len(self._decoder.getstate()[0])

    def feed(self, data: bytes) -> bytes:
        """Mask C{data}; returns what can be sent now (possibly C{b""})."""
        if not self._masker.detectors:
            return data
        return self._process(self._decoder.decode(data), final=False)

    def flush(self) -> bytes:
        """Everything held back, masked as if the stream ended here."""
        if not self._masker.detectors:
            return b""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return self._process(text, final=True)

    def _process(self, text: str, final: bool) -> bytes:
        out = []
        if self._smother:
            m = _SMOTHER_END.search(text)
            if m is None:
                self._buf = (self._buf + text)[-_CONTEXT:]
                self._start = self._emitted = len(self._buf)
                return text.translate(_SMOTHER).encode("utf-8", "surrogateescape")
            out.append(text[:m.start()].translate(_SMOTHER))
            self._buf = (self._buf + text[:m.start()])[-_CONTEXT:]
            self._start = self._emitted = len(self._buf)
            self._smother = False
            text = text[m.start():]
        buf = self._buf + text
        n = len(buf)
        start, emitted = self._start, self._emitted
        masker = self._masker
        spans = masker.spans(buf, start)
        p = n
        for d in masker.detectors:
            t = d.tail(buf, start)
            if t is not None and t < p:
                p = t
        if p < n and spans:
            spans.sort()
            for s, e, _r in reversed(spans):
                if s < p < e:
                    p = s
        masked = applySpans(buf, spans)
        if n - p > self.maxHold and not final:
            if p > emitted:
                out.append(masked[emitted:p])
            out.append(masked[max(p, emitted):].translate(_SMOTHER))
            self._smother = True
            self._buf = buf[-_CONTEXT:]
            self._start = self._emitted = len(self._buf)
            return "".join(out).encode("utf-8", "surrogateescape")
        upto = n if final else p
        if upto > emitted:
            out.append(masked[emitted:upto])
            emitted = upto
        cut = max(0, p - _CONTEXT)
        self._buf = buf[cut:]
        self._start = p - cut
        self._emitted = emitted - cut
        return "".join(out).encode("utf-8", "surrogateescape")
