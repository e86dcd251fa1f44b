"""The PostgreSQL v3 codec: round trips for every message, framing errors, fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.protocols.postgres import _wire as w

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i16 = st.integers(-(2**15), 2**15 - 1)
value = st.none() | st.binary(max_size=40)
small = dict(max_size=5)
fields = st.lists(st.tuples(st.sampled_from("SVCMDHPpqWsctdnFLR"), text), **small).map(tuple)

FRONTEND_MESSAGES = [
    st.builds(w.Query, text),
    st.builds(w.Parse, text, text, st.lists(u32, **small).map(tuple)),
    st.builds(w.Bind, text, text, st.lists(i16, **small).map(tuple),
              st.lists(value, **small).map(tuple), st.lists(i16, **small).map(tuple)),
    st.builds(w.Describe, st.sampled_from("SP"), text),
    st.builds(w.Close, st.sampled_from("SP"), text),
    st.builds(w.Execute, text, i32),
    st.builds(w.FunctionCall, u32, st.lists(i16, **small).map(tuple),
              st.lists(value, **small).map(tuple), i16),
    st.builds(w.CopyData, st.binary(max_size=60)),
    st.builds(w.CopyDone), st.builds(w.CopyFail, text),
    st.builds(w.Sync), st.builds(w.Flush), st.builds(w.Terminate),
    st.builds(w.PasswordMessage, st.binary(max_size=60)),
]
BACKEND_MESSAGES = [
    st.builds(w.Authentication, st.sampled_from([0, 3, 5, 10, 11, 12]), st.binary(max_size=40)),
    st.builds(w.BackendKeyData, u32, u32),
    st.builds(w.ParseComplete), st.builds(w.BindComplete), st.builds(w.CloseComplete),
    st.builds(w.NoData), st.builds(w.EmptyQueryResponse), st.builds(w.PortalSuspended),
    st.builds(w.CopyDone), st.builds(w.CopyData, st.binary(max_size=60)),
    st.builds(w.CommandComplete, text),
    st.builds(w.CopyInResponse, st.integers(0, 1), st.lists(i16, **small).map(tuple)),
    st.builds(w.CopyOutResponse, st.integers(0, 1), st.lists(i16, **small).map(tuple)),
    st.builds(w.CopyBothResponse, st.integers(0, 1), st.lists(i16, **small).map(tuple)),
    st.builds(w.DataRow, st.lists(value, max_size=8).map(tuple)),
    st.builds(w.ErrorResponse, fields), st.builds(w.NoticeResponse, fields),
    st.builds(w.FunctionCallResponse, value),
    st.builds(w.NegotiateProtocolVersion, u32, st.lists(text, **small).map(tuple)),
    st.builds(w.NotificationResponse, u32, text, text),
    st.builds(w.ParameterDescription, st.lists(u32, **small).map(tuple)),
    st.builds(w.ParameterStatus, text, text),
    st.builds(w.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(w.RowDescription, st.lists(st.builds(
        w.Column, text, u32, i16, u32, i16, i32, i16), **small).map(tuple)),
]
STARTUP_MESSAGES = [
    st.builds(w.StartupMessage, st.lists(st.tuples(text.filter(bool), text), **small).map(tuple)),
    st.builds(w.SSLRequest), st.builds(w.GSSENCRequest), st.builds(w.CancelRequest, u32, u32),
]


def readAll(reader, data, split):
    """Feed data in two pieces and collect every event."""
    events = []
    for chunk in (data[:split], data[split:]):
        reader.receive_data(chunk)
        while (e := reader.next_event()) is not w.NEED_DATA:
            events.append(e)
    return events


# One test per direction drawing from every message strategy: pytest-twisted
# wraps a @given test once per parametrized item, so parametrizing nests it.
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_frontend_messages_round_trip(data):
    msgs = data.draw(st.lists(st.one_of(FRONTEND_MESSAGES), min_size=1, max_size=4))
    raw = b"".join(m.encode() for m in msgs)
    split = data.draw(st.integers(0, len(raw)))
    frames = readAll(w.Reader(frontend=True), raw, split)
    assert [w.decodeFrame(f, True) for f in frames] == msgs
    assert b"".join(f.raw for f in frames) == raw


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_backend_messages_round_trip(data):
    msgs = data.draw(st.lists(st.one_of(BACKEND_MESSAGES), min_size=1, max_size=4))
    raw = b"".join(m.encode() for m in msgs)
    split = data.draw(st.integers(0, len(raw)))
    frames = readAll(w.Reader(frontend=False), raw, split)
    assert [w.decodeFrame(f, False) for f in frames] == msgs


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_startup_packets_round_trip(data):
    msg = data.draw(st.one_of(STARTUP_MESSAGES))
    raw = msg.encode() + w.Query("SELECT 1").encode()
    frames = readAll(w.Reader(frontend=True, startup=True), raw, data.draw(st.integers(0, len(raw))))
    assert w.decodeFrame(frames[0], True) == msg
    assert w.decodeFrame(frames[1], True) == w.Query("SELECT 1")


def test_strategies_cover_every_message_type():
    def types(strategies):
        return {s.wrapped_strategy.target.TYPE for s in strategies}

    assert types(FRONTEND_MESSAGES) == set(w.FRONTEND)
    assert types(BACKEND_MESSAGES) == set(w.BACKEND)


def test_password_message_helpers():
    assert w.PasswordMessage.cleartext("tok").password() == "tok"
    m = w.PasswordMessage.saslInitial("SCRAM-SHA-256", b"n,,n=,r=x")
    assert m.parseSaslInitial() == ("SCRAM-SHA-256", b"n,,n=,r=x")
    assert w.Authentication(10, b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0").mechanisms() == [
        "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]
    assert w.CommandComplete("SELECT 12").rows() == 12
    assert w.CommandComplete("CREATE TABLE").rows() is None


def test_ssl_answer_is_one_untagged_byte():
    r = w.Reader(frontend=False)
    r.expectSSLAnswer()
    r.receive_data(b"S" + w.ReadyForQuery("I").encode())
    assert r.next_event() == w.SSLAnswer(True)
    assert w.decodeFrame(r.next_event(), False) == w.ReadyForQuery("I")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(BACKEND_MESSAGES), min_size=1, max_size=12),
       st.integers(1, 64), st.sets(st.sampled_from(sorted(w.BACKEND_TYPES))))
def test_drain_keeps_every_byte_in_order(msgs, chunk, stop):
    """drain's raw runs plus stopped frames are exactly the input, in order."""
    raw = b"".join(m.encode() for m in msgs)
    r = w.Reader(frontend=False)
    table = w.makeTable(w.BACKEND_TYPES, stop)
    out = []
    for i in range(0, len(raw), chunk):
        r.receive_data(raw[i:i + chunk])
        out.extend(r.drain(table))
    assert b"".join(x.raw if isinstance(x, w.Frame) else x for x in out) == raw
    stopped = [x for x in out if isinstance(x, w.Frame)]
    assert [bytes((f.type,)) for f in stopped] == [m.TYPE for m in msgs if m.TYPE in stop]


