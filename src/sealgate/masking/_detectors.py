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

from sealgate.masking._scanning import DIGITS as _DIGITS
from sealgate.masking._scanning import LETTERS as _LETTERS
from sealgate.masking._scanning import SKELETON as _SKELETON
from sealgate.masking._scanning import UPPER as _UPPER
from sealgate.masking._scanning import Probe, Span
from sealgate.masking._scanning import anchoredScan as _anchoredScan
from sealgate.masking._scanning import prefixes as _prefixes
from sealgate.masking._scanning import regexScan as _regexScan
from sealgate.masking._scanning import regexTail as _regexTail

#: The most a stream masker holds back for one unfinished candidate (PEM
#: blocks and JWTs are the long ones); see L{sealgate.masking.StreamMasker}.
MAX_HOLD = 16384


@attrs.frozen
class Detector:
    """
    One kind of sensitive value.

    @ivar name: the name used in C{[masking] detectors}.
    @ivar scan: C{(text, pos, probe=None) -> iterator of (start, end, replacement)}.
    @ivar tail: C{(text, lo) -> int | None}, see the module docstring.
    @ivar prefilter: C{Probe -> bool}, a cheap test that is true for any
        text holding a value (C{bytes.find} speed, no regex).
    """

    name: str
    scan: Callable[..., Iterator[Span]]
    tail: Callable[[str, int], int | None]
    prefilter: Callable[["Probe"], bool]


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


def _lastStart(s: str, k: int, counted: str) -> int:
    """Where the last C{k} characters of C{s} that are in C{counted} begin."""
    pos, seen = len(s), 0
    while pos and seen < k:
        pos -= 1
        if s[pos] in counted:
            seen += 1
    return pos


def _maskCardDigits(s: str) -> str:
    """Every digit but the last four becomes C{*}; separators stay (PCI DSS display)."""
    # Matches are ASCII (re.A): a translate, not a loop per character.
    pos = _lastStart(s, 4, _DIGITS)
    return s[:pos].translate(_STARS) + s[pos:]


# Card networks' issuer ranges (IIN prefixes, compared as same-width digit
# strings) and the lengths each issues: Luhn alone passes one number in ten,
# so a 13-19 digit id, timestamp or counter needs a real prefix AND length.
_ANY = tuple(range(16, 20))
_ISSUERS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("4", "4", (13, 16, 19)),                          # Visa
    ("51", "55", (16,)), ("2221", "2720", (16,)),      # Mastercard
    ("34", "34", (15,)), ("37", "37", (15,)),          # American Express
    ("300", "305", (14,) + _ANY), ("3095", "3095", (14,) + _ANY),
    ("36", "36", (14,) + _ANY), ("38", "39", _ANY),    # Diners Club
    ("3528", "3589", _ANY),                            # JCB
    ("6011", "6011", _ANY), ("644", "649", _ANY), ("65", "65", _ANY),   # Discover
    ("62", "62", _ANY),                                # UnionPay
    ("2200", "2204", _ANY),                            # Mir
    ("60", "60", (16,)), ("508", "508", (16,)),        # RuPay
    ("5018", "5018", tuple(range(13, 20))), ("5020", "5020", tuple(range(13, 20))),
    ("5038", "5038", tuple(range(13, 20))), ("5893", "5893", tuple(range(13, 20))),
    ("6304", "6304", tuple(range(13, 20))), ("6759", "6759", tuple(range(13, 20))),
    ("6761", "6763", tuple(range(13, 20))),            # Maestro
)


def issuerOk(digits: str) -> bool:
    """
    Whether C{digits} (a whole candidate number) starts with a card
    network's issuer prefix and has a length that network issues; see
    docs/masking.md for the table.
    """
    n = len(digits)
    get = _LENGTHS.get
    for k in (1, 2, 3, 4):
        lengths = get(digits[:k])
        if lengths is not None and n in lengths:
            return True
    return False


# Every prefix of the table spelled out (a few hundred): four dict looks
# per candidate instead of a walk over the ranges.
_LENGTHS: dict[str, frozenset[int]] = {}
for _lo, _hi, _lens in _ISSUERS:
    for _p in range(int(_lo), int(_hi) + 1):
        _key = str(_p).zfill(len(_lo))
        _LENGTHS[_key] = _LENGTHS.get(_key, frozenset()) | frozenset(_lens)


_NOT_DIGIT = re.compile(r"[^0-9]")


def _cardResume(text: str, j: int) -> int:
    """What the card pattern's lookbehinds ask, without a regex: not inside a number."""
    if j == 0:
        return -1
    c = text[j - 1]
    if "0" <= c <= "9" or (c == "." and j > 1 and "0" <= text[j - 2] <= "9"):
        # Inside a longer number or its decimals: no card starts before it ends.
        m = _NOT_DIGIT.search(text, j)
        return len(text) if m is None else m.start()
    return -1


_NO_SEPARATORS = str.maketrans("", "", " -")


def _fixCard(m: re.Match) -> str | None:
    s = m.group()
    digits = s.translate(_NO_SEPARATORS)
    if issuerOk(digits) and luhnValid(digits):
        return _maskCardDigits(s)
    if len(digits) == 19 and not s.isdigit() and issuerOk(digits[:16]) and luhnValid(digits[:16]):
        # 4-4-4-4 followed by three more digits: the card is the first 16.
        return _maskCardDigits(s[:19]) + s[19:]
    return None


