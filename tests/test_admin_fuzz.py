"""The admin site answers unreadable requests (bad UTF-8, nested or broken JSON) with a 400 problem, never a 500."""

import http.client
import json
import socket
from urllib.parse import quote_from_bytes

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, threads

from sealgate.testing import startGateway
from tests.test_admin_api import CONFIG, PEOPLE

#: Every route of the admin site; {} is a path segment the fuzzer fills in.
ROUTES = [
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/console/{}", "/login/{}", "/logout",
    "/api/me", "/api/approvals", "/api/approvals/{}", "/api/approvals/{}/{}", "/api/sessions",
    "/api/sessions/{}", "/api/sessions/{}/{}", "/api/sessions/{}/frames/{}/redact", "/api/log/{}",
    "/api/notifications", "/api/notifications/{}",
]
_ACTIONS = [b"approve", b"deny", b"cancel", b"verify", b"frames", b"transcript", b"export", b"checkpoint",
            b"leaves", b"inclusion", b"consistency", b"test", b"options", b"callback", b"key"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    running = pytest_twisted.blockon(defer.ensureDeferred(
        startGateway(CONFIG, tmp_path_factory.mktemp("fuzz"))))
    keys = {name: running.createKey(name, groups) for name, groups in PEOPLE.items()}
    yield running.adminPort, keys
    pytest_twisted.blockon(running.stop())


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"reason":' * depth + b"1" + b"}" * depth


_segment = st.one_of(st.sampled_from(_ACTIONS), st.binary(max_size=6), st.just(b"\xff\xfe"))
_body = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.builds(_nested, st.integers(1, 100_000), st.sampled_from(["list", "object"])),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                 max_leaves=8).map(lambda v: json.dumps({"reason": v}).encode()),
)


def _request(port, method, path: bytes, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path.decode("ascii"), skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.putheader("content-length", str(len(body or b"")))
        conn.endheaders(body or None)
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()
    finally:
        conn.close()


def _check(status, ctype, data, what):
    assert status < 500, (what, status, data[:300])
    if status == 400:
        assert ctype == "application/problem+json", (what, ctype)
        doc = json.loads(data)
        assert doc["status"] == 400 and doc["detail"] and doc["title"] == "Bad Request", doc


@pytest_twisted.ensureDeferred
async def test_fuzzed_requests_over_every_route_never_get_a_500(site, logs):
    port, keys = site

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(ROUTES), st.lists(_segment, min_size=2, max_size=2),
           st.lists(st.tuples(st.binary(max_size=5), st.binary(max_size=8)), max_size=3),
           st.sampled_from(["GET", "POST"]), _body,
           st.one_of(st.sampled_from([None, "root", "alice"]),
                     st.text(st.characters(min_codepoint=33, max_codepoint=255), max_size=40)))
    def fuzz(route, segments, query, method, body, who):
        parts = route.split("{}")
        path = parts[0].encode()
        for seg, rest in zip(segments, parts[1:], strict=False):
            path += quote_from_bytes(seg, safe=b"").encode() + rest.encode()
        if query:
            path += b"?" + b"&".join(quote_from_bytes(k, safe=b"").encode() + b"=" +
                                      quote_from_bytes(v, safe=b"").encode() for k, v in query)
        headers = {"authorization": f"Bearer {keys.get(who, who)}"} if who else {}
        _check(*_request(port, method, path, body, headers), (method, path, (body or b"")[:60]))

    await threads.deferToThread(fuzz)
    assert not [line for line in logs if "Traceback" in line or "Unhandled" in line], logs


@pytest.mark.parametrize("path", [b"/api/sessions/%FF%FE", b"/api/approvals/%FF/approve", b"/login/%C3%28",
                                  b"/console/%FF", b"/api/sessions?state=%FF&limit=%FF",
                                  b"/api/log/leaves?start=%FF", b"/api/approvals/\xff"])
@pytest_twisted.ensureDeferred
async def test_invalid_utf8_in_a_path_or_query_is_a_400_problem(site, path):
    port, keys = site

    def go():
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                  b"authorization: Bearer " + keys["root"].encode() + b"\r\n\r\n")
        r = http.client.HTTPResponse(s)
        r.begin()
        try:
            return r.status, r.getheader("content-type") or "", r.read()
        finally:
            s.close()
    status, ctype, data = await threads.deferToThread(go)
    assert status == 400, data
    if b"%" in path or b"?" in path:
        # (a raw non-ASCII byte in the request line is refused by Twisted's parser, with its own 400)
        assert ctype == "application/problem+json" and json.loads(data)["status"] == 400, data


@pytest.mark.parametrize("body", [_nested(100_000, "list"), _nested(50_000, "object"), b"\xff{not json",
                                  b"[1, 2]", b'{"reason": ' + _nested(5000, "list") + b"}"])
@pytest_twisted.ensureDeferred
async def test_a_deeply_nested_or_broken_json_body_is_a_400_problem(site, body):
    port, keys = site
    status, ctype, data = await threads.deferToThread(
        _request, port, "POST", b"/api/approvals/nope/deny", body, {"authorization": f"Bearer {keys['root']}"})
    assert status == 400, data
    assert ctype == "application/problem+json" and json.loads(data)["title"] == "Bad Request"


@pytest_twisted.ensureDeferred
async def test_a_metrics_scraper_that_leaves_before_the_answer_logs_no_error(site, logs, monkeypatch):
    from twisted.internet import reactor, task

    from sealgate.admin import metrics

    port, _keys = site
    scrapes = []

    def gated(admin, fn):
        # The scrape's answer waits until the scraper has gone (a slow scan, deterministically).
        gate = defer.Deferred()
        scrapes.append((gate, fn))
        return gate
    monkeypatch.setattr(metrics, "inThread", gated)
    requests = []
    render = metrics._MetricsResource.render_GET
    monkeypatch.setattr(metrics._MetricsResource, "render_GET",
                        lambda self, request: requests.append(request) or render(self, request))
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
    for _ in range(3000):
        if scrapes:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    s.close()
    for _ in range(3000):
        if requests[0]._disconnected:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert requests[0]._disconnected
    gate, fn = scrapes[0]
    chain = []
    gate.callback(await threads.deferToThread(fn))
    gate.addBoth(chain.append)  # runs after the resource's own callbacks
    assert chain == [None], chain
    assert not [line for line in logs if "Unhandled" in line or "Traceback" in line or "finish" in line], logs