@pytest.mark.parametrize("raw, message", [
    (b"Q\x00\x00\x00\x03", "length 3 out of range"),
    (b"Q\xff\xff\xff\xff", "out of range"),
    (b"\x01\x00\x00\x00\x04", "unknown frontend message type"),
])
def test_bad_framing_is_a_protocol_error(raw, message):
    r = w.Reader(frontend=True)
    r.receive_data(raw)
    with pytest.raises(w.ProtocolError, match=message):
        r.next_event()


def test_message_over_configured_maximum_is_refused():
    r = w.Reader(frontend=True, maxMessage=1000)
    r.receive_data(w.Query("x" * 2000).encode()[:10])
    with pytest.raises(w.ProtocolError, match="out of range"):
        r.drain(w.frontendTable)


def test_type_valid_only_in_the_other_direction_is_refused():
    r = w.Reader(frontend=False)
    r.receive_data(w.Query("SELECT 1").encode())
    with pytest.raises(w.ProtocolError, match="unknown backend message type"):
        r.next_event()


def test_startup_packet_too_long_is_refused():
    r = w.Reader(frontend=True, startup=True)
    r.receive_data(b"\x00\x01\x00\x00")
    with pytest.raises(w.ProtocolError, match="startup packet"):
        r.next_event()


def test_unsupported_protocol_version_is_refused():
    with pytest.raises(w.ProtocolError, match="unsupported protocol version 2.0"):
        w.decodeStartup(b"\x00\x02\x00\x00\x00")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.booleans(), st.booleans())
