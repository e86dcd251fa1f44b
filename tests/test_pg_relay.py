"""The postgres relay without sockets: both legs are StringTransports, the gateway a fake (deny, hold, rewrite, masking, hooks, pressure)."""

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from sealgate import Identity, Rewrite
from sealgate.chain.masking import MaskingInterceptor
from sealgate.chain.rules import RulesInterceptor
from sealgate.config import ConnectionConfig, MaskingConfig
from sealgate.masking import Masker
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._client import ClientLeg
from sealgate.protocols.postgres._state import Phase
from sealgate.protocols.postgres.plugin import PostgresOptions
from sealgate.testing import (
    CommandInterceptor,
    FakeTransport,
    OutputRecorder,
    fakeGateway,
    fakeSession,
    rule,
)

CARD = "4111 1111 1111 1111"


@attrs.define
class _Backend:
    transport: FakeTransport = attrs.field(factory=FakeTransport)
    pid: int = 7
    key: int = 8


class _Factory:
    def __init__(self, gateway):
        self.gateway = gateway
        self.options = PostgresOptions("app", "app")
        self.tlsContext = None
        self.backendTLS = lambda connection: None
        self.connection = ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=h:port=1", self.options)

    def register(self, leg, pid=None):
        return (1, 2)

    def unregister(self, leg):
        pass


def relay(interceptors=(), reactor=None):
    """A client leg past login: session open, backend ready, both legs attached."""
    gw = fakeGateway(reactor=reactor or MemoryReactorClock())
    gw.chain = gw.chain.__class__([i if not callable(i) else i(gw) for i in interceptors])
    leg = ClientLeg(_Factory(gw))
    client = FakeTransport()
    leg.makeConnection(client)
    leg.connection = ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=h:port=1",
                                      leg.factory.options)
    leg.session = fakeSession(gateway=gw, protocol="postgres", connection="db")
    leg.session.abort = leg._abort
    leg.login.authenticated()  # past login: the pre-login guard's timer is done
    leg.phase = Phase.LOGIN  # the client's login is what this helper skips
    leg.startOutput()
    backend = _Backend()
    leg.backendConnected(backend)
    leg.backendReady(w.ReadyForQuery("I").encode())
    client.clear()
    return leg, client, backend.transport, leg.session


def rows(*values, name="card"):
    return (w.RowDescription((w.Column(name),)).encode()
            + b"".join(w.DataRow((v.encode(),)).encode() for v in values)
            + w.CommandComplete(f"SELECT {len(values)}").encode()
            + w.ReadyForQuery("I").encode())


def masking(gw=None):
    return MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card",))))


def test_output_hooks_see_every_byte_postgres_sends():
    hook = OutputRecorder()
    leg, client, backend, s = relay([hook])
    leg.dataReceived(w.Query("select card from t").encode())
    leg.fromBackend(rows("a", "b"))
    notice = w.NoticeResponse.make("NOTICE", "00000", "hello").encode()
    leg.fromBackend(notice)
    login = w.BackendKeyData(1, 2).encode() + w.ReadyForQuery("I").encode()
    assert hook.shown() == s.recording.bytesTo() == login + client.value()
    assert client.value().endswith(notice)


def test_the_login_replies_pass_the_output_step_too():
    hook = OutputRecorder()
    leg, client, backend, s = relay([hook])
    ready = w.BackendKeyData(1, 2).encode() + w.ReadyForQuery("I").encode()
    assert hook.shown() == ready and s.recording.bytesTo() == ready


def test_denied_statement_is_swapped_for_the_servers_own_42501():
    leg, client, backend, s = relay([lambda gw: RulesInterceptor(
        [rule("no-drop", "deny", matchers={"statements": ["DROP"]})], gw.approvals)])
    leg.dataReceived(w.Query("drop table users").encode())
    sent = backend.value()
    assert b"drop table users" not in sent and b"42501" in sent and b"no-drop" in sent
    [event] = s.recording.eventsOf("command")
    assert (event["verdict"], event["rule"]) == ("deny", "no-drop")


def test_rewrite_is_what_the_backend_runs():
    leg, client, backend, s = relay([CommandInterceptor(
        lambda hook: Rewrite("select 2") if hook.text == "select 1" else None)])
    leg.dataReceived(w.Query("select 1").encode())
    assert backend.value() == w.Query("select 2").encode()


def _held(reactor):
    leg, client, backend, s = relay([lambda gw: RulesInterceptor(
        [rule("deletes", "approve", matchers={"statements": ["DELETE"]})], gw.approvals)],
        reactor)
    leg.dataReceived(w.Query("delete from t").encode() + w.Query("select 1").encode())
    return leg, client, backend, s


def test_held_statement_waits_paused_then_runs_after_approval():
    leg, client, backend, s = _held(MemoryReactorClock())
    assert backend.value() == b"" and client.producerState == "paused"
    assert b"ticket " in client.value()  # the NOTICE telling the client to wait
    [ticket] = s.gateway.approvals.pending()
    s.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}))
    assert backend.value() == w.Query("delete from t").encode() + w.Query("select 1").encode()
    assert client.producerState == "producing"


