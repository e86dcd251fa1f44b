"""Masking a byte stream (terminal output) whose values may be split across packets and escape sequences."""

import bisect
import codecs
import itertools
import re

from sealgate.masking._detectors import MAX_HOLD
from sealgate.masking._scanning import applySpans

# The detectors' boundary checks look one character back; keep a few.
_CONTEXT = 8
_SMOTHER_CLASS = r"A-Za-z0-9+/=\s:,.\-_"
_SMOTHER_END = re.compile(r"[^%s]" % _SMOTHER_CLASS, re.A)
_SMOTHER = str.maketrans({c: "*" for c in
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="})

#: Terminal escape sequences (ECMA-48): CSI (colours, cursor), OSC (titles,
#: hyperlinks) ended by BEL or ST, DCS/SOS/PM/APC strings, two-character
#: escapes.  The terminal renders none of them as text.
ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)"
                    # The two-character escapes end in anything but what opens
                    # a CSI, OSC or string ([, ], P, X, ^, _).
                    r"|[PX^_][^\x1b]*\x1b\\|[ -/]+[0-~]|[0-OQ-WYZ\\`-~])")
#: The start of an escape sequence the buffer ends inside of.
_PARTIAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)\Z")
#: An escape sequence longer than this is not waited for (it is text then).
_MAX_ESCAPE = 4096

# What a value's masked form shows, for the conservative flush: at most the
# first six digits of a card-like run (what PCI DSS lets a display show).
_DIGIT_RUN = re.compile(r"((?:\d[ -]?){6})([\d -]*)")
_JWT_RUN = re.compile(r"()(eyJ[A-Za-z0-9_.-]*)")
_AWS_RUN = re.compile(r"(A[A-Z0-9]{3})([A-Z0-9]+)")
_IBAN_RUN = re.compile(r"([A-Z]{2})(\d\d[A-Z0-9 ]*)")
_PEM_RUN = re.compile(r"(-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----)([A-Za-z0-9+/=\s:,.-]*)")
_DIGIT_STAR = str.maketrans("0123456789", "*" * 10)
_SSN_START = re.compile(r"(?<![\d-])\d{3}-\d{0,2}(?:-\d{0,4})?(?![\d])")
_LOCAL_PART = re.compile(r"[A-Za-z0-9._%+-]+(?=@)")
_STAR_RUN = str.maketrans({c: "*" for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "abcdefghijklmnopqrstuvwxyz_+/=-%"})


