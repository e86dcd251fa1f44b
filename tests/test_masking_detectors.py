"""Detector rules: card issuers and lengths, and the anchored scans equal a regex over the whole text."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker, _detectors, _scanning, issuerOk, luhnValid

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CARD = Masker(["credit_card"])


def _withLuhn(body: str) -> str:
    for c in "0123456789":
        if luhnValid(body + c):
            return body + c
    raise AssertionError(body)


@pytest.mark.parametrize("number", [
    "4111111111111", "4111111111111111", "4111111111111111110",       # Visa 13, 16, 19
    "5555555555554444", "2221000000000009",                           # Mastercard
    "378282246310005", "30569309025904", "3530111333300000",          # Amex, Diners, JCB
    "6011111111111117", "6200000000000005", "2200000000000004",       # Discover, UnionPay, Mir
])
def test_cards_of_every_network_are_masked(number):
    number = _withLuhn(number[:-1])
    assert CARD.maskText(f"n {number} .") == f"n {'*' * (len(number) - 4)}{number[-4:]} ."


@pytest.mark.parametrize("body", [
    "1732619000125",         # a millisecond timestamp: no network starts with 1
    "411111111111111",       # Visa prefix, but Visa issues no 15-digit number
    "51000000000000",        # Mastercard prefix, 14 digits
    "3400000000000000",      # Amex prefix, 16 digits (Amex is 15)
    "9000000000000000",      # no network at 9
    "7000000000000000000",
])
def test_luhn_valid_numbers_without_issuer_and_length_stay(body):
    number = _withLuhn(body[:-1])
    assert not issuerOk(number)
    assert CARD.maskText(f"id {number} .") == f"id {number} ."


@SETTINGS
@given(st.sampled_from("0123456789"), st.integers(13, 19), st.data())
def test_a_luhn_valid_number_is_masked_only_with_an_issuer(first, length, data):
    body = first + data.draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    number = _withLuhn(body)
    out = CARD.maskText(f"x {number} y")
    assert (out != f"x {number} y") == issuerOk(number)


@SETTINGS
@given(st.floats(-1e9, 1e9))
def test_decimals_of_a_float_are_never_a_card(x):
    text = f'{{"score": {x!r}}}'
    assert CARD.maskText(text) == text


# Text made of what values are made of, so that candidates, near misses and
# overlaps are frequent; the anchored scans must find exactly what the plain
# regex scan (the reference, no anchors) finds.
_ALPHABET = st.sampled_from(list("0123456789 -.+()4111eyJ_AZDEGBxq\n") + ["4111 1111 ", "555",
                            "DE89", "eyJhbGciOi", ".0", "123-45-", "+1 4", "(415) "])
TEXTS = st.lists(_ALPHABET, max_size=60).map("".join)
_REFERENCE = {
    "credit_card": _scanning.regexScan(_detectors._CARD, _detectors._fixCard),
    "us_ssn": _scanning.regexScan(_detectors._SSN, _detectors._fixSsn),
    "iban": _scanning.regexScan(_detectors._IBAN, _detectors._fixIban),
    "phone": _scanning.regexScan(_detectors._PHONE, _detectors._fixPhone),
    "jwt": _scanning.regexScan(_detectors._JWT, _detectors._fixJwt),
}


@SETTINGS
@given(TEXTS, st.sampled_from(sorted(_REFERENCE)), st.integers(0, 5))
def test_anchored_scan_equals_the_whole_text_regex_scan(text, name, pos):
    pos = min(pos, len(text))
    assert list(_detectors.DETECTORS[name].scan(text, pos)) == list(_REFERENCE[name](text, pos))


def test_anchored_scan_agrees_with_non_ascii_before_a_value():
    text = "é€ 4111 1111 1111 1111 ü 123-45-6789 \udc80 +1 415 555 2671"
    for name, ref in _REFERENCE.items():
        assert list(_detectors.DETECTORS[name].scan(text, 0)) == list(ref(text, 0))
    assert Masker(sorted(_REFERENCE)).maskText(text).count("*") == 12 + 9 + 9
