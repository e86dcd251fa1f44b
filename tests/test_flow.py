"""The core's decision and output steps, reactor-free: verdicts, holds, masking, hooks, recording, pressure."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

import sealgate
from sealgate import (
    ALLOWED,
    CANNOT_REWRITE,
    CONTINUE,
    FROM_CLIENT,
    TO_CLIENT,
    Deny,
    Hold,
    Leg,
    OutputRefused,
    Rewrite,
    unmasked,
)
from sealgate.chain.masking import MaskingInterceptor
from sealgate.chain.rules import RulesInterceptor
from sealgate.config import MaskingConfig
from sealgate.interfaces import IRecordingStore, ISessionRecording
from sealgate.masking import Masker, MaskingFailed
from sealgate.testing import (
    CommandInterceptor,
    FakeRecording,
    FakeStore,
    FakeTransport,
    OutputRecorder,
    fakeGateway,
    fakeSession,
    rule,
)

CARD = b"4111 1111 1111 1111"


def masking():
    return MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card",))))


def attached(s):
    client, backend = FakeTransport(), FakeTransport()
    s.attach(client, backend)
    return client, backend


def commands(s):
    return s.recording.eventsOf("command")


# -- decide ------------------------------------------------------------------------


def test_allowed_command_is_one_shared_decision_audited_once():
    s = fakeSession([CommandInterceptor(None)])
    d = s.decide("line", "hello")
    assert d is ALLOWED and d.allowed and d.pending is None
    assert [(e["verdict"], e["command"]) for e in commands(s)] == [("allow", "hello")]


def test_reported_allow_leaves_the_audit_to_the_protocol_but_not_a_deny():
    s = fakeSession([CommandInterceptor(None)])
    assert s.decide("sql", "select 1", reported=True) is ALLOWED
    assert commands(s) == []
    s2 = fakeSession([CommandInterceptor(Deny("r", "no"))])
    assert s2.decide("sql", "drop", reported=True).verdict == Deny("r", "no")
    assert [e["verdict"] for e in commands(s2)] == ["deny"]


def test_rewrite_is_applied_where_the_protocol_can():
    s = fakeSession([CommandInterceptor(Rewrite("select 2"), name="rewriter")])
    d = s.decide("sql", "select 1")
    assert d.verdict == Rewrite("select 2") and d.verdict.rule == "rewriter"
    assert [(e["verdict"], e["rule"]) for e in commands(s)] == [("rewrite", "rewriter")]


def test_rewrite_where_the_protocol_cannot_is_an_audited_deny():
    s = fakeSession([CommandInterceptor(Rewrite("get /other"), name="rewriter")])
    d = s.decide("sftp", "get /etc/passwd", rewritable=False)
    assert d.verdict == Deny("rewriter", CANNOT_REWRITE)
    [event] = commands(s)
    assert (event["verdict"], event["rule"], event["reason"]) == ("deny", "rewriter", CANNOT_REWRITE)


def test_hold_pauses_the_client_leg_until_approved():
    gw = fakeGateway([RulesInterceptor([rule("deploys", "approve", matchers={"commands": ["^deploy"]})],
                                       None)])
    gw.chain.interceptors[0]._approvals = gw.approvals
    s = fakeSession(gateway=gw)
    client, backend = attached(s)
    d = s.decide("line", "deploy v2")
    assert d.held and isinstance(d.verdict, Hold)
    assert client.producerState == "paused" and backend.producerState == "producing"
    got = []
    d.pending.addCallback(got.append)
    ticket = gw.approvals.get(d.verdict.ticket)
    gw.approvals.approve(ticket.id, sealgate.Identity("bob", {"leads"}))
    assert got == [CONTINUE] and client.producerState == "producing"
    assert [(e["verdict"], e.get("decided", False)) for e in commands(s)] == [
        ("hold", False), ("allow", True)]


def test_hold_that_expires_is_a_deny_and_resumes():
    reactor = MemoryReactorClock()
    gw = fakeGateway(reactor=reactor)
    gw.chain = sealgate.Chain([RulesInterceptor(
        [rule("deploys", "approve", matchers={"commands": ["^deploy"]}, expires=30.0)], gw.approvals)])
    s = fakeSession(gateway=gw)
    client, _ = attached(s)
    d = s.decide("line", "deploy v2")
    got = []
    d.pending.addCallback(got.append)
    reactor.advance(29)
    assert got == [] and client.producerState == "paused"
    reactor.advance(2)
    assert isinstance(got[0], Deny) and "expired" in got[0].reason
    assert client.producerState == "producing"
    assert commands(s)[-1]["verdict"] == "deny" and commands(s)[-1]["decided"]


def test_an_approval_that_fails_or_decides_nonsense_is_a_deny():
    for outcome in (lambda d: d.errback(RuntimeError("approver service down")),
                    lambda d: d.callback("yes please")):
        result: Deferred = Deferred()
        s = fakeSession([CommandInterceptor(Hold("t1", "wait", result))])
        client, _ = attached(s)
        got = []
        s.decide("line", "deploy").pending.addCallback(got.append)
        outcome(result)
        assert got == [Deny("approval", "the approval could not be decided")]
        assert client.producerState == "producing"
        result.addErrback(lambda f: None)


def test_approved_rewrite_on_a_protocol_that_cannot_is_a_deny():
    result: Deferred = Deferred()
    s = fakeSession([CommandInterceptor(Hold("t1", "wait", result))])
    got = []
    s.decide("sftp", "put x", rewritable=False).pending.addCallback(got.append)
    result.callback(Rewrite("put y", "approver"))
    assert got == [Deny("approver", CANNOT_REWRITE)]


def test_session_end_settles_a_pending_hold_as_a_deny():
    result: Deferred = Deferred()
    s = fakeSession([CommandInterceptor(Hold("t1", "wait", result))])
    got = []
    s.decide("line", "deploy").pending.addCallback(got.append)
    s.end("client closed")
    assert got == [Deny("approval", "session ended")]
    result.callback(CONTINUE)  # too late: changes nothing
    assert got == [Deny("approval", "session ended")]


def test_hold_pauses_what_the_protocol_names_instead_of_the_client_leg():
    result: Deferred = Deferred()
    s = fakeSession([CommandInterceptor(Hold("t1", "wait", result))])
    client, _ = attached(s)
    channel = FakeTransport()
    s.decide("exec", "deploy", hold=channel)
    assert channel.producerState == "paused" and client.producerState == "producing"
    result.callback(CONTINUE)
    assert channel.producerState == "producing"


# -- emit / send ------------------------------------------------------------------


def test_emit_masks_then_runs_output_hooks_then_records():
    hook = OutputRecorder()
    s = fakeSession([masking(), hook])
    out = s.emit(b"pay " + CARD, channel=3, stream="data")
    assert CARD not in out and out.startswith(b"pay ")
    assert hook.seen == [(out, {"channel": 3, "stream": "data", "masked": True})]
    assert s.recording.frames == [(TO_CLIENT, out, 3)]
    assert s.bytesToClient == len(out)


def test_emit_without_masking_passes_bytes_and_hooks_see_them_unmasked_flagged():
    hook = OutputRecorder()
    s = fakeSession([hook])
    assert s.emit(CARD) == CARD
    assert hook.seen == [(CARD, {"channel": 0, "masked": False})]


def test_registered_output_masker_handles_its_channel_only():
    s = fakeSession([masking()])
    s.setOutputMasker(lambda data, ctx: data.upper(), channel=1)
    s.setOutputMasker(unmasked, channel=2)
    assert s.emit(b"abc", channel=1) == b"ABC"
    assert s.emit(CARD, channel=2) == CARD
    assert CARD not in s.emit(CARD, channel=0)


def test_refused_output_is_not_recorded_and_the_refusal_is_sealed():
    s = fakeSession([OutputRecorder(refuse=True)])
    with pytest.raises(OutputRefused, match="not for you"):
        s.emit(b"secret", channel=5)
    assert s.recording.bytesTo() == b""
    assert s.recording.eventsOf("output_refused") == [{"channel": 5, "reason": "not for you"}]


def test_a_masker_that_cannot_vet_refuses_and_a_broken_one_too():
    for error in (MaskingFailed("too deep"), KeyError("bug")):
        s = fakeSession([masking()])

        def broken(data, ctx, error=error):
            raise error

        s.setOutputMasker(broken)
        with pytest.raises(OutputRefused, match="output could not be checked"):
            s.emit(b"x")
        assert s.recording.frames == []
        assert s.recording.eventsOf("output_refused")


def test_nothing_is_emitted_after_the_session_ended():
    s = fakeSession()
    s.end()
    with pytest.raises(OutputRefused):
        s.emit(b"late")


def test_send_writes_exactly_what_emit_returned():
    s = fakeSession([masking()])
    t = FakeTransport()
    s.send(t, b"card " + CARD)
    assert t.value() == s.recording.bytesTo() and CARD not in t.value()
    s.send(t, b"")
    assert t.value() == s.recording.bytesTo()


def test_received_records_client_input():
    s = fakeSession()
    s.received(b"hello", channel=2)
    assert s.recording.frames == [(FROM_CLIENT, b"hello", 2)] and s.bytesFromClient == 5


# -- legs and store pressure ---------------------------------------------------------


def test_store_pressure_pauses_and_resumes_every_leg_of_every_session():
    gw = fakeGateway()
    a, b = fakeSession(gateway=gw), fakeSession(gateway=gw)
    legs = attached(a) + attached(b)
    gw.store.setPressure("paused", "the recording backlog is over max_unsealed")
    assert all(t.producerState == "paused" for t in legs)
    gw.store.setPressure("paused", "the disk is full")
    assert all(t.pauses == 1 for t in legs)
    gw.store.setPressure("flowing")
    assert all(t.producerState == "producing" for t in legs)


def test_a_session_attached_while_the_store_is_paused_starts_paused():
    gw = fakeGateway()
    gw.store.setPressure("paused", "the recording store is restarting")
    s = fakeSession(gateway=gw)
    client, backend = attached(s)
    assert client.producerState == backend.producerState == "paused"
    gw.store.setPressure("flowing")
    assert client.producerState == backend.producerState == "producing"


def test_backpressure_cannot_resume_a_leg_paused_for_the_store_or_a_hold():
    gw = fakeGateway()
    s = fakeSession(gateway=gw)
    client, backend = attached(s)
    gw.store.setPressure("paused", "the disk is full")
    s.backendLeg.pauseProducing()   # the client's write buffer filled...
    s.backendLeg.resumeProducing()  # ...and drained
    assert backend.producerState == "paused"
    gw.store.setPressure("flowing")
    assert backend.producerState == "producing"


def test_store_failure_ends_every_session_in_its_protocol_words_sealed_store_failed():
    gw = fakeGateway()
    sessions = [fakeSession(gateway=gw) for _ in range(2)]
    said = []
    for s in sessions:
        s.abort = lambda message, s=s: (said.append(message), s.end("client disconnected"))
    gw.store.setPressure("failed", "the recording store is restarting")
    assert len(said) == 2 and all("recording store failed" in m for m in said)
    assert [s.recording.closed[0] for s in sessions] == ["store failed", "store failed"]
    assert gw.sessions == {}


def test_store_failure_ends_a_session_without_an_abort_too():
    gw = fakeGateway()
    s = fakeSession(gateway=gw)
    gw.store.setPressure("failed", "the disk is full")
    assert s.ended and s.recording.closed[0] == "store failed"


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["hold", "store", "backpressure", "x"]))))
def test_a_leg_is_paused_exactly_while_some_reason_holds_it(steps):
    t = FakeTransport()
    leg = Leg(t)
    counts: dict = {}
    for pause, reason in steps:
        if pause:
            leg.pause(reason)
            counts[reason] = counts.get(reason, 0) + 1
        else:
            leg.resume(reason)
            if counts.get(reason):
                counts[reason] -= 1
        expected = any(counts.values())
        assert (t.producerState == "paused") == expected == leg.paused


def test_the_fakes_provide_the_interfaces():
    assert verifyObject(IRecordingStore, FakeStore())
    assert verifyObject(ISessionRecording, FakeRecording("s"))


def test_the_masking_interceptor_is_not_asked_again_about_output_the_core_masked():
    calls = []

    class Counting(MaskingInterceptor):
        def output(self, hook):
            calls.append(hook.data)
            return super().output(hook)

    hook = OutputRecorder()
    s = fakeSession([Counting(masking().masker), hook])
    out = s.emit(b"pay " + CARD)
    assert calls == [] and hook.seen[0][0] == out
    # A protocol still calling the chain itself with unmasked data is masked there.
    assert CARD not in s.chain.output(CARD)
    assert calls == [CARD]


@given(st.permutations(range(4)), st.lists(st.booleans(), min_size=4, max_size=4))
def test_the_client_leg_is_paused_exactly_while_a_hold_is_pending(order, approve):
    results = [Deferred() for _ in range(4)]
    pick = iter(results)
    s = fakeSession([CommandInterceptor(lambda hook: Hold("t", "wait", next(pick)))])
    client, _ = attached(s)
    s.gateway.store.setPressure("paused", "the disk is full")
    finals = []
    for _ in results:
        s.decide("line", "deploy").pending.addCallback(finals.append)
    for n, i in enumerate(order):
        results[i].callback(CONTINUE if approve[i] else Deny("r", "no"))
        assert client.producerState == "paused"  # the store still holds it
        assert s.clientLeg.pausedFor("hold") == (n < 3)
    s.gateway.store.setPressure("flowing")
    assert client.producerState == "producing"
    assert sorted(map(repr, finals)) == sorted(
        repr(CONTINUE if a else Deny("r", "no")) for a in approve)
