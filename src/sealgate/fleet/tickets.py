"""Approval tickets shared through the fleet database: listed and decided on any node, released by their own.

The node holding a command keeps the L{sealgate.approvals.Ticket} and the
Deferred that releases it.  Every decision is one transaction on the
C{tickets} row (so two nodes cannot both decide), with a NOTIFY
C{sealgate_tickets} carrying the ticket id: the holding node reads the row
and applies the decision within one round trip.  What cannot reach the
database cannot be decided, and an undecidable ticket is denied.
"""

import json
import time
from typing import Any

import attrs
from twisted.internet import defer
from zope.interface import implementer

from sealgate.approvals import ApprovalError
from sealgate.fleet.interfaces import ITicketBoard
from sealgate.fleet.schema import TICKETS_CHANNEL
from sealgate.fleetdb import FleetDB

_COLUMNS = "id, node, state, requester, approvers, needed, approvals, data, created, expires, " \
           "decided_by, reason, decided"


@attrs.frozen
class Requester:
    id: str


@attrs.frozen
class SharedTicket:
    """A ticket as the fleet database holds it (any node's): what the API shows and checks."""

    id: str
    node: str
    state: str
    requester: Requester
    approvers: tuple[str, ...]
    needed: int
    approvals: tuple[dict, ...]
    data: dict = attrs.field(repr=False)
    created: float
    expires: float
    decidedBy: str | None
    reason: str
    decided: float | None

    @classmethod
    def fromRow(cls, row) -> "SharedTicket":
        (tid, node, state, requester, approvers, needed, approvals, data, created, expires,
         decidedBy, reason, decided) = row
        return cls(tid, node, state, Requester(requester), tuple(json.loads(approvers)), needed,
                   tuple(json.loads(approvals)), json.loads(data), created, expires,
                   decidedBy, reason, decided)

    def asDict(self, reveal: bool = False) -> dict:
        d = dict(self.data)
        marks = d.pop("marks", [])
        masked = d.pop("masked", "")
        exact = reveal or not marks
        d.update(state=self.state, node=self.node, approvals=[a["by"] for a in self.approvals],
                 decided_by=self.decidedBy, reason=self.reason, decided=self.decided,
                 command=d["command"] if exact else (masked or d["command"]),
                 revealed=exact, marks=marks if exact else [])
        return d


def _rowOf(ticket) -> dict:
    data = ticket.asDict(reveal=True)
    data.update(masked=ticket.masked, marks=[list(m) for m in ticket.marks])
    for live in ("state", "approvals", "decided_by", "reason", "decided"):
        data.pop(live, None)
    return data


