"""The HTTP relay without sockets, on the core's steps: deny, rewrite, holds, output hooks, masking, pressure, backend timeouts, normalized forwarding."""

import ast
import json
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
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
from sealgate.testing import FakeIdentities, FakeTransport, fakeGateway
from sealgate.testing import OutputRecorder as Sees
from tests.test_pg_relay import rule

CARD = b"4111 1111 1111 1111"
KEY = "tok-alice"
WHERE = Where("sealgate.toml", "connections[0] (web).options")


@attrs.define
class Commands:
    """Keeps each command it is asked about; rewrites one target, if told to."""

    name: str = "commands"
    seen: list = attrs.field(factory=list)
    rewrite: str | None = None

    def appliesTo(self, session):
        return True

    def command(self, hook):
        self.seen.append((hook.text, dict(hook.details)))
        return Rewrite("GET /elsewhere") if self.rewrite and self.rewrite in hook.text else None


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


def relay(interceptors=(), rules=(), **options) -> Relay:
    reactor = MemoryReactorClock()
    gw = fakeGateway(reactor=reactor, identities=FakeIdentities({KEY: Identity("alice", {"eng"})}))
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
    r = relay([Commands(rewrite="/original")])
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
    hook = Sees()
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


def test_an_output_hook_that_refuses_gets_the_client_a_502_not_the_body():
    r = relay([Sees(refuse=True)])
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
    seen = Commands()
    r = relay([seen])
    raw = "/" + "/".join(segments)
    target = ("http://gw" + raw) if absolute else raw
    r.send(get(target))
    if not r.reactor.tcpClients:
        # Refused: with a 400, before any rule or backend saw it.
        assert status(r.sent()) == 400 and seen.seen == []
        try:
            normalizeTarget(target.encode(), b"GET")
        except TargetRefused:
            return
        raise AssertionError(f"{target!r} was refused but normalizes")
    forwarded = r.connectBackend().value().split(b" ", 2)[1]
    assert normalizeTarget(forwarded, b"GET").originForm == forwarded
    [(text, details)] = seen.seen
    assert text == "GET " + forwarded.decode() and details["path"] == forwarded.split(b"?")[0].decode()
    assert not any(s in (b".", b"..") for s in forwarded.split(b"/"))


def test_the_relay_factory_speaks_the_negotiation_interface():
    from twisted.internet.interfaces import IProtocolNegotiationFactory

    assert verifyObject(IProtocolNegotiationFactory, relay().factory)


_ALLOWED_WRITES = {
    # Requests to a backend connection, never to a client.
    ("_backend.py", "_send"), ("_upgrade.py", "fromClient"), ("_upgrade.py", "backendUp"),
    # The client connection's one send: the output step, or an unrecorded
    # refusal before any session, or a head whose secret values only the
    # recording leaves out.
    ("_relay.py", "send"),
}


def test_nothing_in_the_http_package_writes_to_a_client_outside_the_output_step():
    package = Path(_wire.__file__).parent
    found = set()
    for path in package.glob("*.py"):
        if path.name == "har.py":
            continue    # writes exports to a file, never to a connection
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                if isinstance(f, ast.Name):
                    writes = f.id == "writeNow"
                elif isinstance(f, ast.Attribute):
                    # A request body's spool file is the one other thing written.
                    writes = (f.attr in ("write", "writeSequence", "writeNow")
                              and ast.unparse(f.value) != "spool") or f.attr == "refuse"
                else:
                    writes = False
                if writes:
                    found.add((path.name, fn.name))
    assert found == _ALLOWED_WRITES


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
