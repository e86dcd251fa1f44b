"""The HTTP plugin's sans-IO pieces: credentials, header rules, the recorded-stream reader, body framing, WebSocket frames."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealgate.masking import Masker
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._body import bodyMode


def test_bearer_token_is_the_credential():
    assert _wire.credentialFrom(b"Bearer abc.def.ghi") == "abc.def.ghi"
    assert _wire.credentialFrom(b"bearer   sgk_123  ") == "sgk_123"


def test_basic_auth_password_is_the_credential():
    value = b"Basic " + base64.b64encode(b"ci:sgk_secret:with:colons")
    assert _wire.credentialFrom(value) == "sgk_secret:with:colons"


@pytest.mark.parametrize("value", [
    None, b"", b"Bearer", b"Bearer ", b"Basic !!!", b"Basic " + base64.b64encode(b"nouser"),
    b"Basic " + base64.b64encode(b"user:"), b"Digest x=1", b"Basic " + base64.b64encode(b"\xff:\xfe"),
])
def test_malformed_or_missing_credentials_are_none(value):
    assert _wire.credentialFrom(value) is None


def test_hop_by_hop_includes_headers_named_in_connection():
    drop = _wire.hopByHop([b"keep-alive, X-Private", b" Upgrade "])
    assert {b"x-private", b"upgrade", b"keep-alive", b"transfer-encoding", b"te"} <= drop
    assert b"content-type" not in drop


def test_redact_head_replaces_only_secret_values():
    head = b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok\r\nCookie: sid=1\r\nX-Key: k"
    out = _wire.redactHead(head, frozenset({b"authorization", b"cookie"}))
    assert b"tok" not in out and b"sid=1" not in out
    assert b"Host: a" in out and b"X-Key: k" in out and out.count(b"[redacted]") == 2


_token = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_value = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ;=/", max_size=20).map(
    lambda s: s.strip().encode())
_body = st.binary(max_size=3000)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


def _drain(reader, pieces):
    events = []
    for piece in pieces:
        reader.receive_data(piece)
        while (ev := reader.next_event()) is not _wire.NEED_DATA:
            events.append(ev)
    return events


def _message(first, headers, body, chunked, sizes):
    if chunked:
        headers = headers + [(b"Transfer-Encoding", b"chunked")]
        payload, i = b"", 0
        for s in sizes or [len(body)]:
            part = body[i: i + max(s, 1)]
            if part:
                payload += _wire.chunk(part)
            i += max(s, 1)
        if i < len(body):
            payload += _wire.chunk(body[i:])
        payload += _wire.LAST_CHUNK
    else:
        headers = headers + [(b"Content-Length", b"%d" % len(body))]
        payload = body
    return _wire.serializeHead(first, headers) + payload


@given(st.lists(st.tuples(st.sampled_from([b"GET", b"POST", b"PUT"]), _body, st.booleans(),
                          st.lists(st.integers(1, 500), max_size=5)), min_size=1, max_size=4),
       st.lists(st.tuples(_token, _value), max_size=4),
       st.lists(st.integers(0, 10000), max_size=8))
def test_request_stream_round_trips_in_any_pieces(messages, headers, cuts):
    stream = b"".join(_message(m + b" /p?q=1 HTTP/1.1", [(b"x-" + n, v) for n, v in headers],
                               body, chunked, sizes)
                      for m, body, chunked, sizes in messages)
    events = _drain(_wire.MessageReader(responses=False), _split(stream, cuts))
    heads = [e for e in events if isinstance(e, _wire.Head)]
    assert [h.method for h in heads] == [m for m, *_ in messages]
    bodies, current = [], b""
    for e in events:
        if isinstance(e, _wire.Body):
            current += e.data
        elif isinstance(e, _wire.End):
            bodies.append(current)
            current = b""
    assert bodies == [body for _, body, *_ in messages]


@given(_body, st.lists(st.integers(0, 5000), max_size=6))
def test_response_to_head_has_no_body_and_the_next_response_parses(body, cuts):
    reader = _wire.MessageReader(responses=True)
    reader.expect(b"HEAD")
    reader.expect(b"GET")
    stream = (_wire.serializeHead(b"HTTP/1.1 200 OK", [(b"Content-Length", b"999")])
              + _wire.serializeHead(b"HTTP/1.1 102 Processing", [(b"Sealgate-Ticket", b"t1")])
              + _message(b"HTTP/1.1 201 Created", [], body, False, []))
    events = _drain(reader, _split(stream, cuts))
    heads = [e.status for e in events if isinstance(e, _wire.Head)]
    assert heads == [200, 102, 201]
    assert b"".join(e.data for e in events if isinstance(e, _wire.Body)) == body


def test_switching_protocols_passes_the_rest_raw():
    reader = _wire.MessageReader(responses=True)
    reader.expect(b"GET")
    events = _drain(reader, [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi"])
    assert events[0].status == 101 and events[1] == _wire.Raw(b"\x81\x02hi")


@pytest.mark.parametrize("bad", [
    b"GET /\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
])
def test_malformed_streams_raise_protocol_error(bad):
    reader = _wire.MessageReader(responses=bad.startswith(b"HTTP"))
    with pytest.raises(_wire.ProtocolError):
        _drain(reader, [bad])


@given(st.lists(st.tuples(st.sampled_from([1, 2, 8, 9, 10]), st.binary(max_size=70000),
                          st.one_of(st.none(), st.binary(min_size=4, max_size=4))),
                min_size=1, max_size=3),
       st.lists(st.integers(0, 200000), max_size=6))
def test_websocket_frames_round_trip_masked_or_not(frames, cuts):
    stream = b"".join(_wire.wsFrame(op, payload, mask) for op, payload, mask in frames)
    events = _drain(_wire.WebSocketReader(), _split(stream, cuts))
    assert [(e.opcode, e.payload) for e in events] == [(op, p) for op, p, _ in frames]


def test_problem_body_is_rfc9457_json():
    import json

    doc = json.loads(_wire.problem(403, "Denied", "no deletes", rule="no-delete"))
    assert doc["status"] == 403 and doc["rule"] == "no-delete" and doc["title"] == "Denied"


@pytest.mark.parametrize("ctype,encoding,mode", [
    (b"application/json; charset=utf-8", None, "json"),
    (b"application/vnd.api+json", b"gzip", "json"),
    (b"multipart/form-data; boundary=x", None, "json"),
    (b"text/html", b"br", "text"),
    (b"text/plain", b"deflate", "text"),
    (b"application/yaml", None, "text"),
    (b"image/png", b"gzip", "text"),      # sniffed, then unknown_content
    (None, None, "text"),
    (b"text/plain", b"zstd", "refuse"),
    (b"image/png", b"zstd", "refuse"),
])
def test_body_mode_by_type_and_coding(ctype, encoding, mode):
    assert bodyMode(ctype, encoding) == mode


def test_undecodable_binary_passes_only_when_unknown_content_says_pass():
    assert bodyMode(b"image/png", b"zstd", Masker(["email"], unknownContent="pass")) == "pass"
    assert bodyMode(b"image/png", b"zstd", Masker(["email"])) == "refuse"


# -- body framing for the live relay --------------------------------------------


def _frame(framing, pieces):
    """Feed pieces until the body ends; (payload, raw bytes used, bytes left over)."""
    payload, used, rest = b"", b"", b""
    for piece in pieces:
        if framing.done:
            rest += piece
            continue
        out, n = framing.feed(piece)
        payload += b"".join(out)
        used += piece[:n]
        rest += piece[n:]
    return payload, used, rest


@given(_body, st.lists(st.integers(1, 700), max_size=6), st.lists(st.integers(0, 10000), max_size=8),
       st.binary(max_size=40), st.booleans())
def test_chunked_body_framing_finds_the_end_in_any_pieces(body, sizes, cuts, after, trailer):
    raw = _message(b"HTTP/1.1 200 OK", [], body, True, sizes).split(b"\r\n\r\n", 1)[1]
    if trailer:
        raw = raw[:-2] + b"X-Trailer: 1\r\n\r\n"
    framing = _framing.BodyFraming("chunked")
    payload, used, rest = _frame(framing, _split(raw + after, cuts))
    assert framing.done and payload == body
    # A relay passing the used bytes on sends the message unchanged.
    assert used == raw and rest == after


@given(_body, st.lists(st.integers(0, 10000), max_size=8), st.binary(max_size=40))
def test_length_body_framing_stops_at_the_length(body, cuts, after):
    framing = _framing.BodyFraming("length", len(body))
    payload, used, rest = _frame(framing, _split(body + after, cuts))
    assert payload == used == body and rest == after
    assert framing.done or not body


@pytest.mark.parametrize("raw", [b"zz\r\n", b"5\r\nhello!!", b"-1\r\n", b"0x5\r\nhello\r\n0\r\n\r\n",
                                 b"1" * 5000])
def test_malformed_chunked_bodies_raise_protocol_error(raw):
    with pytest.raises(_wire.ProtocolError):
        _framing.BodyFraming("chunked").feed(raw)


def test_a_body_cut_short_by_close_is_an_error_unless_close_delimited():
    framing = _framing.BodyFraming("length", 10)
    framing.feed(b"12345")
    with pytest.raises(_wire.ProtocolError):
        framing.closed()
    framing = _framing.BodyFraming("close")
    assert framing.feed(b"abc") == ([b"abc"], 3)
    framing.closed()
    assert framing.done


@pytest.mark.parametrize("headers, framing", [
    ({}, None),
    ({b"content-length": [b"0"]}, None),
    ({b"content-length": [b"12"]}, ("length", 12)),
    ({b"content-length": [b"12, 12"]}, ("length", 12)),
    ({b"transfer-encoding": [b"chunked"]}, ("chunked", 0)),
    ({b"transfer-encoding": [b"Chunked "]}, ("chunked", 0)),
])
def test_request_framing(headers, framing):
    found = _framing.requestFraming(headers)
    assert (found and (found.kind, found._left)) == framing or (found is None and framing is None)


@pytest.mark.parametrize("headers", [
    {b"content-length": [b"12", b"13"]}, {b"content-length": [b"+12"]},
    {b"content-length": [b"-1"]}, {b"transfer-encoding": [b"chunked, gzip"]},
    {b"transfer-encoding": [b"xchunked"]}, {b"transfer-encoding": [b"chunked, chunked"]},
    {b"transfer-encoding": [b"chunked", b"chunked"]}, {b"transfer-encoding": [b""]},
    {b"transfer-encoding": [b", chunked"]}, {b"transfer-encoding": [b"chunked-x"]},
    {b"transfer-encoding": [b"chunked"], b"content-length": [b"3"]},
])
def test_ambiguous_request_framing_is_refused(headers):
    with pytest.raises(_wire.ProtocolError) as e:
        _framing.requestFraming(headers)
    assert e.value.status == 400


def test_a_transfer_coding_before_chunked_is_not_implemented():
    with pytest.raises(_wire.NotImplementedCoding) as e:
        _framing.requestFraming({b"transfer-encoding": [b"gzip, chunked"]})
    assert e.value.status == 501


def test_chunked_in_an_http10_request_is_refused():
    with pytest.raises(_wire.ProtocolError):
        _framing.requestFraming({b"transfer-encoding": [b"chunked"]}, b"HTTP/1.0")


def test_strict_request_lines_need_a_token_method():
    with pytest.raises(_wire.ProtocolError):
        _wire.parseHeadIndexed(b"GE(T / HTTP/1.1\r\nHost: gw", False, strict=True)
    assert _wire.parseHeadIndexed(b"M-SEARCH * HTTP/1.1\r\nHost: gw", False, strict=True)[0].method == b"M-SEARCH"


@pytest.mark.parametrize("line", [b"X-A: a\x00b", b"X-A: \x01", b"X-A: a\x7fb", b"X A: 1", b"X(A): 1",
                                  b"X-\xffA: 1"])
def test_strict_heads_refuse_control_characters_and_bad_names(line):
    raw = b"GET / HTTP/1.1\r\nHost: gw\r\n" + line
    with pytest.raises(_wire.ProtocolError):
        _wire.parseHeadIndexed(raw, False, strict=True)


def test_strict_heads_keep_tabs_and_obs_text_in_values():
    head, low, _ = _wire.parseHeadIndexed(b"GET / HTTP/1.1\r\nX-A: a\tb \xe9", False, strict=True)
    assert low[b"x-a"] == [b"a\tb \xe9"]


def test_response_framing_by_status_method_and_headers():
    assert _framing.responseFraming({b"content-length": [b"5"]}, 200, b"HEAD") is None
    assert _framing.responseFraming({}, 204, b"GET") is None
    assert _framing.responseFraming({}, 304, b"GET") is None
    assert _framing.responseFraming({}, 200, b"GET").kind == "close"
    assert _framing.responseFraming({b"transfer-encoding": [b"gzip"]}, 200, b"GET").kind == "close"
    assert _framing.responseFraming({b"transfer-encoding": [b"chunked"],
                                  b"content-length": [b"3"]}, 200, b"GET").kind == "chunked"


@pytest.mark.parametrize("raw", [b"GET / HTTP/2.0", b"GET  HTTP/1.1", b"GET /", b"GET / HTTP/1.1\r\n x: y",
                                 b"GET / HTTP/1.1\r\nX-A: 1\nTransfer-Encoding: chunked",
                                 b"GET / HTTP/1.1\r\nX-A: 1\rX-B: 2", b"GET / HTTP/1.1x"])
def test_bad_request_heads_raise_protocol_error(raw):
    with pytest.raises(_wire.ProtocolError):
        _wire.parseHead(raw, False)


_LINES = st.sampled_from([b"Host: gw", b"X-A:  a b ", b"Bad Name: x", b"NoColon", b" Lead: x", b"X-B:",
                          b"User-Agent: wrk", b"X-\x00: nul", b"x-a: again", b"Content-Type: text/plain"])


@given(st.lists(st.lists(_LINES, max_size=6), min_size=1, max_size=6))
def test_a_strict_parse_gives_the_same_answer_however_often_a_line_was_seen(heads):
    # Strict parses remember the header lines they accepted: a line seen
    # before must give what a first parse gives, and a lenient parse's
    # lines must never vouch for a strict one.
    def outcome(raw: bytes, strict: bool):
        try:
            head, low, names = _wire.parseHeadIndexed(raw, False, strict=strict)
        except _wire.ProtocolError as e:
            return str(e)
        return head.headers, low, names

    for lines in heads:
        raw = b"\r\n".join([b"GET / HTTP/1.1", *lines])
        lenient = outcome(raw, False)
        _wire._strictLines.clear()
        first = outcome(raw, True)
        assert outcome(raw, True) == first and outcome(raw, False) == lenient
        # And seen after other heads filled the cache:
        for other in heads:
            outcome(b"\r\n".join([b"GET / HTTP/1.1", *other]), True)
        assert outcome(raw, True) == first


@pytest.mark.parametrize("octet", range(256))
def test_a_strict_head_refuses_exactly_the_control_octets_rfc_9110_forbids(octet):
    raw = b"GET / HTTP/1.1\r\nX-A: a" + bytes([octet]) + b"b"
    forbidden = _wire._BAD_OCTET.search(raw) is not None  # the rule, as a regex
    if octet in (0x0A, 0x0D):
        forbidden = True  # bare CR or LF: refused by the line check
    try:
        _wire.parseHeadIndexed(raw, False, strict=True)
        refused = False
    except _wire.ProtocolError:
        refused = True
    assert refused == forbidden
