"""The relay's caches and fast paths change no byte: a kept-alive connection's repeated heads, the backend's repeated response heads and masked bodies give what a cold relay gives."""

import contextlib
import gzip
import json
import re
from unittest import mock

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.chain.masking import MaskingInterceptor
from sealgate.config import MaskingConfig
from sealgate.masking import Masker, MaskingFailed
from sealgate.protocols.http import _body, _request, _response
from sealgate.protocols.http._request import HeadCache, parseRequest
from sealgate.protocols.http._target import TargetRefused
from sealgate.protocols.http._wire import ProtocolError
from sealgate.testing import rule
from tests.test_http_core import KEY, relay

CARD = "4111 1111 1111 1111"

# -- request heads ---------------------------------------------------------------

_REQUEST_HEADS = st.sampled_from([
    b"GET /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.1\r\nHost: gw\r\nUser-Agent: wrk\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /a/../b?x=%41 HTTP/1.1\r\nHost: gw\r\nCookie: s=1\r\nAuthorization: Bearer " + KEY.encode(),
    b"HEAD /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.1\r\nHost: gw\r\nX-Forwarded-For: 10.9.9.9\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /x%2Fy HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"POST /p HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nAuthorization: Bearer " + KEY.encode(),
    b"POST /p HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + KEY.encode(),
    b"DELETE /admin/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.1\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.1\r\nHost: gw\r\nHost: gw",
    b"GET /\x00 HTTP/1.1\r\nHost: gw",
    b"GET /json HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2",
])


#: Heads the relay forwards (valid, allowed, without a body).
_FORWARDED = st.sampled_from([
    b"GET /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"HEAD /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
    b"GET /json HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode(),
])


def _parsed(raw: bytes, lenient: bool):
    try:
        request = parseRequest(raw, lenient)
    except (ProtocolError, TargetRefused) as e:
        return type(e), str(e)
    return _fields(request)


def _fields(request):
    fields = attrs.asdict(request, recurse=False, filter=lambda a, _v: a.name not in ("memo", "framing"))
    framing = request.framing
    fields["framing"] = None if framing is None else (framing.kind, framing.length, framing.done)
    return fields


@given(st.lists(_REQUEST_HEADS, min_size=1, max_size=12), st.booleans())
def test_a_connections_head_cache_parses_each_head_as_a_fresh_parse_does(heads, lenient):
    cache = HeadCache(lenient)
    for raw in heads:
        try:
            got = _fields(cache.parse(raw))
        except (ProtocolError, TargetRefused) as e:
            got = (type(e), str(e))
        assert got == _parsed(raw, lenient)


def test_a_request_made_again_from_a_cached_head_reads_its_own_body():
    cache = HeadCache()
    raw = b"POST /p HTTP/1.1\r\nHost: gw\r\nContent-Length: 5"
    first = cache.parse(raw)
    assert first.framing.feed(b"hello") == ([b"hello"], 5) and first.framing.done
    first.bodySize = 5
    second = cache.parse(raw)
    assert second is not first and second.framing is not first.framing
    assert not second.framing.done and second.bodySize == 0 and second.body is None
    assert second.memo is first.memo  # what was derived from the head is shared
    assert cache.parse(raw + b"\r\nX-A: 1").memo is not first.memo


# -- whole exchanges, cached against cold ------------------------------------------------

_DOCS = [
    json.dumps({"customer": {"name": "Ada", "email": "ada@example.com", "card": CARD}, "n": 1}).encode(),
    json.dumps({"password": "hunter2", "orders": [1, 2.5, None]}).encode(),
    json.dumps({"note": "nothing here", "id": 41111111111111111}).encode(),
    b'{"a": "x\\u0040example.com", "card": "' + CARD.encode() + b'"}',
    b'{"broken": ',
    b"[]",
]
_TEXTS = [b"plain text", b"mail ada@example.com or pay " + CARD.encode(), b"\x00\x01binary\xff"]