# -- e-mail -------------------------------------------------------------------

_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9-])", re.A
)
_EMAIL_TAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}(?:@[A-Za-z0-9.-]{0,540})?\Z", re.A)


def _scanEmail(text: str, pos: int, probe: "Probe | None" = None) -> Iterator[Span]:
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


# ISO 13616 mod 97: each letter counts as its base-36 value (A = 10).
_BASE36 = str.maketrans({c: str(10 + i) for i, c in enumerate(_UPPER)})


def ibanValid(compact: str) -> bool:
    if not 15 <= len(compact) <= 34 or compact[:2] not in _IBAN_COUNTRIES:
        return False
    s = (compact[4:] + compact[:4]).translate(_BASE36)
    return s.isascii() and s.isdigit() and int(s) % 97 == 1


_ALNUM_STAR = str.maketrans({c: "*" for c in _DIGITS + _UPPER})


def _maskIban(s: str) -> str:
    """Country code and the last four characters stay, the rest becomes C{*}."""
    pos = max(2, _lastStart(s, 4, _DIGITS + _UPPER))
    return s[:2] + s[2:pos].translate(_ALNUM_STAR) + s[pos:]


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
    n = len(s) - len(s.translate(_NO_DIGITS))
    if not 8 <= n <= 15:
        return None
    pos = _lastStart(s, 2, _DIGITS)
    return s[:pos].translate(_STARS) + s[pos:]


_NO_DIGITS = str.maketrans("", "", _DIGITS)


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


def _awsScan(text: str, pos: int, probe: "Probe | None" = None) -> Iterator[Span]:
    # Two patterns, one detector: both scans are position-deterministic, so
    # their union is too.
    if probe is None:
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


_JWT_STAR = str.maketrans({c: "*" for c in _JWT_RUN if c != "."})


def _fixJwt(m: re.Match) -> str:
    return m.group().translate(_JWT_STAR)


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
# Every shape the digit detectors' prefilters look for, in one pattern; then
# one string each (with a byte of it), equal by tests/test_pg_copybatch.py.
_SHAPES = re.compile(rb"0000(?:000000000|s000)|000s00s0000|\+0|\(000\)|000s000s0000|AA00")
_SHAPE_LIST = ((b"0", b"0" * 13), (b"s", b"0000s000"), (b"s", b"000s00s0000"), (b"+", b"+0"),
               (b"(", b"(000)"), (b"s", b"000s000s0000"), (b"A", b"AA00"))


def suspect(text: str, pos: int) -> bool:
    """Whether C{text[pos:]} may hold any value at all: one look instead of every prefilter in turn."""
    if pos:
        text = text[pos:]
    if ("@" in text or "eyJ" in text or "PRIVATE KEY" in text
            or ("A" in text and _AWS_ID_PRE_STR.search(text) is not None)
            or "secret" in text.lower()):
        return True
    sk = text.encode("utf-8", "surrogatepass").translate(_SKELETON)
    return _SHAPES.search(sk) is not None if len(sk) < 256 else shapesIn(sk)


def shapesIn(sk: bytes) -> bool:
    """L{_SHAPES} in a long skeleton (COPY rows): finds, rarest byte first, beat the regex on dense digits."""
    return any(rare in sk and shape in sk for rare, shape in _SHAPE_LIST)


_NUMERIC = _DIGITS + " -"


def _anchoredPrefilter(probe: Probe) -> bool:
    # An anchored scan's first step is the same bytes.find a prefilter
    # would do: looking twice only costs a second pass where values are.
    return True


DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        Detector("credit_card",
                 _anchoredScan(_CARD, _fixCard,
                               (b"0" * 13, b"0000s0000s0000", b"0000s000000s0000"),
                               resume=_cardResume),
                 _regexTail(_CARD_TAIL, 40, _NUMERIC), _anchoredPrefilter),
        Detector("email", _scanEmail, _regexTail(_EMAIL_TAIL, 610, _LETTERS + _DIGITS + "._%+-@"),
                 lambda p: "@" in p.text),
        Detector("us_ssn", _anchoredScan(_SSN, _fixSsn, (b"000s00s0000",)),
                 _regexTail(_SSN_TAIL, 12, _DIGITS + "-"), _anchoredPrefilter),
        Detector("iban", _anchoredScan(_IBAN, _fixIban, (b"AA00",)),
                 _regexTail(_IBAN_TAIL, 70, _UPPER + _DIGITS + " "), _anchoredPrefilter),
        # One-byte anchors are found with memchr; the regex checks the rest.
        Detector("phone", _anchoredScan(_PHONE, _fixPhone, (b"+", b"(", b"000s000s0000")),
                 _regexTail(_PHONE_TAIL, 40, _DIGITS + " .()-+"), _anchoredPrefilter),
        Detector("aws_key", _awsScan, _awsTail, _awsPrefilter),
        Detector("jwt", _anchoredScan(_JWT, _fixJwt, ("eyJ",), onText=True),  # type: ignore[arg-type]
                 _jwtTail, _anchoredPrefilter),
        Detector("private_key", _regexScan(_PEM, _fixPem), _pemTail,
                 lambda p: "PRIVATE KEY" in p.text),
    )
}
