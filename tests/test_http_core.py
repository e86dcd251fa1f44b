"""The HTTP relay without sockets, on the core's steps: deny, rewrite, holds, output hooks, masking, pressure, backend timeouts, normalized forwarding."""

import json

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from sealgate import CANNOT_REWRITE, Identity, Rewrite
from sealgate.chain.masking import MaskingInterceptor
from sealgate.chain.rules import RulesInterceptor
from sealgate.config import ConnectionConfig, MaskingConfig, Where
from sealgate.masking import Masker
from sealgate.protocols.http import _wire
from sealgate.protocols.http._relay import RelayFactory
from sealgate.protocols.http._target import TargetRefused, normalizeTarget
from sealgate.protocols.http.plugin import parseOptions
from sealgate.testing import (
    CommandInterceptor,
    FakeIdentities,
    FakeTransport,
    OutputRecorder,
    fakeGateway,
    rule,
)

CARD = b"4111 1111 1111 1111"
KEY = "tok-alice"
WHERE = Where("sealgate.toml", "connections[0] (web).options")


def commands(rewrite: str | None = None) -> tuple[CommandInterceptor, list]:
    """A command hook that keeps each command's text and details, and rewrites one target if told to."""
    seen: list = []

    def verdict(hook):
        seen.append((hook.text, dict(hook.details)))
        return Rewrite("GET /elsewhere") if rewrite and rewrite in hook.text else None

    return CommandInterceptor(verdict), seen


@attrs.define
class Relay:
    """A listener with one connection, its client and (once connected) backend legs as StringTransports."""

    reactor: MemoryReactorClock
    gateway: object
    factory: RelayFactory
    proto: object
    client: FakeTransport
    backend: FakeTransport | None = None
    backendProto: object = None

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def connectBackend(self) -> FakeTransport:
        """Complete the backend connection the relay asked the reactor for."""
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients.pop(0)
        self.backendProto = factory.buildProtocol(None)
        self.backend = FakeTransport()
        self.backendProto.makeConnection(self.backend)
        return self.backend

    def answer(self, data: bytes) -> None:
        self.backendProto.dataReceived(data)

    @property
    def session(self):
        return self.proto.session

    def sent(self) -> bytes:
        return self.client.value()


def relay(interceptors=(), rules=(), store=None, **options) -> Relay:
    reactor = MemoryReactorClock()
    gw = fakeGateway(reactor=reactor, identities=FakeIdentities({KEY: Identity("alice", {"eng"})}),
                     store=store)
    built = list(interceptors)
    if rules:
        built.append(RulesInterceptor(list(rules), gw.approvals))
    gw.chain = gw.chain.__class__(built)
    conn = ConnectionConfig("web", "http", "tcp:0", "tcp:host=127.0.0.1:port=8080",
                            parseOptions(options, WHERE))
    factory = RelayFactory([conn], gw)
    proto = factory.buildProtocol(None)
    client = FakeTransport()
    proto.makeConnection(client)
    return Relay(reactor, gw, factory, proto, client)


def get(target: str = "/x", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {KEY}\r\n{extra}\r\n".encode()


def response(body: bytes = b"hello", ctype: bytes = b"text/plain", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def body(data: bytes) -> bytes:
    return data.rsplit(b"\r\n\r\n", 1)[1]


def test_denied_request_gets_403_recorded_and_never_reaches_the_backend():
    r = relay(rules=[rule("no-delete", "deny", matchers={"methods": ["DELETE"]})])
    r.send(get("/thing", "DELETE"))
    out = r.sent()
    assert status(out) == 403 and json.loads(body(out))["rule"] == "no-delete"
    assert r.reactor.tcpClients == []
    assert r.session.recording.bytesTo() == out
    [command] = r.session.recording.eventsOf("command")
    assert command["verdict"] == "deny"


def test_a_rewrite_http_cannot_apply_is_an_audited_deny_not_a_silent_pass():
    r = relay([commands(rewrite="/original")[0]])
    r.send(get("/original"))
    out = r.sent()
    assert status(out) == 403 and json.loads(body(out))["detail"] == CANNOT_REWRITE
    assert r.reactor.tcpClients == []
    [command] = r.session.recording.eventsOf("command")
    assert (command["verdict"], command["rule"], command["reason"]) == ("deny", "commands", CANNOT_REWRITE)


def test_held_request_pauses_the_client_then_goes_to_the_backend_once_approved():
    r = relay(rules=[rule("admin", "approve", matchers={"paths": ["^/admin"]})])
    r.send(get("/admin/users"))
    assert b"HTTP/1.1 102 Processing" in r.sent() and r.client.producerState == "paused"
    assert r.reactor.tcpClients == []
    [ticket] = r.gateway.approvals.pending()
    r.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}), "fine")
    assert r.client.producerState == "producing"
    backend = r.connectBackend()
    assert backend.value().startswith(b"GET /admin/users HTTP/1.1\r\n")
    r.answer(response())
    assert r.sent().endswith(b"\r\n\r\nhello")
    verdicts = [(c["verdict"], c.get("decided", False)) for c in r.session.recording.eventsOf("command")]
    assert verdicts == [("hold", False), ("allow", True)]


