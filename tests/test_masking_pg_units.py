"""PostgreSQL reply masking without a server: binary renderings, row plans, every text field."""

import struct
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker, MaskingFailed
from sealgate.protocols.postgres import _binary as b
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres.masking import RowMasker, maskRow

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
M = Masker(["credit_card", "email"], columns=["secret_*"])
CARD = 4111111111111111


def _numericBinary(d: Decimal) -> bytes:
    """What numeric_send writes for C{d} (the test's own encoder, after the server's format)."""
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = max(-exp, 0)
    s = "".join(map(str, digits))
    if exp < 0:
        s = s.rjust(-exp, "0")
    intPart, frac = (s[:len(s) + exp], s[len(s) + exp:]) if exp < 0 else (s + "0" * exp, "")
    intPart = intPart.lstrip("0")
    ip = intPart.rjust((len(intPart) + 3) // 4 * 4, "0")
    fp = frac.ljust((len(frac) + 3) // 4 * 4, "0")
    groups = [int(ip[i:i + 4]) for i in range(0, len(ip), 4)] + [int(fp[i:i + 4])
                                                                 for i in range(0, len(fp), 4)]
    weight = len(ip) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, 0x4000 if sign else 0, dscale,
                       *groups)


@SETTINGS
@given(st.integers(0, 12).flatmap(lambda p: st.decimals(
    allow_nan=False, allow_infinity=False, places=p, min_value=-10**20, max_value=10**20)))
def test_numeric_renders_as_the_server_prints_it(d):
    expected = f"{d:f}"
    if expected.startswith("-") and Decimal(expected) == 0:
        expected = expected[1:]
    assert b.toText(b.NUMERIC, _numericBinary(d)) == expected


@SETTINGS
@given(st.integers(-2**63, 2**63 - 1))
def test_int8_renders_as_the_server_prints_it(n):
    assert b.toText(b.INT8, struct.pack("!q", n)) == str(n)


def _array(elem: int, values: list[bytes | None], lower: int = 1) -> bytes:
    out = struct.pack("!iiIii", 1, any(v is None for v in values), elem, len(values), lower)
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


def _record(*fields: tuple[int, bytes | None]) -> bytes:
    out = struct.pack("!i", len(fields))
    for oid, v in fields:
        out += struct.pack("!Ii", oid, -1 if v is None else len(v)) + (v or b"")
    return out


def test_arrays_and_records_render_with_the_servers_quoting():
    assert b.toText(1009, _array(25, [b"a", b"b c", None, b"", b'q"\\', b"null"])) == \
        '{a,"b c",NULL,"",' + '"q\\"\\\\"' + ',"null"}'
    assert b.toText(1016, _array(20, [struct.pack("!q", 5)], lower=0)) == "[0:0]={5}"
    assert b.toText(b.RECORD, _record((25, b"x y"), (20, struct.pack("!q", 7)), (25, None))) == \
        '("x y",7,)'
    # A named composite's own OID is unknown, but a record says what it holds.
    assert b.toText(99999, _record((25, b"jo"),)) == "(jo)"
    with pytest.raises(b.Unknown):
        b.toText(99999, b"\x00\x01binary blob\x00\x00")


def _desc(*cols: tuple[str, int, int]) -> w.RowDescription:
    return w.RowDescription(tuple(w.Column(n, 0, 0, oid, -1, -1, fmt) for n, oid, fmt in cols))


def test_binary_int8_card_becomes_a_text_column_with_a_masked_value():
    desc = _desc(("card", b.INT8, 1), ("n", 23, 1))
    sent, row = maskRow(M, desc, w.DataRow((struct.pack("!q", CARD), struct.pack("!i", 7))))
    assert [(c.typeOid, c.format) for c in sent.columns] == [(25, 1), (23, 1)]
    assert row.values == (b"************1111", struct.pack("!i", 7))


@pytest.mark.parametrize("oid", sorted(b.TEXT_LIKE) + [b.INT8, 23, b.BYTEA, b.JSONB])
@pytest.mark.parametrize("fmt", [0, 1])
@pytest.mark.parametrize("masker", [M, Masker(columns=["secret_*"])], ids=["detectors", "names-only"])
def test_a_value_under_a_redacted_name_is_redacted_whole_whatever_its_type(oid, fmt, masker):
    """A text column is the usual case (an ssn kept as text): it is no less redacted than a number."""
    value = b"078-05-1120"  # a value no detector finds: only the name redacts it
    desc = _desc(("secret_ssn", oid, fmt), ("plain", 25, fmt))
    sent, row = maskRow(masker, desc, w.DataRow((value, b"078-05-1120")))
    assert row.values == (b"********", b"078-05-1120")
    # what was declared parses '********': text, or the type itself when that is text already
    assert sent.columns[0].typeOid == 25 and sent.columns[1].typeOid == 25
    # and on the relay's path, with its plain-row shortcut (short rows pass unread)
    rm = RowMasker(masker)
    rm.frame(w.Frame(ord("T"), desc.encode()))
    short = w.DataRow((b"x", None)).encode()
    assert w.decodeFrame(w.Frame(ord("D"), rm.frame(w.Frame(ord("D"), short))), False).values[0] == b"********"


def test_text_int8_and_numeric_are_declared_text_only_with_the_card_detector():
    desc = _desc(("a", b.INT8, 0), ("b", b.NUMERIC, 0))
    sent, row = maskRow(M, desc, w.DataRow((b"4111111111111111", b"4111111111111111.00")))
    assert [c.typeOid for c in sent.columns] == [25, 25]
    assert row.values == (b"************1111", b"************1111.00")
    emailOnly = Masker(["email"])
    assert maskRow(emailOnly, desc, w.DataRow((b"1", b"2")))[0] is desc


def test_binary_arrays_records_json_and_bytea():
    cardText = b"4111 1111 1111 1111"
    desc = _desc(("t", 1009, 1), ("r", b.RECORD, 1), ("j", b.JSONB, 1), ("y", b.BYTEA, 1),
                 ("h", b.BYTEA, 0), ("k", b.JSON, 0))
    values = (_array(25, [cardText]), _record((20, struct.pack("!q", CARD))),
              b'\x01{"n": 4111111111111111}', b"raw " + cardText, b"\\x" + cardText.hex().encode(),
              b'{"mail": "jane@example.com"}')
    sent, row = maskRow(M, desc, w.DataRow(values))
    # text[] keeps its type (masked element by element); the record becomes text.
    assert [c.typeOid for c in sent.columns] == [1009, 25, b.JSONB, b.BYTEA, b.BYTEA, b.JSON]
    t, r, j, y, h, k = row.values
    assert t == _array(25, [b"**** **** **** 1111"]) and r == b"(************1111)"
    assert j == b'\x01{"n": "************1111"}'           # still JSON: the number became a string
    assert y == b"raw **** **** **** 1111"
    assert bytes.fromhex(h[2:].decode()) == b"**** **** **** 1111"
    assert k == b'{"mail": "****@example.com"}'


def test_unknown_binary_types_text_like_masked_else_by_unknown_content():
    desc = _desc(("e", 70001, 1), ("h", 70002, 1))
    sent, row = maskRow(M, desc, w.DataRow((b"jane@example.com", None)))
    assert row.values == (b"****@example.com", None) and sent is desc
    blob = b"\x00\x00\x00\x02\x00\x01geometry\x00\x00\x00\x104111111111111111"
    with pytest.raises(MaskingFailed, match="unknown_content"):
        maskRow(M, desc, w.DataRow((None, blob)))
    assert maskRow(Masker(["credit_card"], unknownContent="pass"), desc,
                   w.DataRow((None, blob)))[1].values[1] == blob


def test_redacted_names_and_masked_column_names():
    desc = _desc(("secret_num", b.INT8, 1), ("jane@example.com", 25, 0))
    sent, row = maskRow(M, desc, w.DataRow((struct.pack("!q", 5), b"x")))
    assert sent.columns[0].typeOid == 25 and sent.columns[1].name == "****@example.com"
    assert row.values == (b"********", b"x")


def _frame(msg) -> w.Frame:
    raw = msg.encode()
    return w.Frame(raw[0], raw)


def _decode(raw: bytes):
    return w.decodeFrame(w.Frame(raw[0], raw), False)


def test_every_text_field_of_every_backend_message():
    rows = RowMasker(M)
    fields = tuple((k, "jane@example.com") for k in "SVCMDHWsctdnqFR")
    out = _decode(rows.frame(_frame(w.NoticeResponse(fields))))
    assert dict(out.fields)["S"] == "jane@example.com" and dict(out.fields)["C"] == "jane@example.com"
    assert all(v == "****@example.com" for k, v in out.fields if k not in "SVC")
    assert rows.fields(fields)[3] == ("M", "****@example.com")
    assert _decode(rows.frame(_frame(w.ParameterStatus("application_name", "jane@example.com")))
                   ).value == "****@example.com"
    n = _decode(rows.frame(_frame(w.NotificationResponse(1, "jane@example.com", "4111111111111111"))))
    assert (n.channel, n.payload) == ("****@example.com", "************1111")
    v = _decode(rows.frame(_frame(w.FunctionCallResponse(b"card 4111111111111111"))))
    assert v.value == b"card ************1111"


def test_binary_copy_goes_by_unknown_content():
    sealed = []
    rows = RowMasker(M, lambda kind, **fields: sealed.append((kind, fields)))
    refusal = _decode(rows.frame(_frame(w.CopyOutResponse(1, (1,)))))
    assert isinstance(refusal, w.ErrorResponse) and refusal.get("C") == "0A000"
    assert "binary COPY" in refusal.get("M") and sealed[0][0] == "output_refused"
    # The backend's data, CopyDone and CommandComplete are dropped; then the session goes on.
    for msg in (w.CopyData(b"PGCOPY\n\xff\r\n\x004111111111111111"), w.CopyDone(),
                w.CommandComplete("COPY 1")):
        assert rows.frame(_frame(msg)) == b""
    done = _frame(w.CommandComplete("SELECT 1"))
    assert rows.frame(done) == done.raw
    passing = RowMasker(Masker(["credit_card"], unknownContent="pass"))
    start = _frame(w.CopyOutResponse(1, (1,)))
    assert passing.frame(start) == start.raw
    data = _frame(w.CopyData(b"PGCOPY\n\xff\r\n\x004111111111111111"))
    assert passing.frame(data) == data.raw


def test_named_composites_and_their_arrays_are_masked_in_place_in_binary():
    comp = _record((25, b"jane@example.com"), (23, struct.pack("!i", 7)))
    arr = struct.pack("!iiIii", 1, 0, 70005, 1, 1) + struct.pack("!i", len(comp)) + comp
    desc = _desc(("p", 70005, 1), ("ps", 70006, 1))
    sent, row = maskRow(M, desc, w.DataRow((comp, arr)))
    assert sent is desc      # the types stay: the values stay binary composites
    masked = _record((25, b"****@example.com"), (23, struct.pack("!i", 7)))
    assert row.values[0] == masked and row.values[1].endswith(masked)
    # A card in an int8 field cannot be masked and stay an int8: refused.
    with pytest.raises(MaskingFailed, match="cannot stay binary"):
        maskRow(M, desc, w.DataRow((_record((20, struct.pack("!q", CARD))), None)))


def test_a_replication_stream_is_refused_on_a_masked_session():
    with pytest.raises(MaskingFailed, match="replication"):
        RowMasker(M).frame(_frame(w.CopyBothResponse(1, ())))


def test_hstore_in_binary_is_masked_key_by_key_and_stays_hstore():
    def hstore(*pairs):
        out = struct.pack("!i", len(pairs))
        for k, v in pairs:
            out += struct.pack("!i", len(k)) + k
            out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
        return out
    value = hstore((b"card", b"4111111111111111"), (b"jane@example.com", None))
    sent, row = maskRow(M, _desc(("h", 70010, 1)), w.DataRow((value,)))
    assert row.values[0] == hstore((b"card", b"************1111"), (b"****@example.com", None))


def _result(rows: RowMasker, desc, values_list, end) -> bytes:
    """What the client gets for a RowDescription, rows and the message that ends them."""
    out = rows.frame(_frame(desc))
    for values in values_list:
        out += rows.frame(_frame(w.DataRow(values)))
    return out + (rows.frame(_frame(end)) if end.encode()[:1] in b"TDNAHdcCSVW"
                  else rows.release(end.encode()[0]) + end.encode())


def _messages(data: bytes) -> list:
    r = w.Reader(frontend=False)
    r.receive_data(data)
    out = []
    while (f := r.next_event()) is not w.NEED_DATA:
        out.append(w.decodeFrame(f, False))
    return out


@SETTINGS
@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), max_size=20), st.booleans())
def test_numbers_keep_their_type_unless_a_value_in_the_result_is_masked(numbers, binary):
    desc = _desc(("n", b.INT8, int(binary)))
    encode = (lambda n: struct.pack("!q", n)) if binary else (lambda n: str(n).encode())
    values = [(encode(n),) for n in numbers]
    got = _messages(_result(RowMasker(M), desc, values, w.CommandComplete("SELECT")))
    hit = any(M.maskText(str(n)) != str(n) for n in numbers)
    assert got[0].columns[0].typeOid == (25 if hit else b.INT8)
    assert len(got) == len(numbers) + 2 and isinstance(got[-1], w.CommandComplete)
    for n, row in zip(numbers, got[1:-1], strict=True):
        assert row.values[0] == (M.maskText(str(n)).encode() if hit else encode(n))


