"""Unit tests for the masking detectors, the Masker (text, bytes, names, JSON) and HTTP bodies."""

import gzip
import json
import zlib

import brotli
import pytest

from sealgate.config import MaskingConfig
from sealgate.masking import (
    REDACTED,
    Masker,
    MaskingFailed,
    buildMasker,
    decodeContent,
    ibanValid,
    knownDetectors,
    luhnValid,
)

ALL = sorted(knownDetectors())


@pytest.fixture
def masker():
    return Masker(ALL, columns=["ssn", "card_*"], jsonFields=["password", "*token"])


def only(name):
    return Masker([name])


def test_known_detectors_are_the_documented_eight():
    assert knownDetectors() == {"credit_card", "email", "us_ssn", "iban", "phone", "aws_key",
                                "jwt", "private_key"}


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="nope"):
        Masker(["nope"])


@pytest.mark.parametrize("text, expected", [
    ("pay 4111 1111 1111 1111 now", "pay **** **** **** 1111 now"),
    ("pay 4111-1111-1111-1111.", "pay ****-****-****-1111."),
    ("n=5555555555554444;", "n=************4444;"),
    ("amex 3782 822463 10005", "amex **** ****** *0005"),
    ("19: 4111 1111 1111 1111 123", "19: **** **** **** 1111 123"),
])
def test_card_keeps_separators_and_last_four(text, expected):
    assert only("credit_card").maskText(text) == expected


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",            # Luhn fails
    "order 12345678901234567890123",  # too long to be a card
    "id 1234",
    "ts 1732619000125",               # Luhn-valid, but a millisecond timestamp: no issuer
    "x 2220000000000000",             # Luhn-valid, below the Mastercard 2-series
])
def test_card_lookalikes_stay(text):
    assert only("credit_card").maskText(text) == text


def test_luhn():
    assert luhnValid("4111111111111111")
    assert not luhnValid("4111111111111112")


def test_email_masks_local_part_same_length():
    m = only("email")
    assert m.maskText("to: John.Doe+x@mail.example.co.uk,") == "to: **********@mail.example.co.uk,"
    assert m.maskText("user@localhost and a@b") == "user@localhost and a@b"


def test_ssn_valid_ones_only():
    m = only("us_ssn")
    assert m.maskText("ssn 123-45-6789.") == "ssn ***-**-****."
    for bad in ("000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000",
                "2024-01-15"):
        assert m.maskText(bad) == bad


def test_iban_checksum_and_shape():
    m = only("iban")
    assert m.maskText("DE89 3704 0044 0532 0130 00") == "DE** **** **** **** **30 00"
    assert m.maskText("x GB82WEST12345698765432 y") == "x GB****************5432 y"
    assert m.maskText("DE89 3704 0044 0532 0130 00 1234") == "DE** **** **** **** **30 00 1234"
    assert m.maskText("DE88 3704 0044 0532 0130 00") == "DE88 3704 0044 0532 0130 00"
    assert ibanValid("GB82WEST12345698765432")
    assert not ibanValid("GB82WEST12345698765433")


def test_phone_formats_and_lookalikes():
    m = only("phone")
    assert m.maskText("call +1 415 555 2671!") == "call +* *** *** **71!"
    assert m.maskText("(555) 123-4567") == "(***) ***-**67"
    assert m.maskText("555.123.4567") == "***.***.**67"
    for text in ("2024-01-15 12:30:00", "ip 192.168.100.200", "v1.2.3", "pid 12345"):
        assert m.maskText(text) == text


def test_aws_access_key_id_and_secret_in_context():
    m = only("aws_key")
    assert m.maskText("id AKIAIOSFODNN7EXAMPLE.") == "id AKIA****************."
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    out = m.maskText(f"aws_secret_access_key = {secret}\n")
    assert out == "aws_secret_access_key = " + "*" * 40 + "\n"
    out = m.maskText(f'{{"SecretAccessKey": "{secret}"}}')
    assert secret not in out and out.count("*") == 40
    # Forty base64 characters with no key name around them are not a secret.
    assert m.maskText(f"hash {secret}") == f"hash {secret}"


def test_jwt_masked_but_dots_kept():
    token = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
             "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U")
    out = only("jwt").maskText(f"Bearer {token} ok")
    assert out == "Bearer " + "".join("." if c == "." else "*" for c in token) + " ok"


