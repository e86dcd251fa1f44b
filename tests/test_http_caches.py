"""The relay's caches and fast paths change no byte: a kept-alive connection's repeated heads, the backend's repeated response heads and masked bodies give what a cold relay gives."""

import contextlib
import gzip
import json
from unittest import mock

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.chain.masking import MaskingInterceptor
from sealgate.config import MaskingConfig
from sealgate.masking import Masker
from sealgate.protocols.http import _request, _response
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
def _responses(draw) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 302]))
    ctype = draw(st.sampled_from([b"application/json", b"application/json; charset=utf-8",
                                  b"text/plain", b"text/html; charset=utf-16", b"application/octet-stream",
                                  None, b"multipart/mixed; boundary=zz"]))
    body = draw(st.sampled_from(_DOCS if ctype and b"json" in ctype else _TEXTS))
    coding = draw(st.sampled_from([None, None, b"gzip", b"zstd"]))
    if coding == b"gzip":
        body = gzip.compress(body, mtime=0)
    elif coding == b"zstd":
        body = b"\x28\xb5\x2f\xfd" + body
    framing = draw(st.sampled_from(["length", "length", "chunked", "close"]))
    lines = [version + b" %d " % status + draw(st.sampled_from([b"OK", b"Fine", b"for ada@example.com", b""]))]
    lines += draw(st.lists(st.sampled_from([
        b"Server: nginx", b"Date: Wed, 02 Dec 2026 13:00:00 GMT", b"Date: Wed, 02 Dec 2026 13:00:01 GMT",
        b"Set-Cookie: s=ada@example.com", b"X-Card: " + CARD.encode(), b"Location: /u/ada@example.com",
        b"Connection: close", b"Connection: keep-alive, x-hop", b"X-Hop: 1", b"ETag: \"abc\"",
        b"Trailer: X-Sum", b"Content-Length: 3",
    ]), max_size=5, unique=True))
    if ctype is not None:
        lines.append(b"Content-Type: " + ctype)
    if coding is not None:
        lines.append(b"Content-Encoding: " + coding)
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    if framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        trailer = draw(st.sampled_from([b"", b"X-Sum: " + CARD.encode() + b"\r\n"]))
        return (b"\r\n".join(lines) + b"\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n"
                + trailer + b"\r\n")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_EXCHANGES = st.lists(st.tuples(_REQUEST_HEADS, _responses()), min_size=1, max_size=6)


@contextlib.contextmanager
def _cold():
    """Every cache and fast path of the relay turned off: each head parsed and planned, each body masked."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(_response.PlanCache, "get", lambda self, key: None))
        stack.enter_context(mock.patch.object(
            _request.HeadCache, "parse", lambda self, raw: parseRequest(raw, self.lenientToo)))
        for patch in COLD_PATCHES:
            stack.enter_context(patch())
        yield


#: Further switches for fast paths added later (each a context manager factory).
COLD_PATCHES: list = []


def _relay(unknown: str):
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
@given(_EXCHANGES, st.sampled_from(["refuse", "pass", "mask"]))
def test_a_warm_relay_sends_records_and_forwards_exactly_what_a_cold_one_does(exchanges, unknown):
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