@st.composite
def _shapes(draw, alive: bool = False):
    """
    A response head and body shape: a function of (Date, padding) giving
    one response's bytes; C{alive}: one that keeps the connection open.
    """
    version = b"HTTP/1.1" if alive else draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 200, 200, 201, 404] if alive else [200, 200, 201, 204, 304, 404, 302]))
    ctype = draw(st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                  b"text/plain", b"text/html; charset=utf-16", b"application/octet-stream",
                                  None, b"multipart/mixed; boundary=zz"]))
    doc = draw(st.sampled_from(_DOCS if ctype and b"json" in ctype else _TEXTS))
    coding = draw(st.sampled_from([None, None, b"gzip", b"zstd"]))
    framing = draw(st.sampled_from(["length", "length", "chunked"] + ([] if alive else ["close"])))
    lengthLine = draw(st.sampled_from([b"Content-Length: %d", b"Content-Length: %d",
                                       b"content-length: %d", b"Content-Length: 0%d"]))
    first = version + b" %d " % status + draw(st.sampled_from([b"OK", b"Fine", b"for ada@example.com", b""]))
    extra = draw(st.lists(st.sampled_from([
        b"Server: nginx", b"date: Wed, 02 Dec 2026 13:00:02 GMT", b"Date:Wed, 02 Dec 2026 13:00:03 GMT",
        b"Date: x\ty", b"Set-Cookie: s=ada@example.com", b"X-Card: " + CARD.encode(),
        b"Location: /u/ada@example.com", b"Connection: close", b"Connection: keep-alive, x-hop",
        b"Connection: date, content-length", b"X-Hop: 1", b"ETag: \"abc\"", b"Trailer: X-Sum",
        b"Content-Length: 3", b"content-length: 3", b"Content-Length: 0", b"Transfer-Encoding: chunked",
        b"X-Date: Date: 1", b"DATE",
    ]).filter(lambda line: not alive or b"close" not in line), max_size=5, unique=True))
    dateAt = draw(st.integers(min_value=0, max_value=len(extra)))
    trailer = draw(st.sampled_from([b"", b"X-Sum: " + CARD.encode() + b"\r\n"]))

    def make(date: bytes | None, padding: int) -> bytes:
        # Documents of other lengths under the same head (a new Content-Length).
        body = doc + b" " * padding
        if coding == b"gzip":
            body = gzip.compress(body, mtime=0)
        elif coding == b"zstd":
            body = b"\x28\xb5\x2f\xfd" + body
        lines = [first, *extra]
        if date is not None:
            lines.insert(1 + dateAt, b"Date: " + date)
        if ctype is not None:
            lines.append(b"Content-Type: " + ctype)
        if coding is not None:
            lines.append(b"Content-Encoding: " + coding)
        if framing == "length":
            lines.append(lengthLine % len(body))
            return b"\r\n".join(lines) + b"\r\n\r\n" + body
        if framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            return (b"\r\n".join(lines) + b"\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n"
                    + trailer + b"\r\n")
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    return make


_DATES = st.sampled_from([None, b"Wed, 02 Dec 2026 13:00:00 GMT", b"Wed, 02 Dec 2026 13:00:01 GMT",
                          b"Thu, 03 Dec 2026 09:10:11 GMT", b" Wed, 02 Dec 2026 13:00:01 GMT"])


@st.composite
def _responses(draw) -> bytes:
    return draw(_shapes())(draw(_DATES), draw(st.sampled_from([0, 0, 1, 7])))


@st.composite
def _variations(draw) -> list:
    """One request head, answered with one response head again and again, its Date and length changing."""
    head, make = draw(st.one_of(_FORWARDED, _REQUEST_HEADS)), draw(st.one_of(_shapes(True), _shapes()))
    return [(head, make(date, padding)) for date, padding in
            draw(st.lists(st.tuples(_DATES, st.sampled_from([0, 0, 1, 7, 30])), min_size=2, max_size=6))]


_EXCHANGES = st.lists(st.tuples(_REQUEST_HEADS, _responses()), min_size=1, max_size=6)


@contextlib.contextmanager
def _cold():
    """Every cache and fast path of the relay turned off: each head parsed and planned, each body masked."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(_response.PlanCache, "get", lambda self, raw, context: None))
        stack.enter_context(mock.patch.object(
            _body.LastBody, "mask",
            lambda self, masker, body, ctype: masker.maskEncodedBody(body, None, ctype, False)[0]))
        stack.enter_context(mock.patch.object(
            _request.HeadCache, "parse", lambda self, raw: parseRequest(raw, self.lenientToo)))
        for patch in COLD_PATCHES:
            stack.enter_context(patch())
        yield


#: Further switches for fast paths added later (each a context manager factory).
COLD_PATCHES: list = []


def _relay(unknown: str | None):
    """The bench's policy; C{unknown=None}: no masking at all (bodies and heads pass as they came)."""
    if unknown is None:
        return relay(rules=[rule("no-delete", "deny", matchers={"methods": ["DELETE"], "paths": ["^/admin"]})])
    masking = MaskingInterceptor(Masker.fromConfig(MaskingConfig(
        detectors=("credit_card", "email"), json_fields=("password",), unknown_content=unknown)))
    return relay(interceptors=[masking],
                 rules=[rule("no-delete", "deny", matchers={"methods": ["DELETE"], "paths": ["^/admin"]})])


def _run(r, exchanges) -> list:
    """Each exchange's client bytes and backend bytes, then the session's recording."""
    seen = []
    for head, answer in exchanges:
        r.client.clear()
        if r.backend is not None:
            r.backend.clear()
        r.send(head + b"\r\n\r\n" + (b"hi" if b"Content-Length: 2" in head else
                                     b"2\r\nhi\r\n0\r\n\r\n" if b"chunked" in head else b""))
        if r.reactor.tcpClients:
            r.connectBackend()
        forwarded = r.backend.value() if r.backend is not None else b""
        if forwarded:
            r.answer(answer)
        seen.append((r.client.value(), forwarded))
    session = r.session
    if session is not None:
        seen.append(([f for f in session.recording.frames], [e for e in session.recording.events]))
    return seen


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(_EXCHANGES, st.sampled_from(["refuse", "pass", "mask", None]))
def test_a_warm_relay_sends_records_and_forwards_exactly_what_a_cold_one_does(exchanges, unknown):
    warm = _run(_relay(unknown), exchanges)
    with _cold():
        cold = _run(_relay(unknown), exchanges)
    assert warm == cold


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(_variations(), st.sampled_from(["refuse", "pass", None]))
def test_a_head_seen_before_with_another_date_or_length_is_planned_as_a_cold_relay_plans_it(exchanges, unknown):
    warm = _run(_relay(unknown), exchanges)
    with _cold():
        cold = _run(_relay(unknown), exchanges)
    assert warm == cold


