"""Approval tickets: who may decide, N-of-M, expiry and cancellation, all failing closed."""

import pytest
from twisted.internet import task

from sealgate.approvals import ApprovalError, Approvals
from sealgate.chain.verdicts import CONTINUE, Deny
from sealgate.identity import Identity
from tests.test_chain import rule, session

LEAD = Identity("bob", {"leads"})
LEAD2 = Identity("carol", {"leads"})
OUTSIDER = Identity("mallory", {"eng"})


def ticketFor(approvals, sid="s1", **kw):
    s = session(sid=sid)
    t = approvals.request(s, rule("jit", "approve", approvers=("leads",), **kw), "sql", "DROP TABLE t")
    results = []
    t.result.addCallback(results.append)
    return s, t, results


def test_approval_lets_the_command_run():
    a = Approvals(task.Clock())
    s, t, results = ticketFor(a)
    a.approve(t.id, LEAD, "looks fine")
    assert results == [CONTINUE] and t.state == "approved" and t.decidedBy == "oidc:sealgate#bob"
    states = [f["state"] for kind, f in s.recording.events if kind == "approval"]
    assert states == ["requested", "approval", "approved"]


def test_denial_carries_the_approver_and_reason():
    a = Approvals(task.Clock())
    _, t, results = ticketFor(a)
    a.deny(t.id, LEAD, "not during the freeze")
    assert results == [Deny("jit", "denied by oidc:sealgate#bob: not during the freeze")]


def test_requester_cannot_approve_own_ticket():
    a = Approvals(task.Clock())
    _, t, results = ticketFor(a)
    with pytest.raises(ApprovalError, match="own ticket"):
        a.approve(t.id, Identity("alice", {"leads"}))
    assert results == [] and t.state == "pending"


def test_approver_outside_the_rule_groups_is_refused():
    a = Approvals(task.Clock())
    _, t, results = ticketFor(a)
    with pytest.raises(ApprovalError, match="not in the approver groups"):
        a.approve(t.id, OUTSIDER)
    assert results == []


def test_expiry_denies():
    clock = task.Clock()
    a = Approvals(clock)
    _, t, results = ticketFor(a, expires=300.0)
    clock.advance(299)
    assert results == []
    clock.advance(1)
    assert t.state == "expired" and isinstance(results[0], Deny)
    with pytest.raises(ApprovalError, match="already expired"):
        a.approve(t.id, LEAD)


def test_two_of_m_needs_two_distinct_approvers():
    a = Approvals(task.Clock())
    _, t, results = ticketFor(a, approvals_needed=2)
    a.approve(t.id, LEAD)
    with pytest.raises(ApprovalError, match="already approved"):
        a.approve(t.id, LEAD)
    assert results == []
    a.approve(t.id, LEAD2)
    assert results == [CONTINUE]


def test_only_the_requester_cancels():
    a = Approvals(task.Clock())
    s, t, results = ticketFor(a)
    with pytest.raises(ApprovalError):
        a.cancel(t.id, LEAD)
    a.cancel(t.id, s.identity)
    assert t.state == "cancelled" and isinstance(results[0], Deny)


def test_session_end_and_gateway_stop_deny_pending_tickets():
    a = Approvals(task.Clock())
    s, t, results = ticketFor(a)
    _, t2, results2 = ticketFor(a, sid="s2")
    a.cancelSession("other-session")
    assert results == []
    a.cancelSession(s.id)
    assert isinstance(results[0], Deny)
    a.stop()
    assert t2.state == "denied" and isinstance(results2[0], Deny)


def test_a_failing_notifier_approves_nothing():
    a = Approvals(task.Clock())

    def broken(ticket):
        raise RuntimeError("webhook down")

    a.listeners.append(broken)
    _, t, results = ticketFor(a)
    assert t.state == "pending" and results == []