class StreamMasker:
    """
    Masks one output stream (a terminal, a COPY stream...) fed in pieces.

    C{feed(data)} returns what may be sent now; it holds back only a
    trailing piece that could still become (part of) a value: trailing
    digits and separators (cards, SSNs, phones, up to ~40 bytes), a
    trailing word (the local part of an e-mail, IBAN, AWS key prefix, up
    to ~600 bytes when an '@' was seen), an unfinished JWT or PEM private
    key (up to L{MAX_HOLD} = 16 KiB characters), and an unfinished escape
    sequence.  The concatenated output of any sequence of feeds and a final
    C{flush(atEnd=True)} is exactly C{masker.maskBytes} of the text as a
    terminal renders it, with every escape sequence kept byte for byte.

    Values are found in the text as rendered: escape sequences inside a
    value (C{grep --color}) do not split it, and masks only ever land on
    rendered characters, never inside an escape sequence.

    A candidate longer than C{maxHold} is not waited for: the stream
    masks every base64/word character from there until a character that
    cannot be part of such a value (fails closed).

    The caller calls L{flush} when no output arrived for a short while
    (the SSH proxy's C{mask_holdback} timer).  Such a flush sends what was
    held, but never more of a possible value than its masked form would
    show: a digit run beyond its first six digits, and a token after its
    prefix, go out as C{*}; the rest of a value that goes on in the next
    packet is still masked.
    """

    def __init__(self, masker, maxHold: int = MAX_HOLD):
        self._masker = masker
        self.maxHold = maxHold
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._buf = ""
        self._start = 0      # where the next scan starts (a point no value straddles)
        self._emitted = 0    # how much of _buf was already sent
        self._smother = False
        # An SSN's masked form shows none of its digits: with the detector
        # on, a held run shaped like one's start is flushed wholly masked.
        self._ssn = any(d.name == "us_ssn" for d in masker.detectors)

    @property
    def pending(self) -> int:
        """How many characters (about bytes) are held back right now."""
        return len(self._buf) - self._emitted + len(self._decoder.getstate()[0])

    def feed(self, data: bytes) -> bytes:
        """Mask C{data}; returns what can be sent now (possibly C{b""})."""
        if not self._masker.detectors:
            return data
        return self._process(self._decoder.decode(data), final=False)

    def flush(self, atEnd: bool = False) -> bytes:
        """
        Everything held back.  With C{atEnd} (the stream is over) it is
        masked exactly as if the stream ended here; otherwise (a quiet
        timer) an unfinished candidate is masked conservatively too.
        """
        if not self._masker.detectors:
            return b""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return self._process(text, final=True, conservative=not atEnd)

    def _process(self, text: str, final: bool, conservative: bool = False) -> bytes:
        out = []
        if self._smother:
            end = _smotherEnd(text)
            if end < 0:
                self._buf = (self._buf + text)[-_CONTEXT:]
                self._start = self._emitted = len(self._buf)
                return _outsideEscapes(text).encode("utf-8", "surrogateescape")
            out.append(_outsideEscapes(text[:end]))
            self._buf = (self._buf + text[:end])[-_CONTEXT:]
            self._start = self._emitted = len(self._buf)
            self._smother = False
            text = text[end:]
        buf = self._buf + text
        n = len(buf)
        start, emitted = self._start, self._emitted
        if "\x1b" in buf:
            masked, p, cut = _Rendered(buf).mask(self._masker, start, final)
        else:
            masked, p = _mask(self._masker, buf, start)
            cut = max(0, p - _CONTEXT)
        if n - p > self.maxHold and not final:
            if p > emitted:
                out.append(masked[emitted:p])
            out.append(_outsideEscapes(masked[max(p, emitted):]))
            self._smother = True
            self._buf = buf[-_CONTEXT:]
            self._start = self._emitted = len(self._buf)
            return "".join(out).encode("utf-8", "surrogateescape")
        upto = n if final else p
        if upto > emitted:
            if conservative and p < n:
                # The whole unfinished candidate decides what may show, also
                # its part an earlier flush sent (a value typed key by key,
                # each echo flushed): six digits in all, not six per flush.
                out.append(masked[emitted:max(p, emitted)])
                out.append(_conservative(masked[p:], self._ssn)[max(0, emitted - p):])
            else:
                out.append(masked[emitted:upto])
            emitted = upto
        self._buf = buf[cut:]
        self._start = p - cut
        self._emitted = emitted - cut
        return "".join(out).encode("utf-8", "surrogateescape")


def _mask(masker, buf: str, start: int) -> tuple[str, int]:
    """C{buf} masked from C{start}, and where an unfinished candidate begins (C{len(buf)}: none)."""
    spans, p = _spansAndHold(masker, buf, start)
    return applySpans(buf, spans), p


def _spansAndHold(masker, buf: str, start: int) -> tuple[list, int]:
    spans = masker.spans(buf, start)
    n = len(buf)
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
    return spans, p


