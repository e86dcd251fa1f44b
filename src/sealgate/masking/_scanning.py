"""The scanning machinery under the detectors: text skeletons, anchored regex scans, tails."""

import re
from collections.abc import Callable, Iterator

Span = tuple[int, int, str]

# Each byte's class: digits -> 0, letters -> A or a, separators -> s, the
# brackets and + stay, everything else -> _.  Shapes are then found with
# bytes.find, a few passes at memory speed instead of a regex per position.
SKELETON = bytes(
    ord("0") if 48 <= b <= 57 else
    ord("A") if 65 <= b <= 90 else
    ord("a") if 97 <= b <= 122 else
    ord("s") if chr(b) in " -." else
    b if chr(b) in "+()" else ord("_")
    for b in range(256)
)


class Probe:
    """Views of one text for the prefilters, each computed once when first asked."""

    __slots__ = ("text", "_raw", "_sk", "_low", "_csk")

    def __init__(self, text: str, raw: bytes | None = None):
        self.text = text
        self._raw = raw
        self._sk: bytes | None = None
        self._low: bytes | None = None
        self._csk: bytes | None = None

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            # Any lone surrogate (a JSON "\ud800" decodes to one) must not fail
            # here; only the ASCII bytes matter to the prefilters.
            self._raw = self.text.encode("utf-8", "surrogatepass")
        return self._raw

    @property
    def skeleton(self) -> bytes:
        if self._sk is None:
            self._sk = self.raw.translate(SKELETON)
        return self._sk

    @property
    def charSkeleton(self) -> bytes:
        """The skeleton with one byte per character of C{text} (offsets agree)."""
        if self._csk is None:
            if len(self.raw) == len(self.text):
                self._csk = self.skeleton
            else:
                # Each non-ASCII character becomes one "?" (class "_"), at C speed.
                self._csk = self.text.encode("ascii", "replace").translate(SKELETON)
        return self._csk

    @property
    def lower(self) -> bytes:
        if self._low is None:
            self._low = self.raw.lower()
        return self._low


def regexScan(rx: re.Pattern, fix: Callable[[re.Match], str | None]):
    """Scan with C{rx}; C{fix} returns the replacement or None for a false candidate."""
    search = rx.search

    def scan(text: str, pos: int, probe: "Probe | None" = None) -> Iterator[Span]:
        m = search(text, pos)
        while m is not None:
            r = fix(m)
            if r is None:
                m = search(text, m.start() + 1)
            else:
                yield m.start(), m.end(), r
                m = search(text, m.end())

    return scan


def anchoredScan(rx: re.Pattern, fix: Callable[[re.Match], str | None],
                  anchors: tuple[bytes, ...], onText: bool = False,
                  resume: Callable[[str, int], int] | None = None):
    """
    The scan of L{regexScan}, tried only where a match can start: every
    match of C{rx} starts exactly where one of C{anchors} occurs (skeleton
    byte strings; with C{onText}, strings of the text itself).

    The anchors are found with C{bytes.find} (memory speed, however dense
    the digits) and C{rx} is matched at each one in order, so the result is
    what a search of the whole text finds, leftmost first, while the text
    between candidates (most of it) costs no regex step at all.
    C{resume(text, j)} may rule a candidate out cheaply: -1 where a match
    may start, else where the next one can (it must never skip a start).
    """
    match = rx.match

    def scan(text: str, pos: int, probe: "Probe | None" = None) -> Iterator[Span]:
        n = len(text)
        if onText:
            hay: str | bytes = text
        else:
            hay = (probe if probe is not None else Probe(text)).charSkeleton
        find = hay.find
        # Each anchor's next occurrence, searched again only once passed: a
        # rare anchor is not looked for afresh at every candidate.
        nxt = [-1] * len(anchors)
        p = pos
        while True:
            a = n
            for i, anchor in enumerate(anchors):
                j = nxt[i]
                if j < p:
                    j = find(anchor, p)  # type: ignore[arg-type]
                    while j >= 0 and resume is not None:
                        at = resume(text, j)
                        if at < 0:
                            break
                        j = find(anchor, at)  # type: ignore[arg-type]
                    if j < 0:
                        j = n
                    nxt[i] = j
                if j < a:
                    a = j
            if a >= n:
                return
            m = match(text, a)
            new = None if m is None else fix(m)
            if m is None or new is None:
                p = a + 1
            else:
                yield a, m.end(), new
                p = m.end()

    return scan


DIGITS = "0123456789"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTERS = UPPER + UPPER.lower()


def regexTail(rx: re.Pattern, span: int, chars: str):
    """
    A tail from a regex ending in C{\\Z} whose characters all come from
    C{chars}: a candidate lies in the trailing run of those, which C{rstrip}
    finds at C speed, so the regex is tried from there only.
    """
    search = rx.search

    def tail(text: str, lo: int) -> int | None:
        n = len(text)
        lo = max(lo, n - span)
        r = lo + len(text[lo:].rstrip(chars))
        if r == n:
            return None
        m = search(text, r)
        return None if m is None else m.start()

    return tail


def prefixes(words) -> str:
    """A regex matching any non-empty prefix of any of C{words} (built as a trie)."""
    trie: dict = {}
    for w in words:
        node = trie
        for c in w:
            node = node.setdefault(c, {})

    def build(node) -> str:
        alts = []
        for c, child in sorted(node.items()):
            rest = build(child) if child else ""
            alts.append(re.escape(c) + (f"(?:{rest})?" if rest else ""))
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return build(trie)


def applySpans(text: str, spans: list[Span]) -> str:
    """
    Apply same-length replacements.  Where spans overlap, a position is
    masked if any of them masks it (the union: failing closed).
    """
    if not spans:
        return text
    spans.sort()
    out = []
    last = 0
    for s, e, r in spans:
        if s < last:
            return _applyOverlapping(text, spans)
        out.append(text[last:s])
        out.append(r)
        last = e
    out.append(text[last:])
    return "".join(out)


def _applyOverlapping(text: str, spans: list[Span]) -> str:
    chars = list(text)
    for s, _e, r in spans:
        for i, c in enumerate(r):
            if c != text[s + i]:
                chars[s + i] = c
    return "".join(chars)
