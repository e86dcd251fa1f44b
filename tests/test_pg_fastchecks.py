"""The fast paths of the codec and the classifier give what the plain ones give: DataRow and RowDescription checks accept exactly what decoding accepts, the literal fold is the same fold."""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._messages import _Body


def _decodes(cls, raw: bytes) -> bool:
    try:
        cls.decode(_Body(raw[5:]))
    except w.ProtocolError:
        return False
    return True


def _frame(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _damaged(t: bytes, good: bytes, cut: int, tail: bytes, data) -> bytes:
    """C{good}'s body maybe with one byte changed, maybe cut short, maybe with bytes after it."""
    body = bytearray(good[5:])
    if body and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    out = bytes(body)[:len(body) - min(cut, len(body)) if data.draw(st.booleans()) else None]
    if data.draw(st.booleans()):
        out += tail
    return _frame(t, out)


_values = st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=6)
_columns = st.lists(st.tuples(st.text(max_size=8).filter(lambda s: "\0" not in s),
                              st.integers(0, 2**32 - 1), st.integers(-2**15, 2**15 - 1)), max_size=5)


@settings(max_examples=300, deadline=None)
@given(_values, st.integers(0, 40), st.binary(max_size=6), st.data())
def test_datarow_check_agrees_with_decoding_on_whole_and_damaged_rows(values, cut, tail, data):
    good = w.DataRow(tuple(values)).encode()
    raw = _damaged(b"D", good, cut, tail, data)
    assert w._dataRow(raw) == _decodes(w.DataRow, raw)
    assert w._dataRow(good) and _decodes(w.DataRow, good)


@settings(max_examples=300, deadline=None)
@given(_columns, st.integers(0, 40), st.binary(max_size=6), st.data())
def test_rowdescription_check_agrees_with_decoding_on_whole_and_damaged_ones(cols, cut, tail, data):
    good = w.RowDescription(tuple(w.Column(n, tableOid=o, columnNumber=c) for n, o, c in cols)).encode()
    raw = _damaged(b"T", good, cut, tail, data)
    assert w._rowDescription(raw) == _decodes(w.RowDescription, raw)
    assert w._rowDescription(good)


@given(st.binary(max_size=40))
def test_random_bodies_are_judged_alike(body):
    for t, check, cls in ((b"D", w._dataRow, w.DataRow), (b"T", w._rowDescription, w.RowDescription)):
        raw = _frame(t, body)
        assert check(raw) == _decodes(cls, raw)


def test_the_reader_refuses_a_malformed_datarow_it_relays():
    r = w.Reader(frontend=False)
    r.receive_data(_frame(b"D", b"\x00\x02\x00\x00\x00\x01a"))  # two values announced, one sent
    try:
        r.drain(w.makeTable(w.BACKEND_TYPES, [b"D"]))
    except w.ProtocolError as e:
        assert "malformed DataRow" in str(e)
    else:
        raise AssertionError("a truncated DataRow passed")


@given(st.text(alphabet="sel ct'0123456789.,=<>()aid_\n\t", max_size=60))
def test_the_classifier_fold_without_quotes_is_the_same_fold(text):
    from sealgate.protocols.postgres.classify import _LITERALS, _UNSAFE, cacheKey

    want = text if any(u in text for u in _UNSAFE) else _LITERALS.sub("?", text)
    assert cacheKey(text) == want


#: The fold's patterns as they were written first (the reference).
_OLD_LITERALS = r"'[^']*'|\b\d+(?:\.\d+)?\b"
_OLD_NUMBERS = r"\b\d+(?:\.\d+)?\b"


@settings(max_examples=500)
@given(st.text(alphabet="sel ct'0123456789.,=<>()aid_\n\t\u0663\u00e9x", max_size=60))
def test_the_fold_patterns_match_what_they_matched_before(text):
    import re

    from sealgate.protocols.postgres.classify import _LITERALS, _NUMBERS

    assert _LITERALS.sub("?", text) == re.sub(_OLD_LITERALS, "?", text)
    assert _NUMBERS.sub("?", text) == re.sub(_OLD_NUMBERS, "?", text)
    assert [m.span() for m in _NUMBERS.finditer(text)] == [m.span() for m in re.finditer(_OLD_NUMBERS, text)]
