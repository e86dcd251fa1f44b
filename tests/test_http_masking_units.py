"""What the HTTP relay masks with, reactor-free: response heads in one pass, the sans-IO WebSocket reader (framing, fragments, bounds)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealgate.masking import STRUCTURAL_HEADERS, Masker, maskHead
from sealgate.protocols.http._websocket import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    FrameReader,
    MessageMasker,
    WebSocketError,
    closeFrame,
    frame,
)

MASKER = Masker(["credit_card", "email"])


_VALUE = st.lists(st.sampled_from([b"4111 1111 1111 1111", b"4111111111111111", b"ada@example.com", b"x",
                                   b" ", b"1", b"@", b"-", b"=", b";", b"\xc3\xa9"]), max_size=6).map(b"".join)
_NAME = st.sampled_from([b"X-Card", b"Set-Cookie", b"Location", b"Content-Length", b"ETag", b"Date", b"Server"])


@given(reason=_VALUE, headers=st.lists(st.tuples(_NAME, _VALUE), max_size=8))
def test_a_head_masked_in_one_pass_is_each_value_masked_alone(reason, headers):
    def alone(name, value):
        return value if name.lower() in STRUCTURAL_HEADERS else MASKER.maskBytes(value)

    got = maskHead(MASKER, reason, headers)
    assert got == (MASKER.maskBytes(reason), [(n, alone(n, v)) for n, v in headers])
    assert [len(v) for _, v in got[1]] == [len(v) for _, v in headers]


def _fragments(opcode: int, payload: bytes, cuts: list[int]) -> bytes:
    """C{payload} as one message split at C{cuts} into frames (first has the opcode, last has FIN)."""
    points = sorted({c % (len(payload) + 1) for c in cuts} | {0, len(payload)})
    pieces = [payload[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    out = b""
    for i, piece in enumerate(pieces):
        fin = 0x80 if i == len(pieces) - 1 else 0
        op = opcode if i == 0 else 0
        out += bytes([fin | op]) + frame(0, piece)[1:]
    return out


def _masked(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@given(messages=st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=300),
                                   st.lists(st.integers(0, 400), max_size=4)), max_size=5),
       reads=st.lists(st.integers(1, 97), min_size=1, max_size=20))
def test_messages_come_out_whole_and_in_order_however_the_bytes_are_split(messages, reads):
    wire = b"".join(_fragments(op, payload, cuts) for op, payload, cuts in messages)
    reader = FrameReader(1 << 20)
    got, pos, i = [], 0, 0
    while pos < len(wire):
        n = reads[i % len(reads)]
        got += reader.feed(wire[pos: pos + n])
        pos += n
        i += 1
    assert got == [(op, payload) for op, payload, _ in messages]


@given(payload=st.binary(max_size=70000))
def test_frame_then_read_is_the_identity_for_every_length_encoding(payload):
    assert FrameReader(1 << 20).feed(frame(BINARY, payload)) == [(BINARY, payload)]


def test_a_control_frame_inside_a_fragmented_message_comes_out_at_once():
    reader = FrameReader(1 << 20)
    wire = bytes([TEXT]) + frame(0, b"hel")[1:] + frame(PING, b"p") + bytes([0x80]) + frame(0, b"lo")[1:]
    assert reader.feed(wire) == [(PING, b"p"), (TEXT, b"hello")]


def test_a_masked_server_frame_is_unmasked():
    key = b"\x01\x02\x03\x04"
    wire = bytes([0x80 | TEXT, 0x80 | 5]) + key + _masked(b"hello", key)
    assert FrameReader(1 << 20).feed(wire) == [(TEXT, b"hello")]


@pytest.mark.parametrize("wire,code", [
    (bytes([0x80 | 0x40 | TEXT, 1]) + b"x", 1002),          # RSV1: an extension
    (bytes([0x80 | 0x3, 0]), 1002),                          # reserved opcode
    (bytes([0x80 | 0x0, 1]) + b"x", 1002),                   # continuation of nothing
    (bytes([TEXT, 1]) + b"x" + bytes([0x80 | TEXT, 1]) + b"y", 1002),   # new message inside one
    (bytes([PING, 1]) + b"x", 1002),                         # fragmented control frame
    (bytes([0x80 | TEXT, 127]) + (2000).to_bytes(8, "big"), 1009),   # over the bound, before buffering
    (bytes([TEXT, 126]) + (600).to_bytes(2, "big") + b"a" * 600
     + bytes([0x80, 126]) + (600).to_bytes(2, "big") + b"b" * 600, 1009),   # over the bound across fragments
])
def test_broken_or_oversized_frames_fail_closed_with_a_close_code(wire, code):
    with pytest.raises(WebSocketError) as e:
        FrameReader(1024).feed(wire)
    assert e.value.code == code


def test_text_close_reason_and_ping_are_masked_and_framed_again():
    m = MessageMasker(MASKER, 1 << 20)
    wire = (_fragments(TEXT, b"card 4111 1111 1111 1111 by ada@example.com", [7, 15])
            + frame(CLOSE, b"\x03\xe8bye 4111111111111111") + frame(PING, b"4111 1111 1111 1111"))
    out = m.feed(wire[:9]) + m.feed(wire[9:])
    assert FrameReader(1 << 20).feed(out) == [
        (TEXT, b"card **** **** **** 1111 by ***@example.com"),
        (CLOSE, b"\x03\xe8bye ************1111"),
        (PING, b"**** **** **** 1111"),
    ]


def test_binary_that_is_not_text_is_a_policy_close_by_default():
    with pytest.raises(WebSocketError) as e:
        MessageMasker(MASKER, 1 << 20).feed(frame(BINARY, b"\x00\x01\x02 4111111111111111"))
    assert e.value.code == 1008
    passing = MessageMasker(Masker(["credit_card"], unknownContent="pass"), 1 << 20)
    assert passing.feed(frame(BINARY, b"\x00\x01")) == frame(BINARY, b"\x00\x01")


def test_close_frame_reason_is_bounded_to_a_control_frame():
    [(op, payload)] = FrameReader(1 << 20).feed(closeFrame(1008, "x" * 500))
    assert op == CLOSE and payload[:2] == b"\x03\xf0" and len(payload) == 125


# -- the relay, without sockets ------------------------------------------------------------------

def _maskingRelay():
    from sealgate.chain.masking import MaskingInterceptor
    from sealgate.config import MaskingConfig
    from tests.test_http_core import relay

    return relay([MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card", "email"))))])


def _chunked(head: bytes, pieces, trailers: bytes = b"") -> bytes:
    return (head + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailers + b"\r\n")


def test_a_chunked_json_response_goes_out_chunked_masked_without_a_content_length_and_the_connection_lives():
    from tests.test_http_core import get

    r = _maskingRelay()
    r.send(get("/doc"))
    r.connectBackend()
    doc = b'{"card": "4111 1111 1111 1111", "mail": "ada@example.com"}'
    r.answer(_chunked(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n",
                      [doc[:13], doc[13:]], b"X-Sum: 4111111111111111\r\n"))
    out = r.sent()
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    masked = b'{"card": "**** **** **** 1111", "mail": "***@example.com"}'
    assert rest == b"%x\r\n%s\r\n0\r\nX-Sum: ************1111\r\n\r\n" % (len(masked), masked)
    assert r.session.recording.bytesTo() == out
    # The same connection carries the next request.
    r.client.clear()
    r.send(get("/again"))
    r.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert r.sent().startswith(b"HTTP/1.1 204")


def test_header_values_reason_phrase_and_a_head_response_are_masked_same_length():
    from tests.test_http_core import get

    r = _maskingRelay()
    r.send(get("/who", "HEAD"))
    r.connectBackend()
    r.answer(b"HTTP/1.1 200 Found ada@example.com\r\nX-Card: 4111 1111 1111 1111\r\n"
             b"Set-Cookie: m=ada@example.com\r\nContent-Length: 40\r\nETag: \"4111111111111111\"\r\n\r\n")
    out = r.sent()
    assert out == (b"HTTP/1.1 200 Found ***@example.com\r\nX-Card: **** **** **** 1111\r\n"
                   b"Set-Cookie: m=***@example.com\r\nContent-Length: 40\r\n"
                   b"ETag: \"4111111111111111\"\r\n\r\n")   # ETag is structural: passed
    # Set-Cookie is a secret header: the recording keeps it redacted.
    assert r.session.recording.bytesTo() == out.replace(b"m=***@example.com", b"[redacted]")


class _HeldPool:
    """A thread pool that runs nothing until told: shows what the reactor thread did meanwhile."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.jobs.append((onResult, f, args, kwargs))

    def runAll(self):
        jobs, self.jobs = self.jobs, []
        for onResult, f, args, kwargs in jobs:
            try:
                result = f(*args, **kwargs)
            except Exception:
                from twisted.python.failure import Failure

                onResult(False, Failure())
            else:
                onResult(True, result)