@pytest.mark.parametrize("repeat", [2, 5])
def test_the_same_response_again_is_masked_again_never_passed_unmasked(repeat):
    doc = json.dumps({"email": "ada@example.com", "card": CARD, "password": "hunter2"}).encode()
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Card: " + CARD.encode()
              + b"\r\nContent-Length: %d\r\n\r\n" % len(doc) + doc)
    head = b"GET /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode()
    outs = [out for out, _fwd in _run(_relay("refuse"), [(head, answer)] * repeat)[:repeat]]
    assert len(set(outs)) == 1
    assert CARD.encode() not in outs[0] and b"ada@example.com" not in outs[0] and b"hunter2" not in outs[0]
    assert outs[0].startswith(b"HTTP/1.1 200 OK\r\n")


def _answer(body: bytes, ctype: bytes | None, date: bytes = b"Wed, 02 Dec 2026 13:00:00 GMT") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: " + date
            + (b"\r\nContent-Type: " + ctype if ctype else b"")
            + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


_GET = b"GET /json HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + KEY.encode()


@pytest.mark.parametrize(("unknown", "ctype", "bodies"), [
    # Passed as the backend sent it: its own Content-Length and Date go on.
    (None, b"text/plain", [b"abc", b"abcdefgh", b"", b"xy", b"xy"]),
    # Sniffed, found binary and passed: the Content-Length it goes out with is its own.
    ("pass", b"application/octet-stream", [b"\x00\x01" * 600, b"\x00\x02" * 900, b"\x00" * 1500]),
    ("pass", None, [b"\x00\x01" * 600, b"", b"\x00\x02" * 900]),
    # Masked whole: the length is the masked body's.
    ("refuse", b"application/json", [b'{"card": "%s"}' % CARD.encode(), b'{"a": 1}', b"{}", b"[]"]),
    ("refuse", b"text/plain", [b"mail ada@example.com", b"", b"plain", b"pay " + CARD.encode()]),
])
def test_a_known_head_with_a_new_length_or_date_is_framed_by_the_new_one(unknown, ctype, bodies):
    dates = [b"Wed, 02 Dec 2026 13:00:0%d GMT" % (i % 2) for i in range(len(bodies))]
    exchanges = [(_GET, _answer(b, ctype, d)) for b, d in zip(bodies, dates, strict=True)]
    warm = _run(_relay(unknown), exchanges)
    with _cold():
        cold = _run(_relay(unknown), exchanges)
    assert warm == cold
    for (out, _fwd), b, d in zip(warm[:len(bodies)], bodies, dates, strict=True):
        assert b"\r\nDate: " + d + b"\r\n" in out
        if unknown is None or (ctype != b"application/json" and b"\x00" in b):
            assert out.endswith(b"\r\nContent-Length: %d\r\n\r\n" % len(b) + b)


_MASKERS = [Masker.fromConfig(MaskingConfig(detectors=("credit_card", "email"), json_fields=("password",))),
            Masker.fromConfig(MaskingConfig(detectors=("email",))),
            Masker.fromConfig(MaskingConfig(json_fields=("card",)))]


@given(st.lists(st.tuples(st.sampled_from(range(len(_MASKERS))),
                          st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-16",
                                           "multipart/mixed; boundary=zz"]),
                          st.sampled_from(_DOCS + _TEXTS)), min_size=1, max_size=8))
def test_a_connections_last_body_is_masked_as_the_masker_masks_it_whatever_came_before(asks):
    memo = _body.LastBody()
    for m, ctype, doc in asks:
        masker = _MASKERS[m]
        try:
            expected = masker.maskEncodedBody(doc, None, ctype, False)[0]
        except MaskingFailed as e:
            with pytest.raises(MaskingFailed, match=re.escape(str(e))):
                memo.mask(masker, doc, ctype)
            continue
        assert memo.mask(masker, bytes(doc), ctype) == expected


def test_a_connection_holds_no_body_past_its_bound():
    memo, masker = _body.LastBody(), _MASKERS[0]
    small = json.dumps({"email": "ada@example.com"}).encode()
    assert memo.mask(masker, small, "application/json") == masker.maskEncodedBody(
        small, None, "application/json", False)[0]
    assert memo._body == small
    big = json.dumps([{"email": "ada@example.com", "n": i} for i in range(1000)]).encode()
    assert len(big) > _body.LastBody.MAX
    assert memo.mask(masker, big, "application/json") == masker.maskEncodedBody(
        big, None, "application/json", False)[0]
    assert memo._body == b"" and memo._masked == b""