def test_a_result_with_no_rows_yet_or_too_big_to_hold_is_declared_text():
    desc = _desc(("n", b.INT8, 0))
    # RowDescription answering Describe: the rows come later, so no evidence.
    got = _messages(_result(RowMasker(M), desc, [], w.ReadyForQuery("I")))
    assert got[0].columns[0].typeOid == 25
    rows = RowMasker(M)
    out = rows.frame(_frame(desc))
    while out == b"":
        out = rows.frame(_frame(w.DataRow((b"1" * 18,))))
    assert _messages(out)[0].columns[0].typeOid == 25 and len(out) > 128 * 1024


def test_a_hit_after_the_types_were_sent_is_refused():
    rows = RowMasker(M)
    desc = _desc(("n", b.INT8, 0))
    assert _messages(_result(rows, desc, [(b"7",)], w.CommandComplete("SELECT 1")))[0] \
        .columns[0].typeOid == b.INT8
    # A portal of the same statement executed again without a new RowDescription.
    assert rows.frame(_frame(w.DataRow((b"8",)))) == w.DataRow((b"8",)).encode()
    with pytest.raises(MaskingFailed, match="cast the column to text"):
        rows.frame(_frame(w.DataRow((str(CARD).encode(),))))


def test_hex_bytea_inside_text_is_masked_on_its_bytes():
    from sealgate.protocols.postgres.masking import maskHexRuns

    raw = f"raw {CARD} jane@example.com".encode()
    line = b"1\t\\x" + raw.hex().encode() + b"\t{\"\\\\x" + raw.hex().encode() + b"\"}\n"
    masked = maskHexRuns(M, line)
    want = b"raw ************1111 ****@example.com".hex().encode()
    assert masked.count(want) == 2 and len(masked) == len(line)
    assert maskHexRuns(M, b"\\x00ff00ff00ff00ff") == b"\\x00ff00ff00ff00ff"


