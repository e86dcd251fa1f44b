"""What L{sealgate.approvals.Approvals} does with its tickets when they are shared on a fleet's board.

Kept apart so the embedded gateway never loads it.  Every step fails
closed: a ticket that cannot be shared, or whose expiry cannot be settled,
is denied here, on the node that holds its command.
"""

from twisted.internet import defer
from twisted.logger import Logger

from sealgate.approvals import ApprovalError
from sealgate.chain.verdicts import CONTINUE, Deny
from sealgate.fleetdb import FleetDBError


class _Expiry:
    """What an expiry writes to the row (only if nobody decided first)."""

    def __init__(self, t):
        self.id, self.state, self.decidedBy, self.reason = t.id, "expired", None, "no decision in time"


class Sharing:
    """Plugged into an L{Approvals} (C{approvals.sharing}) by L{attach}."""

    _log = Logger()

    def __init__(self, approvals, board):
        self.approvals = approvals
        self.board = board

    def changed(self, ticketId) -> None:
        """NOTIFY of one ticket, or None after (re)connecting: re-read every pending one."""
        approvals = self.approvals
        ids = [t.id for t in approvals.pending()] if ticketId is None else [ticketId]
        for tid in ids:
            t = approvals.tickets.get(tid)
            if t is None or t.state != "pending":
                continue
            d = self.board.get(tid)
            d.addCallback(self.apply)
            d.addErrback(self._unread, tid)

    def _unread(self, f, tid) -> None:
        self._log.warn("Ticket {id}: cannot read its decision: {why}", id=tid,
                       why=f.getErrorMessage())

    def publish(self, ticket) -> None:
        def unshared(f):
            self._log.warn("Ticket {id} cannot be shared with the fleet ({why}): denied",
                           id=ticket.id, why=f.getErrorMessage())
            if ticket.state == "pending":
                self.approvals._finish(
                    ticket, "denied", None, "fleet database unreachable",
                    Deny(ticket.rule, "the approval cannot be decided now (the fleet database "
                                      "is unreachable)"), share=False)
        self.board.publish(ticket).addErrback(unshared)

    def apply(self, row) -> None:
        """Bring the local ticket to the row: new approvals sealed, a decision releases or denies."""
        approvals = self.approvals
        t = approvals.tickets.get(row.id)
        if t is None or t.state != "pending":
            return
        seen = {a["by"] for a in t.approvals}
        for a in row.approvals:
            if a["by"] not in seen:
                t.approvals.append(dict(a))
                approvals.note(t, "approval", by=a["by"], reason=a.get("reason", ""),
                               count=len(t.approvals), needed=t.needed)
        if row.state == "pending":
            return
        by, reason = row.decidedBy, row.reason
        verdict: object
        if row.state == "approved":
            verdict = CONTINUE
        elif row.state == "denied":
            verdict = Deny(t.rule, f"denied by {by}" + (f": {reason}" if reason else ""))
        elif row.state == "cancelled":
            verdict = Deny(t.rule, "cancelled by the requester" if by == t.requester.id
                           else f"cancelled by {by}")
        else:
            verdict = Deny(t.rule, f"approval ticket {t.id} expired: {reason or 'no decision in time'}")
        approvals._finish(t, row.state, by, reason, verdict, share=False)

    def expire(self, t) -> None:
        """Settle the expiry on the board first: a decision that got there earlier wins."""
        def local(f):
            self._log.warn("Ticket {id}: expiry not recorded in the fleet database ({why}); "
                           "denied here", id=t.id, why=f.getErrorMessage())

        def still(_):
            # Whatever the database said (or if it said nothing), the ticket is not pending any more.
            if t.state == "pending":
                self.approvals._finish(t, "expired", None, "no decision in time",
                                       Deny(t.rule, f"approval ticket {t.id} expired without a decision"),
                                       share=False)
        d = self.board.settle(_Expiry(t))
        d.addCallback(self.apply)
        d.addErrback(local)
        d.addBoth(still)

    def settle(self, t) -> None:
        """A decision this node took (session ended, stopping): recorded unless one was there first."""
        self.board.settle(t).addErrback(lambda f: self._log.warn(
            "Ticket {id} {state}: not recorded in the fleet database: {why}",
            id=t.id, state=t.state, why=f.getErrorMessage()))

    def decide(self, ticketId, identity, action, reason, anyone) -> defer.Deferred:
        def applied(row):
            self.apply(row)
            return row

        def unreachable(f):
            f.trap(FleetDBError)
            raise ApprovalError(f"the ticket cannot be decided now ({f.getErrorMessage()}); "
                                "undecided, it is denied when it expires", 503)
        d = self.board.decide(ticketId, identity, action, reason, anyone)
        return d.addCallbacks(applied, unreachable)


def attach(approvals, board) -> Sharing:
    """Share C{approvals}' tickets on C{board} (without following it yet)."""
    approvals.sharing = Sharing(approvals, board)
    return approvals.sharing


def start(approvals) -> None:
    """Follow the board: a decision taken on any node is applied here."""
    approvals.sharing.board.start(approvals.sharing.changed)
