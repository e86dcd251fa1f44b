"""The built-in detectors: what each sensitive value looks like and how it is masked.

Every detector obeys three rules the engine and the stream masker rely on:

- its replacement has exactly the length of what it replaces and only ever
  puts C{*} where there was an ASCII character, so masks from several
  detectors combine position by position and byte offsets never move;
- C{scan(text, pos)} yields the spans it masks in order, and whether a
  candidate is taken depends only on the text from its start (plus one
  character before, for the boundary checks), never on earlier matches;
- C{tail(text, lo)} returns the earliest position at or after C{lo} where a
  value could begin that is not finished at the end of C{text} (a strict
  superset is fine: it only means holding back a little more).
"""

import itertools
import re
from collections.abc import Callable, Iterator

import attrs

#: The most a stream masker holds back for one unfinished candidate (PEM
#: blocks and JWTs are the long ones); see L{sealgate.masking.StreamMasker}.
MAX_HOLD = 16384

Span = tuple[int, int, str]


@attrs.frozen
class Detector:
    """
    One kind of sensitive value.

    @ivar name: the name used in C{[masking] detectors}.
    @ivar scan: C{(text, pos) -> iterator of (start, end, replacement)}.
    @ivar tail: C{(text, lo) -> int | None}, see the module docstring.
    @ivar prefilter: C{Probe -> bool}, a cheap test that is true for any
        text holding a value (C{bytes.find} speed, no regex).
    """

    name: str
    scan: Callable[[str, int], Iterator[Span]]
    tail: Callable[[str, int], int | None]
    prefilter: Callable[["Probe"], bool]


# Each byte's class: digits -> 0, letters -> A or a, separators -> s, the
# brackets and + stay, everything else -> _.  Shapes are then found with
# bytes.find, a few passes at memory speed instead of a regex per position.
_SKELETON = bytes(
    ord("0") if 48 <= b <= 57 else
    ord("A") if 65 <= b <= 90 else
    ord("a") if 97 <= b <= 122 else
    ord("s") if chr(b) in " -." else
    b if chr(b) in "+()" else ord("_")
    for b in range(256)
)


class Probe:
    """Views of one text for the prefilters, each computed once when first asked."""

    __slots__ = ("text", "_raw", "_sk", "_low")

    def __init__(self, text: str, raw: bytes | None = None):
        self.text = text
        self._raw = raw
        self._sk: bytes | None = None
        self._low: bytes | None = None

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
            self._sk = self.raw.translate(_SKELETON)
        return self._sk

    @property
    def lower(self) -> bytes:
        if self._low is None:
            self._low = self.raw.lower()
        return self._low


def _cardShape(probe: Probe) -> bool:
    sk = probe.skeleton
    return b"0000000000000" in sk or (
        b"0000s000" in sk and (b"0000s0000s0000" in sk or b"0000s000000s0000" in sk))


def _ssnShape(probe: Probe) -> bool:
    return b"000s00s0000" in probe.skeleton


def _phoneShape(probe: Probe) -> bool:
    sk = probe.skeleton
    return b"+0" in sk or b"(000)" in sk or b"000s000s0000" in sk


def _ibanShape(probe: Probe) -> bool:
    return b"AA00" in probe.skeleton


def _regexScan(rx: re.Pattern, fix: Callable[[re.Match], str | None]):
    """Scan with C{rx}; C{fix} returns the replacement or None for a false candidate."""
    search = rx.search

    def scan(text: str, pos: int) -> Iterator[Span]:
        m = search(text, pos)
        while m is not None:
            r = fix(m)
            if r is None:
                m = search(text, m.start() + 1)
            else:
                yield m.start(), m.end(), r
                m = search(text, m.end())

    return scan


_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERS = _UPPER + _UPPER.lower()


def _regexTail(rx: re.Pattern, span: int, chars: str):
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


def _star(s: str, keep: Callable[[int, str], bool] = lambda i, c: False) -> str:
    return "".join(c if keep(i, c) else "*" for i, c in enumerate(s))


def _prefixes(words) -> str:
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


# -- credit cards (Luhn) ------------------------------------------------------

# Patterns start with what they consume, lookbehinds after it, so the
# regex engine can skip ahead to a possible first character.
_CARD = re.compile(
    r"""\d\d\d\d(?<!\d\d\d\d\d)(?<!\d\.\d\d\d\d)(?:   # not the decimals of a number
        (?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?   # 4-4-4-4(-3)
      | (?P<t>[ -])\d{6}(?P=t)\d{4,5}                            # Amex, Diners
      | \d{9,15}                                                 # 13 to 19 in one run
    )(?!\d)""",
    re.X | re.A,
)
_CARD_TAIL = re.compile(r"(?<!\d)\d(?:[ -]?\d){0,18}[ -]?\Z", re.A)


