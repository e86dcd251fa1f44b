"""Masked sessions: a DataRow too short to hold, or holding nothing like, any detector's value passes unread, as masking it gives."""

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker
from sealgate.masking._detectors import DETECTORS, MIN_VALUE
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres.masking import RowMasker

MASKERS = [Masker(list(DETECTORS)), Masker(["credit_card", "email"], columns=["card"]),
           Masker(columns=["card"], jsonFields=["token"])]
#: text, varchar, int4, int8, numeric, json, jsonb, bytea, bool, an unknown type.
_OIDS = [25, 1043, 23, 20, 1700, 114, 3802, 17, 16, 70000]
_VALUES = st.one_of(st.none(), st.binary(max_size=7), st.binary(max_size=40),
                    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
                    st.sampled_from([b"\\x41", b"a@b.c", b"a@b.cd", b"12345", b"[1]", b"{}", b'"x"',
                                     b"4111111111111111", b"\\x414243444546", b"", b"\x00\x01",
                                     b"row 123 some words", b"x" * 300 + b"4111111111111111",
                                     b"4111 1111 1111 1111", b"+1 212 555 0100", b"AKIAIOSFODNN7EXAMPLE",
                                     b"\\x" + b"jane@example.com".hex().encode()]))


def _frame(msg) -> w.Frame:
    raw = msg.encode()
    return w.Frame(raw[0], raw)


def _out(rows: RowMasker, f: w.Frame, read: bool) -> bytes:
    try:
        if read and f.type == ord("D") and rows.described and rows.active:
            return rows._row(f)  # the row read and masked, as before the shortcut
        return rows.frame(f)
    except Exception as e:  # a refusal must be the same refusal
        return repr(e).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(MASKERS))),
       st.lists(st.tuples(st.sampled_from(["card", "n", "token"]), st.sampled_from(_OIDS),
                          st.sampled_from([0, 1])), min_size=0, max_size=4),
       st.lists(st.lists(_VALUES, max_size=5), max_size=4))
@example(0, [("n", 25, 0)], [[b"4111111111111111"], [b"a@b.cd"], [b"a@b.c"],
                            [b"\\x" + b"jane@example.com".hex().encode()]])
def test_short_rows_pass_exactly_as_masking_them_gives(which, cols, rowValues):
    desc = w.RowDescription(tuple(w.Column(n, typeOid=oid, format=fmt) for n, oid, fmt in cols))
    messages = [_frame(desc), *(_frame(w.DataRow(tuple(v))) for v in rowValues),
                _frame(w.CommandComplete(f"SELECT {len(rowValues)}"))]
    fast, slow = RowMasker(MASKERS[which]), RowMasker(MASKERS[which])
    assert [_out(fast, f, False) for f in messages] == [_out(slow, f, True) for f in messages]


def test_a_short_or_clean_row_of_text_columns_is_passed_and_one_with_a_value_masked():
    rows = RowMasker(MASKERS[0])
    rows.frame(_frame(w.RowDescription((w.Column("n", typeOid=23), w.Column("t")))))
    short = _frame(w.DataRow((b"1", b"abcd")))
    assert len(short.raw) - 7 - 8 < MIN_VALUE and rows._plainRow(short.raw)
    assert rows.frame(short) == short.raw
    clean = _frame(w.DataRow((b"1", b"a longer text with no value in it at all")))
    assert rows._plainRow(clean.raw) and rows.frame(clean) == clean.raw
    long = _frame(w.DataRow((b"1", b"jane@example.com")))
    assert not rows._plainRow(long.raw)
    assert b"****@example.com" in rows.frame(long)