def test_a_shape_described_before_its_rows_stays_text_for_the_session():
    rows = RowMasker(M)
    # Describe of a cursor's portal: the formats say text, the rows come later.
    assert _messages(_result(rows, _desc(("n", b.INT8, 0)), [], w.ReadyForQuery("T")))[0] \
        .columns[0].typeOid == 25
    # Its FETCH in binary, no value masked: still text, as the client decodes it with that description.
    got = _messages(_result(rows, _desc(("n", b.INT8, 1)), [(struct.pack("!q", 7),)],
                            w.CommandComplete("FETCH 1")))
    assert got[0].columns[0].typeOid == 25 and got[1].values == (b"7",)
    # Another shape is decided by its own rows.
    other = _messages(_result(rows, _desc(("m", b.INT8, 1)), [(struct.pack("!q", 7),)],
                              w.CommandComplete("SELECT 1")))
    assert other[0].columns[0].typeOid == b.INT8


def test_rows_with_no_description_in_their_exchange_are_masked_as_text_or_refused():
    rows = RowMasker(M)
    # Describe of a statement, then (another exchange) BindComplete and rows with no RowDescription.
    rows.frame(_frame(_desc(("c", 25, 0), ("n", b.INT8, 0))))
    assert rows.passing(ord("Z")).startswith(b"T")
    assert rows.passing(None) == b""  # BindComplete
    text = rows.frame(_frame(w.DataRow((b"jane@example.com", str(CARD).encode(), None))))
    assert _decode(text).values == (b"****@example.com", b"************1111", None)
    with pytest.raises(MaskingFailed, match="described in an earlier exchange"):
        rows.frame(_frame(w.DataRow((b"x", struct.pack("!q", CARD)))))