def test_held_statement_that_expires_becomes_a_denial_and_the_session_goes_on():
    reactor = MemoryReactorClock()
    leg, client, backend, s = _held(reactor)
    reactor.advance(31)
    sent = backend.value()
    assert b"delete from t" not in sent and b"expired" in sent
    assert sent.endswith(w.Query("select 1").encode())
    assert client.producerState == "producing"


def test_rows_are_masked_before_hooks_recording_and_the_client():
    hook = OutputRecorder()
    leg, client, backend, s = relay([masking(), hook])
    leg.dataReceived(w.Query("select card from t").encode())
    leg.fromBackend(rows(f"pay {CARD}"))
    assert CARD.encode() not in client.value() and b"pay " in client.value()
    assert CARD.encode() not in s.recording.bytesTo()
    assert hook.seen[-1] == (client.value(), {"channel": 0, "masked": True})
    # The masked reply still frames: the client's reader takes it whole.
    reader = w.Reader(frontend=False)
    reader.receive_data(client.value())
    assert [type(m).__name__ for m in iter(lambda: _next(reader), None)] == [
        "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]


def _next(reader):
    ev = reader.next_event()
    return None if ev is w.NEED_DATA else w.decodeFrame(ev, False)


def test_output_nobody_could_vet_ends_the_session_unsent():
    hook = OutputRecorder()
    leg, client, backend, s = relay([hook])
    hook.refuse = True
    leg.fromBackend(rows("a"))
    assert client.value() == b"" and client.disconnecting
    assert s.recording.eventsOf("output_refused")


def test_store_pressure_pauses_both_legs_and_flowing_resumes_them():
    leg, client, backend, s = relay()
    s.gateway.store.setPressure("paused", "the disk is full")
    assert client.producerState == backend.producerState == "paused"
    # The client's buffer draining must not resume the backend early.
    s.backendLeg.pauseProducing()
    s.backendLeg.resumeProducing()
    assert backend.producerState == "paused"
    s.gateway.store.setPressure("flowing")
    assert client.producerState == backend.producerState == "producing"


def test_store_failure_ends_the_session_with_fatal_58030_sealed_store_failed():
    leg, client, backend, s = relay()
    s.gateway.store.setPressure("failed", "the recording store is restarting")
    reader = w.Reader(frontend=False)
    reader.receive_data(client.value())
    err = _next(reader)
    assert err.get("S") == "FATAL" and err.get("C") == "58030"
    assert "recording store failed" in err.get("M")
    assert client.disconnecting
    assert s.recording.closed[0] == "store failed"


def test_the_legs_are_each_others_producers_through_the_core():
    leg, client, backend, s = relay()
    assert client.producer is s.backendLeg and backend.producer is s.clientLeg
    client.producer.pauseProducing()  # the client reads slowly: the backend waits
    assert backend.producerState == "paused"
    client.producer.resumeProducing()
    assert backend.producerState == "producing"


def test_cancel_request_for_a_held_statement_withdraws_its_ticket():
    leg, client, backend, s = _held(MemoryReactorClock())
    leg.cancelQuery()
    sent = backend.value()
    assert b"delete from t" not in sent and b"cancelled" in sent
    assert s.gateway.approvals.pending() == []
    assert client.producerState == "producing"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), st.booleans()), min_size=1, max_size=8),
       st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_masked_replies_keep_their_framing_however_the_backend_splits_them(values, cuts):
    leg, client, backend, s = relay([masking()])
    leg.dataReceived(w.Query("select card from t").encode())
    texts = [f"{v} {CARD} end" if card else v for v, card in values]
    data = rows(*texts)
    pos = 0
    for n in cuts:
        leg.fromBackend(data[pos:pos + n])
        pos += n
    leg.fromBackend(data[pos:])
    out = client.value()
    assert out == s.recording.bytesTo()[-len(out):]
    reader = w.Reader(frontend=False)
    reader.receive_data(out)
    messages = list(iter(lambda: _next(reader), None))
    assert [type(m).__name__ for m in messages] == (
        ["RowDescription"] + ["DataRow"] * len(texts) + ["CommandComplete", "ReadyForQuery"])
    assert CARD.encode() not in out


def test_a_malformed_message_read_during_a_hold_ends_the_session_with_08P01_once_decided():
    leg, client, backend, s = _held(MemoryReactorClock())
    leg.dataReceived(b"E\x00\x00\x00\x08abcd")  # buffered while held (a TLS leg may still deliver)
    [ticket] = s.gateway.approvals.pending()
    s.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}))
    r = w.Reader(frontend=False)
    r.receive_data(client.value())
    last = None
    while (f := r.next_event()) is not w.NEED_DATA:
        last = w.decodeFrame(f, False)
    assert isinstance(last, w.ErrorResponse) and last.get("C") == "08P01", last
    assert "malformed Execute" in last.get("M")
    assert client.disconnecting