class _Rendered:
    """
    A buffer with escape sequences: the detectors see the text between
    them, joined (found at C speed with one C{re.sub}); positions map back
    by bisection over the escapes, so the cost is per value, not per escape.
    """

    def __init__(self, buf: str):
        self.buf = buf
        # An escape sequence not finished yet: held until it is (or is too long to be one).
        m = _PARTIAL.search(buf, max(0, len(buf) - _MAX_ESCAPE)) if "\x1b" in buf[-_MAX_ESCAPE:] else None
        self.partial = -1 if m is None else m.start()
        self.tail = len(buf) if self.partial < 0 else self.partial
        self.plain = ESCAPE.sub("", buf[:self.tail])
        self._index: tuple[list[int], list[int], list[int], list[int]] | None = None

    def index(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """Escape starts, ends, where each sits in the text, and the lengths removed before each."""
        if self._index is None:
            found = [m.span() for m in ESCAPE.finditer(self.buf, 0, self.tail)]
            starts = [a for a, _b in found]
            ends = [b for _a, b in found]
            removed = [0, *itertools.accumulate(b - a for a, b in found)]
            plainAt = [a - r for a, r in zip(starts, removed, strict=False)]
            self._index = starts, ends, plainAt, removed
        return self._index

    def toPlain(self, i: int) -> int:
        # Scan starts sit on a character, never inside an escape sequence.
        return min(len(ESCAPE.sub("", self.buf[:i])), len(self.plain))

    def toBuf(self, j: int) -> int:
        """Where rendered character C{j} is in the buffer (escapes before it counted)."""
        if j >= len(self.plain):
            return self.partial if self.partial >= 0 else len(self.buf)
        _starts, _ends, plainAt, removed = self.index()
        return j + removed[bisect.bisect_right(plainAt, j)]

    def _unsplit(self, cut: int) -> int:
        """C{cut}, moved back to the start of an escape sequence it would split."""
        k = self.buf.rfind("\x1b", max(0, cut - _MAX_ESCAPE), cut)
        if k >= 0:
            m = ESCAPE.match(self.buf, k)
            if m is not None and m.end() > cut:
                return k
        return cut

    def mask(self, masker, start: int, final: bool) -> tuple[str, int, int]:
        plain = self.plain
        spans, p = _spansAndHold(masker, plain, self.toPlain(start))
        hold = self.toBuf(p) if p < len(plain) else len(self.buf)
        if self.partial >= 0 and not final:
            hold = min(hold, self.partial)
        out = self.buf
        if spans:
            # Masks land on rendered characters only: each masked range is
            # copied piece by piece between the escapes inside it.
            masked = applySpans(plain, spans)
            _starts, _ends, plainAt, removed = self.index()
            parts = []
            last = 0
            for s, e in _merged(spans):
                j = s
                while j < e:
                    k = bisect.bisect_right(plainAt, j)
                    stop = min(e, plainAt[k]) if k < len(plainAt) else e
                    o = j + removed[k]
                    parts.append(self.buf[last:o])
                    parts.append(masked[j:stop])
                    last = o + (stop - j)
                    j = stop
            parts.append(self.buf[last:])
            out = "".join(parts)
        return out, hold, self._unsplit(max(0, hold - _CONTEXT))


def _merged(spans) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e, _r in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _outsideEscapes(text: str) -> str:
    """C{text} smothered (base64/word characters as C{*}) except inside escape sequences."""
    out = []
    last = 0
    for m in ESCAPE.finditer(text):
        out.append(text[last:m.start()].translate(_SMOTHER))
        out.append(m.group())
        last = m.end()
    out.append(text[last:].translate(_SMOTHER))
    return "".join(out)


def _smotherEnd(text: str) -> int:
    """Where smothering stops: the first character no key contains, escape sequences skipped."""
    i = 0
    while True:
        m = _SMOTHER_END.search(text, i)
        if m is None:
            return -1
        if text[m.start()] == "\x1b":
            e = ESCAPE.match(text, m.start())
            if e is not None:
                i = e.end()
                continue
        return m.start()


def _conservative(held: str, ssn: bool) -> str:
    """
    An unfinished candidate sent at the holdback bound: never more than its
    masked form would show (the first six digits of a run - none of a run
    shaped like an SSN's start when that detector is on -, a token's
    prefix, no local part before an '@'), escape sequences untouched.
    """
    out = []
    last = 0
    for m in ESCAPE.finditer(held):
        out.append(_conservativeText(held[last:m.start()], ssn))
        out.append(m.group())
        last = m.end()
    out.append(_conservativeText(held[last:], ssn))
    return "".join(out)


def _keepFirst(m: re.Match) -> str:
    return m.group(1) + m.group(2).translate(_STAR_RUN)


def _conservativeText(text: str, ssn: bool) -> str:
    if ssn:
        text = _SSN_START.sub(lambda m: m.group().translate(_DIGIT_STAR), text)
    for rx in (_PEM_RUN, _JWT_RUN, _DIGIT_RUN, _AWS_RUN, _IBAN_RUN):
        text = rx.sub(_keepFirst, text)
    return _LOCAL_PART.sub(lambda m: "*" * len(m.group()), text)