def test_private_key_body_masked_markers_kept():
    pem = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
           "AAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n$ ")
    out = only("private_key").maskText(pem)
    lines = out.split("\n")
    assert lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----"
    assert set(lines[1]) == {"*"} and set(lines[2]) == {"*"}
    assert lines[3] == "-----END OPENSSH PRIVATE KEY-----"
    assert lines[4] == "$ "
    # Cut off before its END line (head -3 id_rsa): still masked.
    out = only("private_key").maskText(pem[:60])
    assert "b3Blbn" not in out


def test_overlapping_detectors_mask_the_union(masker):
    # A phone-shaped prefix on a card number: every position either masks stays masked.
    out = masker.maskText("+1 4111 1111 1111 1111")
    assert "4111 1111 1111" not in out


def test_mask_bytes_keeps_non_utf8_bytes():
    m = only("credit_card")
    data = b"\xff\xfe caf\xc3\xa9 4111111111111111 \x80"
    out = m.maskBytes(data)
    assert out == b"\xff\xfe caf\xc3\xa9 ************1111 \x80"
    assert m.maskBytes(b"nothing here") == b"nothing here"


def test_column_globs_any_case(masker):
    assert masker.columnMasked("SSN")
    assert masker.columnMasked("card_number")
    assert masker.columnMasked("password")
    assert masker.columnMasked("refresh_token")
    assert not masker.columnMasked("cards")
    assert masker.maskValue("card_no", "anything") == REDACTED
    assert masker.maskValue("note", "a@b.io x") == "*@b.io x"
    assert masker.maskValue(None, "4111111111111111") == "************1111"


def test_build_masker_none_when_nothing_configured():
    assert buildMasker(MaskingConfig()) is None
    m = buildMasker(MaskingConfig(columns=("ssn",)))
    assert m is not None and m.columnMasked("ssn") and m.maskText("4111111111111111") == \
        "4111111111111111"


# -- JSON ------------------------------------------------------------------------


def test_mask_json_object(masker):
    obj = {"user": {"email": "a.b@example.org", "password": {"x": 1}, "token": None,
                    "access_token": "t"}, "cards": [4111111111111111, "4111 1111 1111 1111"],
           "n": 1.5, "ok": True}
    out = masker.maskJson(obj)
    assert out == {"user": {"email": "***@example.org", "password": REDACTED, "token": None,
                            "access_token": REDACTED},
                   "cards": ["************1111", "**** **** **** 1111"], "n": 1.5, "ok": True}


def test_mask_json_bytes_keeps_layout_and_numbers(masker):
    doc = (b'{\n  "price": 10.10,\n  "big": 123456789012345678901234567890,\n'
           b'  "mail": "x@example.com",\n  "password": [1, {"a": "b"}],\n  "e": "caf\\u00e9 \\"q\\""\n}')
    out = masker.maskJsonBytes(doc)
    assert out == (b'{\n  "price": 10.10,\n  "big": 123456789012345678901234567890,\n'
                   b'  "mail": "*@example.com",\n  "password": "********",\n'
                   b'  "e": "caf\\u00e9 \\"q\\""\n}')
    assert masker.maskJsonBytes(b'{"a": 1}') == b'{"a": 1}'


def test_mask_json_bytes_escaped_value(masker):
    out = masker.maskJsonBytes(b'["\\u0034111111111111111 caf\\u00e9"]')
    assert json.loads(out) == ["************1111 caf\u00e9"]


def test_lone_surrogates_are_no_trouble(masker):
    text = "\ud800 " + "x" * 300 + " 4111111111111111"
    assert masker.maskText(text).endswith(" ************1111")
    doc = b'{"a": "\\ud800 4111111111111111 ' + b"y" * 300 + b'"}'
    assert json.loads(masker.maskJsonBytes(doc))["a"].startswith("\ud800 ************1111")


def test_json_the_standard_library_accepts_is_masked_not_refused(masker):
    # orjson checks documents first and refuses NaN; Python backends send it.
    assert masker.maskJsonBytes(b'{"n": NaN, "card": "4111111111111111"}') == (
        b'{"n": NaN, "card": "************1111"}')


@pytest.mark.parametrize("bad", [b'{"a": ', b"{'a': 1}", b"\xff\xfe{", b""])
def test_mask_json_bytes_fails_closed(masker, bad):
    with pytest.raises(MaskingFailed) as e:
        masker.maskJsonBytes(bad)
    assert "position" in str(e.value) or "utf-8" in str(e.value)