_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")
_STARS = str.maketrans("0123456789", "*" * 10)


def luhnValid(digits: str) -> bool:
    if digits.isascii() and digits.isdigit():
        # At C speed: from the right, odd places as they are, even places
        # doubled (digit sum) by a table; the ASCII codes' sum less 48 each.
        b = digits.encode()[::-1]
        return (sum(b[0::2]) + sum(b[1::2].translate(_LUHN_DOUBLED)) - 48 * len(b)) % 10 == 0
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _maskCardDigits(s: str) -> str:
    """Every digit but the last four becomes C{*}; separators stay (PCI DSS display)."""
    if s.isascii():
        pos, seen = len(s), 0
        while pos and seen < 4:
            pos -= 1
            if s[pos].isdigit():
                seen += 1
        return s[:pos].translate(_STARS) + s[pos:]
    ndigits = sum(c.isdigit() for c in s)
    seen = 0
    out = []
    for c in s:
        if c.isdigit():
            seen += 1
            out.append(c if seen > ndigits - 4 else "*")
        else:
            out.append(c)
    return "".join(out)


def _issuerOk(digits: str) -> bool:
    """
    Card networks' number ranges (Visa 4, Mastercard 51-55 and 2221-2720,
    Amex/Diners/JCB 3, Maestro/Discover/UnionPay 5 and 6): keeps 13-digit
    millisecond timestamps (17...) and such from passing as cards.
    """
    d = digits[0]
    return d in "3456" or (d == "2" and 2221 <= int(digits[:4]) <= 2720)


def _fixCard(m: re.Match) -> str | None:
    s = m.group()
    digits = s.replace(" ", "").replace("-", "")
    if not _issuerOk(digits):
        return None
    if luhnValid(digits):
        return _maskCardDigits(s)
    if len(digits) == 19 and not s.isdigit() and luhnValid(digits[:16]):
        # 4-4-4-4 followed by three more digits: the card is the first 16.
        return _maskCardDigits(s[:19]) + s[19:]
    return None


# -- e-mail -------------------------------------------------------------------

_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9-])", re.A
)
_EMAIL_TAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}(?:@[A-Za-z0-9.-]{0,540})?\Z", re.A)


def _scanEmail(text: str, pos: int) -> Iterator[Span]:
    # Same result as searching [local]{1,64}@domain left to right, but
    # driven by the '@' signs so text without one costs a single find().
    find = text.find
    lo = pos
    at = find("@", pos)
    while at >= 0:
        start = at
        while start > lo and at - start < 64 and text[start - 1] in _LOCAL:
            start -= 1
        if start < at:
            d = _DOMAIN.match(text, at + 1)
            if d is not None:
                yield start, d.end(), "*" * (at - start) + text[at:d.end()]
                lo = d.end()
                at = find("@", lo)
                continue
        at = find("@", at + 1)


# -- US social security numbers ----------------------------------------------

_SSN = re.compile(r"\d\d\d-(?<![\d-]....)\d\d-\d{4}(?![\d-])", re.A)


def _fixSsn(m: re.Match) -> str | None:
    s = m.group()
    if s[:3] in ("000", "666") or s[0] == "9" or s[4:6] == "00" or s[7:] == "0000":
        return None
    return "***-**-****"
_SSN_TAIL = re.compile(r"(?<![\d-])\d{1,3}(?:-(?:\d{1,2}(?:-\d{0,4})?)?)?\Z", re.A)

# -- IBAN (mod 97) -------------------------------------------------------------

# The electronic format (ISO 13616): upper case, optionally in groups of four.
_IBAN = re.compile(
    r"[A-Z][A-Z]\d\d(?<![A-Za-z0-9]....)(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])",
    re.A,
)
_IBAN_TAIL = re.compile(r"(?<![A-Za-z0-9])[A-Z](?:[A-Z](?:\d(?:\d(?:[ ]?[A-Z0-9]){0,31}[ ]?)?)?)?\Z",
                        re.A)


# Countries using IBAN (SWIFT registry): a candidate from elsewhere is a false alarm.
_IBAN_COUNTRIES = frozenset("""
AD AE AL AT AZ BA BE BG BH BI BR BY CH CR CY CZ DE DJ DK DO EE EG ES FI FK FO FR GB GE GI GL GR
GT HN HR HU IE IL IQ IS IT JO KW KZ LB LC LI LT LU LV LY MC MD ME MK MN MR MT MU NI NL NO OM PK
PL PS PT QA RO RS RU SA SC SD SE SI SK SM SO ST SV TL TN TR UA VA VG XK YE
""".split())


def ibanValid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or compact[:2] not in _IBAN_COUNTRIES:
        return False
    s = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in s)) % 97 == 1
    except ValueError:
        return False