def test_rows_of_a_statement_described_earlier_use_its_columns_and_bound_formats():
    from sealgate.protocols.postgres._described import Descriptions

    d = Descriptions()
    cols = _desc(("card", 25, 0), ("n", b.INT8, 0))
    for msg in (w.Parse("a", "q"), w.Describe("S", "a"), w.Sync()):
        d.fromClient(msg.encode()[0], msg.encode())
    for t in b"1t":
        d.reply(t)
    d.described(cols)
    d.reply(ord("Z"))
    # An Execute that fails, then (after Sync) one that runs: the error skips to the Sync.
    for msg in (w.Bind("", "a", resultFormats=(1,)), w.Execute(""), w.Bind("", "gone"), w.Execute(""),
                w.Sync(), w.Bind("", "a", resultFormats=(0, 1)), w.Execute(""), w.Sync()):
        d.fromClient(msg.encode()[0], msg.encode())
    d.reply(ord("2"))
    assert [c.format for c in d.forRows().columns] == [1, 1]
    d.reply(ord("C"))
    d.reply(ord("2"))
    assert d.forRows() is None  # never described
    d.reply(ord("E"))
    d.reply(ord("Z"))
    d.reply(ord("2"))
    assert [c.format for c in d.forRows().columns] == [0, 1]
    d.reply(ord("C"))
    d.reply(ord("Z"))
    assert not d.queue
    # Parsing the name again forgets its old columns.
    for msg in (w.Parse("a", "other"), w.Bind("", "a"), w.Execute(""), w.Sync()):
        d.fromClient(msg.encode()[0], msg.encode())
    d.reply(ord("1"))
    assert d.forRows() is None


