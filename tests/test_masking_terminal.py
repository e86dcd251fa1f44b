"""Terminal output: values masked as rendered (escape sequences inside them), escapes never
altered, and a holdback flush never shows more of a value than its masked form."""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker, knownDetectors
from sealgate.masking._stream import ESCAPE

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
M = Masker(sorted(knownDetectors()))
VALUES = ["4111 1111 1111 1111", "4111111111111111", "jane.doe@example.com", "123-45-6789",
          "AKIAIOSFODNN7EXAMPLE", "DE89 3704 0044 0532 0130 00", "+1 415 555 2671"]
ESCAPES = ["\x1b[01;31m", "\x1b[K", "\x1b[m", "\x1b[0m\x1b[K", "\x1b]8;;http://x\x1b\\",
           "\x1b]0;title\x07", "\x1b(B", "\x1b[38;5;196m"]


def _render(text: str) -> str:
    return ESCAPE.sub("", text)


def _feed(s, data: bytes, cuts) -> bytes:
    out, last = [], 0
    for c in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out.append(s.feed(data[last:c]))
        last = c
    return b"".join(out)


@st.composite
def colored(draw):
    """A line with values, escape sequences dropped anywhere, even inside a value."""
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        pieces.append(draw(st.sampled_from(["ls ", "match: ", "\r\n", "x=", "  "])))
        pieces.append(draw(st.sampled_from(VALUES)) + " ")
    text = "".join(pieces) + "\r\n"
    chars = list(text)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(chars)))
        chars.insert(at, draw(st.sampled_from(ESCAPES)))
    return "".join(chars)


@SETTINGS
@given(colored(), st.lists(st.integers(0, 10**6), max_size=6))
def test_values_are_masked_as_rendered_and_escapes_are_kept(text, cuts):
    s = M.streamMasker()
    data = text.encode()
    out = (_feed(s, data, cuts) + s.flush(atEnd=True)).decode()
    assert _render(out) == M.maskText(_render(text))
    assert [m.group() for m in ESCAPE.finditer(out)] == [m.group() for m in ESCAPE.finditer(text)]
    for value in VALUES:
        assert value not in _render(out)


def test_grep_color_inside_a_card_number():
    line = "4111 \x1b[01;31m\x1b[K1111\x1b[m\x1b[K 1111 1111\r\n"
    s = M.streamMasker()
    out = s.feed(line.encode()) + s.flush(atEnd=True)
    assert out == "**** \x1b[01;31m\x1b[K****\x1b[m\x1b[K **** 1111\r\n".encode()


def test_an_unfinished_escape_is_held_not_sent_in_halves():
    s = M.streamMasker()
    assert s.feed(b"ok \x1b[01") == b"ok "
    assert s.feed(b";31mred\x1b[m\r\n") == b"\x1b[01;31mred\x1b[m\r\n"


def test_smothering_a_too_long_key_leaves_escapes_alone():
    s = Masker(["private_key"]).streamMasker(maxHold=200)
    out = s.feed(b"-----BEGIN PRIVATE KEY-----\n" + b"QUJD" * 80 + b"\x1b[31mQUJD\x1b[m" + b"QUJD" * 10)
    assert b"\x1b[31m" in out and b"\x1b[m" in out and b"QUJD" not in out


_DIGITS = re.compile(r"\d")


@SETTINGS
@given(st.sampled_from(["4111 1111 1111 1111", "4111111111111111", "5555-5555-5555-4444"]),
       st.integers(1, 18), st.sampled_from(["", "\r\n$ "]))
def test_a_flush_at_the_holdback_bound_shows_no_more_than_the_masked_form(card, cut, after):
    s = M.streamMasker()
    data = f"card: {card}{after}".encode()
    cut = min(cut + len("card: "), len(data))
    first = s.feed(data[:cut]) + s.flush()       # the timer fired inside the value
    rest = s.feed(data[cut:]) + s.flush(atEnd=True)
    shown = (first + rest).decode()[len("card: "):][:len(card)]
    digits = [i for i, c in enumerate(card) if c.isdigit()]
    visible = [i for i in digits if shown[i] == card[i]]
    # At most the first six (PCI DSS) and the last four digits, ever.
    assert set(visible) <= set(digits[:6]) | set(digits[-4:])


def test_flushed_tokens_keep_only_what_their_masked_form_keeps():
    for held, expected in [(b"AKIAIOSFOD", b"AKIA******"), (b"eyJhbGci.eyJz", b"********.****"),
                           (b"123-45", b"***-**"), (b"123-45-67", b"***-**-**"), (b"45", b"45"),
                           (b"DE89 3704", b"DE** ****"), (b"jane.doe@exam", b"********@exam")]:
        s = M.streamMasker()
        assert s.feed(b"x " + held) + s.flush() == b"x " + expected, held


def test_typed_text_without_candidates_is_not_held():
    s = Masker(["credit_card", "us_ssn"]).streamMasker()
    for c in b"ls -la ":
        assert s.feed(bytes([c])) == bytes([c])
    # An arrow key's escape is held only until it is whole.
    assert s.feed(b"\x1b") + s.feed(b"[") + s.feed(b"A") == b"\x1b[A" and s.pending == 0