def _threaded(r) -> _HeldPool:
    pool = _HeldPool()
    r.reactor.getThreadPool = lambda: pool
    r.reactor.callFromThread = lambda f, *a, **kw: f(*a, **kw)
    return pool


def test_a_big_json_body_is_masked_in_a_thread_and_the_reactor_thread_only_waits_for_it():
    from tests.test_http_core import get, response

    r = _maskingRelay()
    pool = _threaded(r)
    doc = b'{"rows": [' + b",".join(b'{"card": "4111 1111 1111 1111", "n": %d}' % i for i in range(3000)) + b"]}"
    assert len(doc) > 64 << 10
    r.send(get("/big"))
    r.connectBackend()
    r.answer(response(doc, b"application/json"))
    # Masking is in the pool: nothing went out yet, the backend connection is back in its pool.
    assert r.sent() == b"" and len(pool.jobs) == 1
    assert len(r.factory.pools[id(r.factory.backends[0])]._idle) == 1
    pool.runAll()
    out = r.sent()
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in head + b"\r\n" and b"Transfer-Encoding" not in head
    assert b"4111 1111 1111 1111" not in body and body.count(b"**** **** **** 1111") == 3000


def test_a_big_body_that_cannot_be_masked_in_the_thread_gets_a_502_problem():
    from tests.test_http_core import get, response

    r = _maskingRelay()
    pool = _threaded(r)
    r.send(get("/big"))
    r.connectBackend()
    r.answer(response(b'{"a": "' + b"x" * (70 << 10) + b'"', b"application/json"))   # not JSON: cut short
    assert r.sent() == b""
    pool.runAll()
    out = r.sent()
    assert out.startswith(b"HTTP/1.1 502") and b"Response cannot be masked" in out