@pytest.mark.parametrize("fmt", [0, 1])
def test_copy_out_is_refused_where_names_are_redacted_unless_passed(fmt):
    """COPY carries no column names, so a redacted column would go out whole: refused, sealed, and dropped."""
    audited = []
    rm = RowMasker(Masker(columns=["secret_*"]), audit=lambda kind, **f: audited.append((kind, f)))
    head = w.CopyOutResponse(fmt, (fmt,)).encode()
    rows = w.CopyData(b"078-05-1120\n").encode() + w.CopyDone().encode() + w.CommandComplete("COPY 1").encode()
    refused = rm.frame(w.Frame(ord("H"), head))
    sent = [rm.frame(w.Frame(r[0], r)) for r in _split(rows)]
    assert ("C", "0A000") in w.decodeFrame(w.Frame(ord("E"), refused), False).fields
    assert sent == [b"", b"", b""] and [k for k, _ in audited] == ["output_refused"]
    ready = w.ReadyForQuery("I").encode()
    assert rm.frame(w.Frame(ord("Z"), ready)) == ready  # the session goes on
    passing = RowMasker(Masker(columns=["secret_*"], unknownContent="pass"))
    assert passing.frame(w.Frame(ord("H"), head)) == head
    assert [passing.frame(w.Frame(r[0], r)) for r in _split(rows)] == _split(rows)


def _split(run: bytes) -> list[bytes]:
    """A run of backend messages, one by one, as the wire reader cuts them."""
    r = w.Reader(frontend=False)
    r.receive_data(run)
    return [f.raw for f in iter(r.next_event, w.NEED_DATA)]