# -- HTTP bodies ---------------------------------------------------------------------

CARD_JSON = b'{"card": "4111111111111111", "note": "hi"}'
MASKED_JSON = b'{"card": "************1111", "note": "hi"}'


@pytest.mark.parametrize("coding, encode, decode", [
    ("gzip", gzip.compress, gzip.decompress),
    ("deflate", zlib.compress, zlib.decompress),
    ("br", brotli.compress, brotli.decompress),
    ("", lambda b: b, lambda b: b),
])
def test_encoded_json_body_masked_and_reencoded(masker, coding, encode, decode):
    body, enc = masker.maskEncodedBody(encode(CARD_JSON), coding, "application/json; charset=utf-8")
    assert enc == coding
    assert decode(body) == MASKED_JSON


def test_raw_deflate_body_and_identity_option(masker):
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = c.compress(b"card 4111111111111111\n") + c.flush()
    body, enc = masker.maskEncodedBody(raw, "deflate", "text/plain", reencode=False)
    assert (body, enc) == (b"card ************1111\n", "")


def test_text_body_in_latin1(masker):
    body, _ = masker.maskEncodedBody("caf\xe9 4111111111111111".encode("latin-1"), None,
                                     "text/html; charset=ISO-8859-1")
    assert body == "caf\xe9 ************1111".encode("latin-1")


def test_binary_bodies_go_by_unknown_content():
    png = b"\x89PNG\x00 4111111111111111"
    gz = gzip.compress(png)
    with pytest.raises(MaskingFailed, match="unknown_content"):
        Masker(ALL).maskEncodedBody(gz, "gzip", "image/png")
    with pytest.raises(MaskingFailed, match="unknown_content"):
        Masker(ALL).maskEncodedBody(b"\xff\x00 4111111111111111", None, None)
    passing = Masker(ALL, unknownContent="pass")
    assert passing.maskEncodedBody(gz, "gzip", "image/png") == (gz, "gzip")
    assert passing.maskEncodedBody(b"x", "zstd", "image/png") == (b"x", "zstd")
    masking = Masker(ALL, unknownContent="mask")
    assert masking.maskEncodedBody(png, None, "image/png")[0] == b"\x89PNG\x00 ************1111"
    # Names alone find nothing in a body that is not JSON: it passes.
    assert Masker(columns=["ssn"]).maskEncodedBody(png, None, "image/png")[0] is png


def test_unchanged_bodies_come_back_as_the_same_bytes(masker):
    clean = gzip.compress(b'{"a": 1}')
    assert masker.maskEncodedBody(clean, "gzip", "application/json")[0] is clean


def test_untyped_utf8_body_masked_as_text(masker):
    assert masker.maskEncodedBody(b"4111111111111111", None, "")[0] == b"************1111"


# Fixed gzip mtimes and explicit ids: xdist workers must collect the same names.
@pytest.mark.parametrize("body, coding, ctype", [
    (b"not gzip", "gzip", "text/plain"),
    (gzip.compress(b"abc", mtime=0)[:-6], "gzip", "text/plain"),
    (gzip.compress(b"abc", mtime=0) * 2, "gzip", "text/plain"),
    (b"\x00\x01", "br", "application/json"),
    (b"x", "zstd", "text/plain"),
    (gzip.compress(b"{broken", mtime=0), "gzip", "application/json"),
    (b"caf\xe9", None, "text/plain; charset=no-such-charset"),
], ids=["not-gzip", "truncated-gzip", "two-gzip-members", "bad-br", "unknown-coding",
        "gzip-of-bad-json", "unknown-charset"])
def test_undecodable_bodies_fail_closed(masker, body, coding, ctype):
    with pytest.raises(MaskingFailed):
        masker.maskEncodedBody(body, coding, ctype)


def test_decompression_bomb_refused():
    bomb = gzip.compress(b"\0" * 100_000)
    assert len(decodeContent(bomb, "gzip", limit=100_000)) == 100_000
    with pytest.raises(MaskingFailed, match="inflates past"):
        decodeContent(bomb, "gzip", limit=99_999)
    with pytest.raises(MaskingFailed, match="inflates past"):
        decodeContent(brotli.compress(b"\0" * 100_000), "br", limit=50_000)