def test_held_request_nobody_decides_expires_with_403_and_the_client_resumes():
    r = relay(rules=[rule("admin", "approve", matchers={"paths": ["^/admin"]}, expires=30.0)])
    r.send(get("/admin/users"))
    r.reactor.advance(29)
    assert status(r.sent()) == 102 and r.client.producerState == "paused"
    r.reactor.advance(2)
    final = r.sent().split(b"\r\n\r\n", 1)[1]
    assert status(final) == 403 and b"expired" in final
    assert r.client.producerState == "producing" and r.reactor.tcpClients == []


def test_output_hooks_see_every_byte_sent_once_and_json_is_masked():
    hook = OutputRecorder()
    masking = MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card",))))
    r = relay([masking, hook])
    r.send(get("/card"))
    r.connectBackend()
    doc = json.dumps({"card": CARD.decode()}).encode()
    r.answer(response(doc, b"application/json"))
    out = r.sent()
    assert CARD not in out and json.loads(body(out))["card"] != CARD.decode()
    assert b"".join(data for data, _ in hook.seen) == out == r.session.recording.bytesTo()
    assert {ctx["part"] for _, ctx in hook.seen} == {"body"}


def test_a_binary_body_masking_passes_goes_out_as_the_backend_framed_it_and_a_text_one_is_masked():
    hook = OutputRecorder()
    masking = MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card",),
                                                                 unknown_content="pass")))
    r = relay([masking, hook])
    r.send(get("/big"))
    r.connectBackend()
    blob = bytes(range(256)) * 16 + CARD
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (
        len(blob) * 3)
    # In three reads: the masker sniffs the first, the rest pass as they come.
    r.answer(head + blob)
    r.answer(blob)
    r.answer(blob)
    out = r.sent()
    sentHead, sentBody = out.split(b"\r\n\r\n", 1)
    assert b"Content-Length: %d" % (len(blob) * 3) in sentHead and b"chunked" not in sentHead.lower()
    assert sentBody == blob * 3
    assert b"".join(data for data, _ in hook.seen) == out == r.session.recording.bytesTo()
    # The same connection, a text body: streamed through the masker, chunked.
    r.client.clear()
    hook.seen.clear()
    r.send(get("/text"))
    text = b"card " + CARD + b" here"
    r.answer(response(text, b"application/octet-stream"))
    out = r.sent()
    assert CARD not in out and b"transfer-encoding: chunked" in out.lower() and out.endswith(b"0\r\n\r\n")
    assert b"".join(data for data, _ in hook.seen) == out


def test_an_output_hook_that_refuses_gets_the_client_a_502_not_the_body():
    r = relay([OutputRecorder(refuse=True)])
    r.send(get("/x"))
    r.connectBackend()
    r.answer(response(b"secret stuff"))
    assert b"secret stuff" not in r.sent() and r.client.disconnecting
    assert r.session.recording.eventsOf("output_refused")


def test_store_pressure_pauses_both_legs_and_a_full_client_pauses_the_backend():
    r = relay()
    r.send(get("/big"))
    backend = r.connectBackend()
    r.answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n"
             + b"x" * 10)
    store = r.gateway.store
    store.setPressure("paused", "the disk is full")
    assert r.client.producerState == "paused" and backend.producerState == "paused"
    store.setPressure("flowing")
    assert r.client.producerState == "producing" and backend.producerState == "producing"
    # The client's transport is full: it pauses its producer, the backend leg.
    r.client.producer.pauseProducing()
    assert backend.producerState == "paused"
    r.client.producer.resumeProducing()
    assert backend.producerState == "producing"


