"""COPY OUT with detectors, a run of CopyData at a time: the same bytes as masking row by row."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.chain.masking import MaskingInterceptor
from sealgate.config import MaskingConfig
from sealgate.masking import Masker
from sealgate.masking._detectors import DETECTORS, suspect
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._relay import ReplyMasker
from sealgate.protocols.postgres.masking import RowMasker
from tests.test_pg_relay import relay

ALL = Masker(list(DETECTORS))
CARD_EMAIL = Masker(["credit_card", "email"])

#: Pieces that make up (or nearly make up) every detector's values, so a
#: generated text often holds a hit, a near miss or one split by a boundary.
_PIECES = ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "jane@example.com",
           "@", "a@b.cd", "123-45-6789", "DE89370400440532013000", "+1 212 555 0100", "(212)",
           "AKIAIOSFODNN7EXAMPLE", "secret", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
           "-----BEGIN PRIVATE KEY-----", "\\x", "\\x4142", "0", "12", " ", "-", ".", "\t", "\n",
           "\u00e9", "\udcff", "row ", "A", "ß", "\\x" + "jane@example.com".encode().hex()]
_text = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(_text, st.integers(min_value=0, max_value=300))
def test_a_text_suspect_calls_clean_is_clean_for_every_detector(text, pad):
    # The lemma the batch rests on, for short texts and for long ones (past
    # the 256 characters under which spans() itself asks suspect first).
    for t in (text, "x" * pad + text):
        if not suspect(t, 0):
            assert ALL.maskText(t) == t


@settings(max_examples=200, deadline=None)
@given(st.lists(_text, max_size=6), st.integers(min_value=0, max_value=5))
def test_a_row_suspect_finds_is_found_in_any_run_holding_it(texts, i):
    if texts and suspect(texts[i % len(texts)], 0):
        assert suspect("".join(texts), 0)


def _copyStart(text: bool = True) -> w.Frame:
    raw = w.CopyOutResponse(0 if text else 1, (0 if text else 1,)).encode()
    return w.Frame(raw[0], raw)


def _rowByRow(masker, payloads, text=True) -> bytes:
    """What the relay gave before: every CopyData split out and masked on its own."""
    m = ReplyMasker(RowMasker(masker), 1 << 20)
    frames = [w.Frame(w.CopyData(p).encode()[0], w.CopyData(p).encode()) for p in payloads]
    replies = [_copyStart(text), *frames]
    return m(b"".join(f.raw for f in replies), {"replies": replies})


def _asRun(masker, payloads, text=True) -> bytes:
    m = ReplyMasker(RowMasker(masker), 1 << 20)
    run = b"".join(w.CopyData(p).encode() for p in payloads)
    return m(_copyStart(text).raw + run, {"replies": [_copyStart(text), run] if run else [_copyStart(text)]})


_rows = st.lists(_text.map(lambda t: (t + "\n").encode("utf-8", "surrogateescape")), max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows, st.sampled_from([ALL, CARD_EMAIL]), st.booleans())
def test_a_run_of_copy_rows_is_masked_exactly_as_row_by_row(payloads, masker, text):
    assert _asRun(masker, payloads, text) == _rowByRow(masker, payloads, text)


def test_a_hit_in_one_row_of_a_clean_run_is_masked_and_no_row_runs_into_the_next():
    payloads = [b"1\trow 1\n", b"2\tjane@example.com\n", b"3\t4111111111111111\n", b"4\trow 4\n",
                b"4111111", b"111111111\n"]  # a card split over two CopyData is not one value
    out = _asRun(CARD_EMAIL, payloads)
    assert out == _rowByRow(CARD_EMAIL, payloads)
    assert b"****@example.com" in out and b"************1111" in out and b"4111111111111111" not in out
    assert b"4111111" in out and b"111111111\n" in out


def test_copy_out_through_the_relay_masks_its_rows_and_records_what_the_client_got():
    c, client, _backend, s = relay([MaskingInterceptor(Masker.fromConfig(
        MaskingConfig(detectors=("credit_card", "email"))))])
    c.dataReceived(w.Query("COPY t TO STDOUT").encode())
    clean = b"".join(w.CopyData(f"{i}\trow {i}\n".encode()).encode() for i in range(500))
    hit = w.CopyData(b"501\tjane@example.com 4111111111111111\n").encode()
    c.fromBackend(w.CopyOutResponse(0, (0, 0)).encode() + clean[:3001])
    c.fromBackend(clean[3001:] + hit)
    c.fromBackend(clean + w.CopyDone().encode() + w.CommandComplete("COPY 1001").encode()
                  + w.ReadyForQuery("I").encode())
    got = client.value()
    assert clean + w.CopyData(b"501\t****@example.com ************1111\n").encode() + clean in got
    assert b"jane@" not in got and b"4111111111111111" not in got
    assert got.endswith(w.ReadyForQuery("I").encode())
    assert s.recording.bytesTo().endswith(got)


_skeletons = st.lists(st.sampled_from(["0", "00", "0000", "s", "A", "AA", "+", "(", ")", "_", "a"]),
                      max_size=40).map(lambda parts: "".join(parts).encode())


@settings(max_examples=500, deadline=None)
@given(_skeletons)
def test_the_shape_list_finds_what_the_shape_regex_finds(sk):
    from sealgate.masking._detectors import _SHAPES, shapesIn
    assert shapesIn(sk) == (_SHAPES.search(sk) is not None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=300),
       st.lists(st.tuples(st.integers(min_value=0, max_value=300), _rows.filter(bool)), max_size=4))
def test_a_long_run_with_rare_values_is_halved_and_masked_exactly_as_row_by_row(n, inserts):
    payloads = [f"{i}\trow {i}\n".encode() for i in range(n)]
    for at, rows in inserts:
        payloads[at:at] = rows
    assert _asRun(CARD_EMAIL, payloads) == _rowByRow(CARD_EMAIL, payloads)


def _maskRun(payloads: list) -> tuple[bytes, bytes, list]:
    """A COPY run of C{payloads} through L{RowMasker.maskCopyRun}: (run, out, what went row by row)."""
    calls = []
    rows = RowMasker(CARD_EMAIL)
    m = ReplyMasker(rows, 1 << 20)
    rows.frame(_copyStart())
    run = b"".join(w.CopyData(p).encode() for p in payloads)

    def byMessage(data):
        calls.append(data)
        return m._byMessage(data)

    out = rows.maskCopyRun(run, byMessage)
    assert out == _rowByRow(CARD_EMAIL, payloads)[len(_copyStart().raw):]
    return run, out, calls


def test_the_halving_passes_the_clean_halves_whole():
    payloads = [f"{i}\trow {i}\n".encode() for i in range(1000)]
    payloads[500] = b"500\tjane@example.com\n"
    run, _, calls = _maskRun(payloads)
    assert sum(len(c) for c in calls) < len(run) // 30  # only the piece around the value, row by row


def test_a_run_with_values_near_both_ends_is_masked_row_by_row_at_once():
    run, out, calls = _maskRun([f"{i}\tjane{i}@example.com\n".encode() for i in range(1000)])
    assert calls == [run] and b"jane1@" not in out