def _maskIban(s: str) -> str:
    """Country code and the last four characters stay, the rest becomes C{*}."""
    n = sum(c != " " for c in s)
    seen = 0
    out = []
    for c in s:
        if c == " ":
            out.append(c)
            continue
        seen += 1
        out.append(c if seen <= 2 or seen > n - 4 else "*")
    return "".join(out)


def _fixIban(m: re.Match) -> str | None:
    s = m.group()
    end = len(s)
    while True:
        if ibanValid(s[:end].replace(" ", "")):
            return _maskIban(s[:end]) + s[end:]
        # Spaced IBANs run into a following group of digits; try shorter.
        end = s.rfind(" ", 0, end)
        if end < 0 or len(s[:end].replace(" ", "")) < 15:
            return None


# -- phone numbers -------------------------------------------------------------

_PHONE = re.compile(
    r"""(?:
        \+\d(?<![\w+]..)\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}  # +1 415...
      | \((?<![\w+].)\d{3}\)[ ]?\d{3}[ .-]\d{4}                                 # (555) 123-4567
      | \d\d\d[.-](?<![\w+]....)\d{3}[.-]\d{4}                                  # 555-123-4567
    )(?!\w)""",
    re.X | re.A,
)
_PHONE_TAIL = re.compile(r"(?<![\w+])[+(\d][\d .()-]{0,36}\Z", re.A)


def _fixPhone(m: re.Match) -> str | None:
    s = m.group()
    n = sum(c.isdigit() for c in s)
    if not 8 <= n <= 15:
        return None
    seen = 0
    out = []
    for c in s:
        if c.isdigit():
            seen += 1
            out.append(c if seen > n - 2 else "*")
        else:
            out.append(c)
    return "".join(out)


# -- AWS keys ------------------------------------------------------------------

_AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA",
                 "AROA", "ASCA")
_AWS_ID = re.compile(r"A(?<![A-Za-z0-9]A)(?:%s)[A-Z0-9]{16}(?![A-Za-z0-9])"
                     % "|".join(p[1:] for p in _AWS_PREFIXES), re.A)
_AWS_ID_TAIL = re.compile(r"(?<![A-Za-z0-9])A[A-Z0-9]{0,19}\Z", re.A)

_SECRET_WORDS = sorted({
    "".join(itertools.chain.from_iterable(zip(parts, seps + ("",), strict=True)))
    for parts in (("aws", "secret", "access", "key"), ("aws", "secret", "key"),
                  ("secret", "access", "key"))
    for seps in itertools.product(("", "_"), repeat=len(parts) - 1)
})
_KEYWORD = "(?:%s)" % "|".join(_SECRET_WORDS)
_AWS_SECRET = re.compile(
    r"(?i:%s)[\"']?\s{0,3}(?:=>|[:=])\s{0,3}[\"']?(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])" % _KEYWORD,
    re.A,
)
_AWS_SECRET_TAIL = re.compile(
    r"(?i:%s\Z|%s(?:[\"']?\s{0,3}(?:(?:=>?|:)\s{0,3}[\"']?[A-Za-z0-9/+]{0,40})?)?\Z)"
    % (_prefixes(_SECRET_WORDS), _KEYWORD),
    re.A,
)


def _fixAwsId(m: re.Match) -> str:
    s = m.group()
    return s[:4] + "*" * (len(s) - 4)


def _fixAwsSecret(m: re.Match) -> str:
    s = m.group()
    v = m.start("v") - m.start()
    return s[:v] + "*" * 40


_AWS_ID_PRE = re.compile(("A(?:%s)" % "|".join(p[1:] for p in _AWS_PREFIXES)).encode())


def _awsPrefilter(probe: Probe) -> bool:
    return _AWS_ID_PRE.search(probe.raw) is not None or b"secret" in probe.lower


def _awsScan(text: str, pos: int) -> Iterator[Span]:
    # Two patterns, one detector: both scans are position-deterministic, so
    # their union is too.
    probe = Probe(text)
    ids = (list(_regexScan(_AWS_ID, _fixAwsId)(text, pos))
           if _AWS_ID_PRE.search(probe.raw) is not None else [])
    secrets = (list(_regexScan(_AWS_SECRET, _fixAwsSecret)(text, pos))
               if b"secret" in probe.lower else [])
    return iter(sorted(ids + secrets))


_awsIdTail = _regexTail(_AWS_ID_TAIL, 24, _UPPER + _DIGITS)
_awsSecretTail = _regexTail(_AWS_SECRET_TAIL, 80, _LETTERS + _DIGITS + "_/+'\" \t\n\r\f\v:=>")


def _awsTail(text: str, lo: int) -> int | None:
    found = [t for t in (_awsIdTail(text, lo), _awsSecretTail(text, lo)) if t is not None]
    return min(found) if found else None


