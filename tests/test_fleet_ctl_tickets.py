"""Approval tickets on the fleet database: held on one node, listed and decided on another, released within 1 s."""

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from sealgate.approvals import ApprovalError, Approvals
from sealgate.chain.verdicts import CONTINUE, Deny
from sealgate.fleet import schema, sharing
from sealgate.fleet.interfaces import ITicketBoard
from sealgate.fleet.tickets import PGTicketBoard
from sealgate.fleetdb import FleetDB
from sealgate.identity import Identity
from tests.fleetpg import fleetDatabase
from tests.test_chain import rule, session
from tests.test_fleet_ctl_db import poll

LEAD = Identity("bob", {"leads"})
LEAD2 = Identity("carol", {"leads"})
OUTSIDER = Identity("mallory", {"eng"})


class Node:
    def __init__(self, url, name):
        self.db = FleetDB(url, reactor)
        self.board = PGTicketBoard(self.db, name)
        self.approvals = Approvals(reactor)
        sharing.attach(self.approvals, self.board)

    async def start(self):
        await self.db.migrate(schema.COMPONENT, schema.STEPS)
        sharing.start(self.approvals)
        await poll(lambda: self.board._listener.connected)

    def hold(self, sid="s1", **kw):
        t = self.approvals.request(session(sid=sid), rule("jit", "approve", approvers=("leads",), **kw),
                                   "sql", "DROP TABLE t")
        results: list = []
        t.result.addCallback(results.append)
        return t, results

    def close(self):
        self.board.stop()
        self.db.close()


@pytest.fixture
def nodes(postgres):
    url = fleetDatabase(postgres)
    made = [Node(url, "a"), Node(url, "b")]
    pytest_twisted.blockon(defer.ensureDeferred(_start(made)))
    yield made
    for n in made:
        n.close()


async def _start(made):
    for n in made:
        await n.start()


async def published(node, tid):
    deadline = time.monotonic() + 5
    while True:
        ids = [t.id for t in await node.approvals.listing()]
        if tid in ids or time.monotonic() > deadline:
            return ids
        await poll(lambda: True)


def test_the_board_provides_the_interface():
    verifyObject(ITicketBoard, PGTicketBoard(db=None, node="a"))


@pytest_twisted.ensureDeferred
async def test_a_ticket_held_on_a_is_approved_on_b_and_released_on_a_within_a_second(nodes):
    a, b = nodes
    t, results = a.hold()
    assert t.id in await published(b, t.id)
    listed = (await b.approvals.fetch(t.id)).asDict()
    assert listed["node"] == "a" and listed["state"] == "pending" and listed["requester"] == t.requester.id
    t0 = time.monotonic()
    row = await b.approvals.decide(t.id, LEAD, "approve", "fine")
    assert row.state == "approved"
    await poll(lambda: results)
    assert time.monotonic() - t0 < 1.0
    assert results == [CONTINUE] and t.state == "approved" and t.decidedBy == LEAD.id
    assert t.approvals[0]["by"] == LEAD.id


@pytest_twisted.ensureDeferred
async def test_the_rules_hold_on_every_node(nodes):
    a, b = nodes
    t, results = a.hold(approvals_needed=2)
    await published(b, t.id)
    with pytest.raises(ApprovalError, match="cannot decide their own"):
        await b.approvals.decide(t.id, t.requester, "approve")
    with pytest.raises(ApprovalError, match="not in the approver groups"):
        await b.approvals.decide(t.id, OUTSIDER, "approve")
    await b.approvals.decide(t.id, LEAD, "approve")
    with pytest.raises(ApprovalError, match="already approved"):
        await a.approvals.decide(t.id, LEAD, "approve")
    await poll(lambda: len(t.approvals) == 1)
    assert results == [] and t.state == "pending"
    await b.approvals.decide(t.id, LEAD2, "approve")
    await poll(lambda: results)
    assert results == [CONTINUE]
    with pytest.raises(ApprovalError, match="already approved") as e:
        await b.approvals.decide(t.id, LEAD2, "deny", "late")
    assert e.value.status == 409


@pytest_twisted.ensureDeferred
async def test_a_denial_on_b_denies_on_a_with_who_and_why(nodes):
    a, b = nodes
    t, results = a.hold()
    await published(b, t.id)
    await b.approvals.decide(t.id, LEAD, "deny", "not today")
    await poll(lambda: results)
    assert results == [Deny("jit", f"denied by {LEAD.id}: not today")]


@pytest_twisted.ensureDeferred
async def test_a_downed_node_s_tickets_expire_with_that_reason(nodes):
    a, b = nodes
    t, results = a.hold()
    await published(b, t.id)
    assert await b.board.expireNode("a", "node a down") == [t.id]
    with pytest.raises(ApprovalError, match="already expired"):
        await b.approvals.decide(t.id, LEAD, "approve")
    # Node a was only partitioned: it hears the expiry and denies.
    await poll(lambda: results)
    assert t.state == "expired" and t.reason == "node a down" and isinstance(results[0], Deny)


@pytest_twisted.ensureDeferred
async def test_expiry_on_the_holding_node_is_settled_in_the_database(nodes):
    a, b = nodes
    t, results = a.hold(expires=0.5)
    await poll(lambda: results)
    assert t.state == "expired" and isinstance(results[0], Deny)
    row = await b.approvals.fetch(t.id)
    assert row.state == "expired" and row.reason == "no decision in time"


@pytest_twisted.ensureDeferred
async def test_an_unreachable_database_makes_the_approval_undecidable_so_denied(nodes):
    from tests.harness._proc import freePort

    db = FleetDB(f"postgresql://x:y@127.0.0.1:{freePort()}/none", reactor)
    try:
        approvals = Approvals(reactor)
        sharing.attach(approvals, PGTicketBoard(db, "c"))
        t = approvals.request(session(), rule("jit", "approve", approvers=("leads",)), "sql", "DROP")
        results: list = []
        t.result.addCallback(results.append)
        await poll(lambda: results)
        assert t.state == "denied" and "cannot be decided" in results[0].reason
        with pytest.raises(ApprovalError) as e:
            await approvals.decide(t.id, LEAD, "approve")
        assert e.value.status == 503
    finally:
        db.close()