def _load(cur, ticketId: str, lock: bool = False) -> SharedTicket:
    cur.execute(f"SELECT {_COLUMNS} FROM tickets WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                (ticketId,))
    row = cur.fetchone()
    if row is None:
        raise ApprovalError(f"no ticket {ticketId!r}", 404)
    return SharedTicket.fromRow(row)


def _write(cur, t: SharedTicket, state: str, approvals, by, reason, now) -> None:
    decided = now if state != "pending" else None
    cur.execute("UPDATE tickets SET state = %s, approvals = %s, decided_by = %s, reason = %s, "
                "decided = %s WHERE id = %s",
                (state, json.dumps(list(approvals)), by, reason, decided, t.id))
    cur.execute("SELECT pg_notify(%s, %s)", (TICKETS_CHANNEL, t.id))


def decideRow(cur, ticketId: str, identity, action: str, reason: str, anyone: bool,
              now: float) -> SharedTicket:
    """The rules of L{sealgate.approvals.Approvals}, on the locked row."""
    t = _load(cur, ticketId, lock=True)
    if t.state != "pending":
        raise ApprovalError(f"ticket {t.id} is already {t.state}", 409)
    approvals = list(t.approvals)
    if action == "cancel":
        if t.requester.id != identity.id and not anyone:
            raise ApprovalError("only the requester can cancel a ticket")
        _write(cur, t, "cancelled", approvals, identity.id, reason, now)
        return _load(cur, ticketId)
    if identity.id == t.requester.id:
        raise ApprovalError("a requester cannot decide their own ticket")
    if not (set(t.approvers) & set(identity.groups)) and "*" not in t.approvers:
        raise ApprovalError(f"{identity.id} is not in the approver groups "
                            f"{', '.join(t.approvers)} of rule {t.data.get('rule')}")
    if now >= t.expires:
        raise ApprovalError(f"ticket {t.id} has expired", 409)
    if action == "deny":
        _write(cur, t, "denied", approvals, identity.id, reason, now)
    elif action == "approve":
        if any(a["by"] == identity.id for a in approvals):
            raise ApprovalError(f"{identity.id} already approved ticket {t.id}", 409)
        approvals.append({"by": identity.id, "at": now, "reason": reason})
        done = len(approvals) >= t.needed
        _write(cur, t, "approved" if done else "pending", approvals,
               identity.id if done else None, reason if done else "", now)
    else:
        raise ApprovalError(f"unknown action {action!r}", 400)
    return _load(cur, ticketId)


@implementer(ITicketBoard)
class PGTicketBoard:
    """L{ITicketBoard} on the fleet database's C{tickets} table."""

    def __init__(self, db: FleetDB, node: str, clock=time.time, keep: int = 1000):
        self.db = db
        self.node = node
        self._clock = clock
        self._keep = keep
        self._listener: Any = None

    def start(self, changed) -> None:
        self._listener = self.db.listen(TICKETS_CHANNEL, changed)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def publish(self, ticket) -> defer.Deferred:
        def insert(cur):
            cur.execute(f"INSERT INTO tickets ({_COLUMNS}) VALUES "
                        "(%s, %s, 'pending', %s, %s, %s, '[]', %s, %s, %s, NULL, '', NULL)",
                        (ticket.id, self.node, ticket.requester.id, json.dumps(list(ticket.approvers)),
                         ticket.needed, json.dumps(_rowOf(ticket)), ticket.created, ticket.expires))
            # Decided tickets beyond what the API keeps listing are dropped, oldest first.
            cur.execute("DELETE FROM tickets WHERE id IN (SELECT id FROM tickets WHERE state <> "
                        "'pending' ORDER BY created DESC OFFSET %s)", (self._keep,))
        return self.db.runInteraction(insert)

    def decide(self, ticketId, identity, action, reason, anyone=False) -> defer.Deferred:
        return self.db.runInteraction(decideRow, ticketId, identity, action, reason, anyone,
                                      self._clock())

    def settle(self, ticket) -> defer.Deferred:
        def settle(cur):
            t = _load(cur, ticket.id, lock=True)
            if t.state == "pending":
                _write(cur, t, ticket.state, t.approvals, ticket.decidedBy, ticket.reason,
                       self._clock())
                t = _load(cur, ticket.id)
            return t
        return self.db.runInteraction(settle)

    def get(self, ticketId) -> defer.Deferred:
        return self.db.runInteraction(_load, ticketId)

    def list(self, everything=False) -> defer.Deferred:
        where = "" if everything else " WHERE state = 'pending'"
        d = self.db.runQuery(f"SELECT {_COLUMNS} FROM tickets{where} ORDER BY created")
        return d.addCallback(lambda rows: [SharedTicket.fromRow(r) for r in rows])

    def expireNode(self, node, reason) -> defer.Deferred:
        def expire(cur):
            cur.execute("UPDATE tickets SET state = 'expired', decided_by = NULL, reason = %s, "
                        "decided = %s WHERE node = %s AND state = 'pending' RETURNING id",
                        (reason, self._clock(), node))
            ids = [r[0] for r in cur.fetchall()]
            for tid in ids:
                cur.execute("SELECT pg_notify(%s, %s)", (TICKETS_CHANNEL, tid))
            return ids
        return self.db.runInteraction(expire)