def test_a_store_failure_answers_the_waiting_request_with_503_and_seals_it():
    r = relay()
    r.send(get("/x"))
    r.connectBackend()
    r.gateway.store.setPressure("failed", "the recording store is restarting")
    out = r.sent()
    assert status(out) == 503 and b"Connection: close" in out and r.client.disconnecting
    assert r.session is None or r.session.ended


def test_a_new_session_the_store_cannot_record_now_gets_503_with_retry_after():
    r = relay()
    r.gateway.store.problem = "recording is behind: 70 MiB unsealed (max_unsealed 64 MiB)"
    r.send(get("/x"))
    out = r.sent()
    assert status(out) == 503 and b"\r\nRetry-After: 1\r\n" in out and b"recording is behind" in out
    assert r.backend is None  # nothing reached the backend


def test_a_silent_backend_gets_504_after_backend_timeout():
    r = relay(backend_timeout="5s")
    r.send(get("/x"))
    r.connectBackend()
    r.reactor.advance(4.9)
    assert r.sent() == b""
    r.reactor.advance(0.2)
    out = r.sent()
    assert status(out) == 504 and json.loads(body(out))["status"] == 504
    assert r.backend.disconnecting


def test_a_backend_stalling_mid_body_cuts_the_client_but_a_slow_client_is_not_its_fault():
    r = relay(backend_timeout="5s")
    r.send(get("/x"))
    r.connectBackend()
    r.answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n"
             + b"x" * 10)
    r.client.producer.pauseProducing()
    r.reactor.advance(60)
    assert not r.client.disconnecting and not r.backend.disconnecting
    r.client.producer.resumeProducing()
    r.reactor.advance(4)
    r.answer(b"x" * 10)
    r.reactor.advance(4)
    assert not r.client.disconnecting
    r.reactor.advance(2)
    assert r.client.disconnected or r.client.disconnecting
    assert r.session.recording.eventsOf("http_response_cut")


def test_the_relay_answers_a_body_only_after_the_credential_and_within_max_body():
    r = relay(max_body=10)
    r.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    out = r.sent()
    assert status(out) == 401 and b"100 Continue" not in out and b"Connection: close" in out
    r = relay(max_body=10)
    r.send(get("/x", "POST", "Content-Length: 11\r\nExpect: 100-continue\r\n"))
    out = r.sent()
    assert status(out) == 413 and b"100 Continue" not in out and r.reactor.tcpClients == []


_SEGMENTS = st.sampled_from(["a", "admin", "x.y", ".", "..", "", "%61", "%2e", "%2F", "%7E", "%41dmin",
                             "a;b", "\\", "%5c", "~", "%zz", "%00", "|", "admin%20"])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=150)
@given(st.lists(_SEGMENTS, min_size=1, max_size=8), st.booleans())
def test_every_target_the_relay_forwards_is_normal_and_the_rules_saw_that_form(segments, absolute):
    hook, seen = commands()
    r = relay([hook])
    raw = "/" + "/".join(segments)
    target = ("http://gw" + raw) if absolute else raw
    r.send(get(target))
    if not r.reactor.tcpClients:
        # Refused: with a 400, before any rule or backend saw it.
        assert status(r.sent()) == 400 and seen == []
        try:
            normalizeTarget(target.encode(), b"GET")
        except TargetRefused:
            return
        raise AssertionError(f"{target!r} was refused but normalizes")
    forwarded = r.connectBackend().value().split(b" ", 2)[1]
    assert normalizeTarget(forwarded, b"GET").originForm == forwarded
    [(text, details)] = seen
    assert text == "GET " + forwarded.decode() and details["path"] == forwarded.split(b"?")[0].decode()
    assert not any(s in (b".", b"..") for s in forwarded.split(b"/"))


def test_the_relay_factory_speaks_the_negotiation_interface():
    from twisted.internet.interfaces import IProtocolNegotiationFactory

    assert verifyObject(IProtocolNegotiationFactory, relay().factory)


def test_an_answer_on_a_live_session_is_recorded_after_the_request_it_answers():
    r = relay(path_prefix="/app")
    r.send(get("/app/x"))
    r.connectBackend()
    r.answer(response())
    r.send(get("/elsewhere"))
    recording = r.session.recording
    assert status(r.sent().split(b"hello", 1)[1]) == 404
    assert recording.frames[-2][:2] == (0, get("/elsewhere").replace(b"Bearer " + KEY.encode(), b"[redacted]"))
    assert recording.frames[-1][0] == 1 and b" 404 " in recording.frames[-1][1]


