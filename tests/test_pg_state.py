"""The postgres client leg's state machines: every legal transition, every other one refused, and the relay paused exactly while a hold is pending."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from sealgate import Identity
from sealgate.chain.rules import RulesInterceptor
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._state import (
    FLOW_TABLE,
    PHASE_TABLE,
    Flow,
    FlowEvent,
    LocalProtocolError,
    Phase,
    PhaseEvent,
    Statement,
    flowStep,
    phaseStep,
)
from sealgate.testing import rule
from tests.test_pg_relay import relay

#: What the leg may do, written out here (not read from the module).
LEGAL_PHASES = {
    (Phase.STARTUP, PhaseEvent.STARTUP_SENT): Phase.PASSWORD,
    (Phase.PASSWORD, PhaseEvent.PASSWORD_SENT): Phase.LOGIN,
    (Phase.LOGIN, PhaseEvent.BACKEND_READY): Phase.READY,
    **{(p, PhaseEvent.CLOSE): Phase.CLOSED for p in Phase},
}
LEGAL_FLOWS = {
    (Flow.FLOWING, FlowEvent.HOLD): Flow.HELD,
    (Flow.HELD, FlowEvent.DECIDED): Flow.FLOWING,
}


@pytest.mark.parametrize(("state", "event"), list(LEGAL_PHASES))
def test_each_legal_phase_transition_goes_where_it_should(state, event):
    assert phaseStep(state, event) is LEGAL_PHASES[state, event]


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in Phase for e in PhaseEvent
                                              if (s, e) not in LEGAL_PHASES])
def test_every_other_phase_transition_is_refused(state, event):
    with pytest.raises(LocalProtocolError, match=state.value):
        phaseStep(state, event)


@pytest.mark.parametrize(("state", "event"), [(s, e) for s in Flow for e in FlowEvent])
def test_flow_transitions_are_exactly_hold_then_decided(state, event):
    if (state, event) in LEGAL_FLOWS:
        assert flowStep(state, event) is LEGAL_FLOWS[state, event]
    else:
        with pytest.raises(LocalProtocolError):
            flowStep(state, event)


def test_the_tables_hold_nothing_more_than_the_legal_transitions():
    assert PHASE_TABLE == LEGAL_PHASES and FLOW_TABLE == LEGAL_FLOWS


def _errors(data: bytes) -> list[w.ErrorResponse]:
    r = w.Reader(frontend=False)
    r.receive_data(data)
    out = []
    while (f := r.next_event()) is not w.NEED_DATA:
        m = w.decodeFrame(f, False)
        if isinstance(m, w.ErrorResponse):
            out.append(m)
    return out


def test_a_second_ready_from_the_login_closes_the_leg_with_one_protocol_error():
    leg, client, backend, s = relay()
    leg.backendReady(w.ReadyForQuery("I").encode())
    [err] = _errors(client.value())
    assert (err.get("S"), err.get("C")) == ("FATAL", "08P01")
    assert "'backend ready' cannot happen in state 'ready'" in err.get("M")
    assert leg.phase is Phase.CLOSED and client.disconnecting
    leg.fatal("XX000", "again")  # a closed leg tells the client once
    assert len(_errors(client.value())) == 1


def test_a_cancel_request_before_login_closes_the_leg():
    leg, client, backend, s = relay()
    leg.phase = Phase.STARTUP
    leg.reader = w.Reader(frontend=True, startup=True)
    asked = []
    leg.factory.cancel = lambda pid, key: asked.append((pid, key))
    leg.dataReceived(w.CancelRequest(1, 2).encode())
    assert asked == [(1, 2)] and leg.phase is Phase.CLOSED and client.disconnecting


def test_pending_statements_are_named_records_audited_with_their_outcome():
    leg, client, backend, s = relay([lambda gw: RulesInterceptor(
        [rule("no-drop", "deny", matchers={"statements": ["DROP"]})], gw.approvals)])
    leg.dataReceived(w.Query("select 1").encode())
    [entry] = leg._pending
    assert isinstance(entry, Statement) and (entry.text, entry.execute) == ("select 1", False)
    leg.fromBackend(w.CommandComplete("SELECT 3").encode() + w.ReadyForQuery("I").encode())
    assert not leg._pending
    [event] = s.recording.eventsOf("statement")
    assert (event["text"], event["rows"], event["verdict"]) == ("select 1", 3, "allow")


# -- held statements, over random sequences ---------------------------------------------

_ACTIONS = st.sampled_from(["held", "plain", "approve", "deny", "expire", "cancel", "reply"])


@settings(max_examples=80, deadline=None)
@given(st.lists(_ACTIONS, max_size=25))
def test_the_leg_is_paused_exactly_while_a_hold_is_pending(actions):
    reactor = MemoryReactorClock()
    leg, client, backend, s = relay([lambda gw: RulesInterceptor(
        [rule("deletes", "approve", matchers={"statements": ["DELETE"]})], gw.approvals)],
        reactor)
    approvals = s.gateway.approvals
    bob = Identity("bob", {"leads"})
    sent = 0  # statements the client sent, in order
    for action in actions:
        if action in ("held", "plain"):
            sent += 1
            text = f"delete from t{sent}" if action == "held" else f"select {sent}"
            leg.dataReceived(w.Query(text).encode())
        elif action in ("approve", "deny") and approvals.pending():
            ticket = approvals.pending()[0]
            (approvals.approve if action == "approve" else approvals.deny)(ticket.id, bob)
        elif action == "expire":
            reactor.advance(31)
        elif action == "cancel":
            leg.cancelQuery()
        elif action == "reply":
            leg.fromBackend(w.ReadyForQuery("I").encode())
        held = leg.flow is Flow.HELD
        assert (leg._held is not None) == held
        assert bool(approvals.pending()) == held
        assert (client.producerState == "paused") == held
        assert s.clientLeg.pausedFor("hold") == held
        if held:  # the held statement itself has not reached the backend
            assert leg._held.frame.raw not in backend.value()
    assert leg.phase is Phase.READY