# -- JWTs ----------------------------------------------------------------------

_JWT = re.compile(r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_.-]*",
                  re.A)
_JWT_RUN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _jwtTail(text: str, lo: int) -> int | None:
    # A JWT still arriving is inside the trailing run of token characters.
    n = len(text)
    r = n
    while r > lo and text[r - 1] in _JWT_RUN:
        r -= 1
    if r == n:
        return None
    j = text.find("eyJ", r)
    while j >= 0:
        if j == 0 or text[j - 1] not in _WORD:
            return j
        j = text.find("eyJ", j + 1)
    for k in (n - 2, n - 1):   # "e" or "ey" just arrived
        if k >= r and text.startswith("eyJ"[: n - k], k) and (k == 0 or text[k - 1] not in _WORD):
            return k
    return None


def _fixJwt(m: re.Match) -> str:
    return _star(m.group(), lambda i, c: c == ".")


# -- private keys (PEM) --------------------------------------------------------

_PEM_CLASS = r"[A-Za-z0-9+/=\s:,.\-]"
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----(?P<body>%s*?)"
    r"(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----|(?!%s))" % (_PEM_CLASS, _PEM_CLASS),
    re.A,
)
_PEM_MARK_TAIL = re.compile(r"(?:-{1,5}|-----%s(?:[A-Z0-9 ]{0,40}-{0,4})?)\Z"
                            % _prefixes(["BEGIN "]), re.A)
_PEM_MARK_CHARS = "-" + _UPPER + _DIGITS + " "
_B64_STAR = str.maketrans({c: "*" for c in
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="})


def _fixPem(m: re.Match) -> str:
    s = m.group()
    b0, b1 = m.start("body") - m.start(), m.end("body") - m.start()
    return s[:b0] + s[b0:b1].translate(_B64_STAR) + s[b1:]


def _pemTail(text: str, lo: int) -> int | None:
    n = len(text)
    found = []
    start = max(lo, n - 64)
    r = start + len(text[start:].rstrip(_PEM_MARK_CHARS))
    m = _PEM_MARK_TAIL.search(text, r) if r < n else None
    if m is not None:
        found.append(m.start())
    j = text.find("-----BEGIN ", max(lo, n - MAX_HOLD - 64))
    while j >= 0:
        m = _PEM.match(text, j)
        if m is not None and m.end() >= n:
            found.append(j)
            break
        j = text.find("-----BEGIN ", j + 1)
    return min(found) if found else None


# -- the table -----------------------------------------------------------------

#: No value of any detector is shorter than this (a@b.cd is 6, the rest 9+).
MIN_VALUE = 6
_AWS_ID_PRE_STR = re.compile("A(?:%s)" % "|".join(p[1:] for p in _AWS_PREFIXES))
# Every shape the digit detectors' prefilters look for, in one pattern.
_SHAPES = re.compile(rb"0000(?:000000000|s000)|000s00s0000|\+0|\(000\)|000s000s0000|AA00")


def suspect(text: str, pos: int) -> bool:
    """
    Whether C{text[pos:]} may hold any value at all: one look for short
    texts (column values) instead of every prefilter in turn.
    """
    if pos:
        text = text[pos:]
    return ("@" in text or "eyJ" in text or "PRIVATE KEY" in text
            or ("A" in text and _AWS_ID_PRE_STR.search(text) is not None)
            or "secret" in text.lower()
            or _SHAPES.search(text.encode("utf-8", "surrogatepass").translate(_SKELETON))
            is not None)


_NUMERIC = _DIGITS + " -"
DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector("credit_card", _regexScan(_CARD, _fixCard), _regexTail(_CARD_TAIL, 40, _NUMERIC),
                 _cardShape),
        Detector("email", _scanEmail, _regexTail(_EMAIL_TAIL, 610, _LETTERS + _DIGITS + "._%+-@"),
                 lambda p: "@" in p.text),
        Detector("us_ssn", _regexScan(_SSN, _fixSsn), _regexTail(_SSN_TAIL, 12, _DIGITS + "-"),
                 _ssnShape),
        Detector("iban", _regexScan(_IBAN, _fixIban),
                 _regexTail(_IBAN_TAIL, 70, _UPPER + _DIGITS + " "), _ibanShape),
        Detector("phone", _regexScan(_PHONE, _fixPhone),
                 _regexTail(_PHONE_TAIL, 40, _DIGITS + " .()-+"), _phoneShape),
        Detector("aws_key", _awsScan, _awsTail, _awsPrefilter),
        Detector("jwt", _regexScan(_JWT, _fixJwt), _jwtTail, lambda p: "eyJ" in p.text),
        Detector("private_key", _regexScan(_PEM, _fixPem), _pemTail,
                 lambda p: "PRIVATE KEY" in p.text),
    )
}