def test_what_a_client_claims_about_its_origin_is_replaced_not_passed_on():
    r = relay()
    r.send(get("/x", extra="Forwarded: for=10.0.0.1;host=admin.internal\r\nX-Real-IP: 10.0.0.1\r\n"
                           "X-Forwarded-Host: admin.internal\r\nX-Forwarded-Port: 443\r\n"))
    head = r.connectBackend().value().lower()
    assert b"forwarded: for" not in head and b"x-real-ip" not in head and b"x-forwarded-port" not in head
    assert b"x-forwarded-host: gw\r\n" in head and b"admin.internal" not in head


def test_chunk_framing_and_trailers_count_toward_max_body():
    r = relay(max_body=1024)
    r.send(get("/x", "POST", "Transfer-Encoding: chunked\r\n") + b"1\r\na\r\n0\r\n")
    for _ in range(40):
        r.send(b"X-Trailer: " + b"t" * 2000 + b"\r\n")
    assert status(r.sent()) == 413 and r.reactor.tcpClients == []


def _oneOf(good, *bad):
    """Mostly C{good}, sometimes one of the bad variants."""
    return st.one_of(st.just(good), st.just(good), st.sampled_from(bad)) if bad else st.just(good)


_REQUESTS = st.builds(
    lambda method, target, version, host, auth, framing, extra, end: (
        method + b" " + target + b" " + version + b"\r\n" + host + auth + framing + extra + end),
    _oneOf(b"GET", b"POST", b"G(T", b"", b"GET /"),
    st.sampled_from([b"/x", b"/a/../b", b"/%2e%2e/x", b"/a%2Fb", b"http://gw/a", b"//x", b"/%", b"x",
                     b"/a\\b", b"*"]),
    _oneOf(b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"),
    _oneOf(b"Host: gw\r\n", b"", b"Host: gw\r\nHost: gx\r\n", b"Host: a b\r\n"),
    _oneOf(b"Authorization: Bearer " + KEY.encode() + b"\r\n", b"", b"Authorization: Bearer nope\r\n"),
    st.sampled_from([b"", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
                     b"Transfer-Encoding: xchunked\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n",
                     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"]),
    _oneOf(b"", b"X-A: \x00\r\n", b" folded\r\n", b"X-A: 1\nX-B: 2\r\n", b"Bad Name: 1\r\n"),
    st.sampled_from([b"\r\n", b"\r\nhello", b"\r\n5\r\nhello\r\n0\r\n\r\n", b"\r\nzz\r\n", b""]),
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=200)
@given(_REQUESTS, st.integers(min_value=1, max_value=64))
def test_any_bytes_get_a_response_or_a_wait_never_a_gateway_error(data, step):
    r = relay()
    for i in range(0, len(data), step):
        r.send(data[i:i + step])    # must not raise: a bad request is the client's problem only
    out = r.sent()
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    event("forwarded" if r.reactor.tcpClients else "answered" if out else "waiting")
    if r.reactor.tcpClients:
        # What reaches a backend is one strict, normalized head.
        head = r.connectBackend().value().split(b"\r\n\r\n", 1)[0]
        parsed = _wire.parseHeadIndexed(head, False, strict=True)[0]
        assert normalizeTarget(parsed.target, parsed.method).originForm == parsed.target
    for status_ in (int(line.split(b" ")[1]) for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")):
        assert status_ != 500


def test_a_backend_tcp_connection_reads_more_than_twisteds_64k_at_a_time():
    from twisted.internet import tcp

    from sealgate.protocols.http._pool import READ_SIZE, BackendConnection

    class Plain(FakeTransport):
        bufferSize = tcp.Connection.bufferSize  # what a tcp.Client has

    assert READ_SIZE > tcp.Connection.bufferSize
    conn = BackendConnection(pool=None)
    plain = Plain()
    conn.makeConnection(plain)
    assert plain.bufferSize == READ_SIZE
    # A transport without Twisted's read size (TLS over another transport) is left alone.
    other = FakeTransport()
    BackendConnection(pool=None).makeConnection(other)
    assert not hasattr(other, "bufferSize")