def test_fuzz_random_bytes_give_only_protocol_errors_or_need_data(data, frontend, startup):
    r = w.Reader(frontend=frontend, startup=startup, maxMessage=4096)
    r.receive_data(data)
    try:
        while (e := r.next_event()) is not w.NEED_DATA:
            w.decodeFrame(e, frontend)
            if isinstance(e, w.Frame) and e.type == ord("p"):
                w.PasswordMessage(e.body).parseSaslInitial()
    except w.ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_drain(data, frontend):
    r = w.Reader(frontend=frontend, maxMessage=4096)
    r.receive_data(data)
    table = w.makeTable(w.FRONTEND_TYPES if frontend else w.BACKEND_TYPES, [b"D", b"E"])
    try:
        for x in r.drain(table):
            if isinstance(x, w.Frame):
                w.decodeFrame(x, frontend)
    except w.ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(w.FRONTEND_TYPES) + sorted(w.BACKEND_TYPES)), st.booleans(),
       st.binary(max_size=64))
def test_any_body_decodes_as_a_message_or_is_a_protocol_error(typ, frontend, body):
    table = w.FRONTEND if frontend else w.BACKEND
    if typ not in table:
        typ = next(iter(table))
    try:
        msg = w.decode(table, typ[0], body)
    except w.ProtocolError:
        return
    assert isinstance(msg, table[typ])


def _tagged(typ, body):
    return typ + len(body + b"....").to_bytes(4, "big") + body


#: One body per frontend type the relay reads, cut short or missing its terminator.
_MALFORMED = {
    "Bind, unterminated portal": _tagged(b"B", b"portal"),
    "Bind, unterminated statement": _tagged(b"B", b"\x00stmt"),
    "Bind, short parameter count": _tagged(b"B", b"\x00\x00\x00"),
    "Bind, overlong parameter": _tagged(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09ab\x00\x00"),
    "Execute, unterminated portal": _tagged(b"E", b"portal"),
    "Execute, no row count": _tagged(b"E", b"\x00"),
    "Close, unterminated name": _tagged(b"C", b"Sname"),
    "Close, no kind": _tagged(b"C", b""),
    "Parse, unterminated query": _tagged(b"P", b"\x00SELECT 1"),
    "Query, unterminated": _tagged(b"Q", b"SELECT 1"),
    "Query, embedded NUL": _tagged(b"Q", b"SELECT 1\x00DROP TABLE t\x00"),
    "FunctionCall, short": _tagged(b"F", b"\x00\x00"),
    "Sync, with a body": _tagged(b"S", b"x"),
    "Terminate, with a body": _tagged(b"X", b"x"),
}


@pytest.mark.parametrize("raw", list(_MALFORMED.values()), ids=list(_MALFORMED))
def test_drain_refuses_a_malformed_message_it_hands_back(raw):
    r = w.Reader(frontend=True)
    r.receive_data(w.Sync().encode() + raw)
    with pytest.raises(w.ProtocolError, match="malformed"):
        r.drain(w.makeTable(w.FRONTEND_TYPES, [raw[:1], b"S"]))


def test_drain_refuses_a_malformed_backend_reply():
    r = w.Reader(frontend=False)
    r.receive_data(_tagged(b"Z", b""))
    with pytest.raises(w.ProtocolError, match="malformed ReadyForQuery"):
        r.drain(w.makeTable(w.BACKEND_TYPES, [b"Z"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(w.FRONTEND_TYPES)), st.binary(max_size=24)),
                max_size=6), st.booleans())
def test_every_frame_drain_hands_back_decodes(messages, frontend):
    table = w.FRONTEND if frontend else w.BACKEND
    types = sorted(table)
    r = w.Reader(frontend=frontend)
    r.receive_data(b"".join(_tagged(types[t[0] % len(types)], body) for t, body in messages))
    try:
        out = r.drain(w.makeTable(types, types))
    except w.ProtocolError:
        return
    for f in out:
        w.decodeFrame(f, frontend)  # never raises: drain checked it
