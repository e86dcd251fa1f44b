"""Just-in-time approval tickets: a held command waits here until humans decide."""

import secrets
import time
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from sealgate.chain.verdicts import CONTINUE, Deny
from sealgate.describe import summarize, targetOf


class ApprovalError(Exception):
    """A decision that is not allowed; C{str(exc)} says why, for the approver."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


@attrs.define(eq=False)
class Ticket:
    """
    One held command.  C{state} goes pending -> approved | denied | expired
    | cancelled, and never back.
    """

    id: str
    requester: Any  # Identity
    connection: str
    sessionId: str
    command: str
    kind: str
    rule: str
    approvers: tuple[str, ...]
    needed: int
    created: float
    expires: float
    state: str = "pending"
    approvals: list = attrs.field(factory=list)
    decidedBy: str | None = None
    reason: str = ""
    decided: float | None = None
    result: Deferred = attrs.field(factory=Deferred, repr=False)
    _timer: Any = attrs.field(default=None, repr=False)
    _audit: Any = attrs.field(default=None, repr=False)
    _owner: Any = attrs.field(default=None, repr=False)
    #: The context an approver decides on: protocol, where it runs, why the
    #: rule holds it, what it does (L{sealgate.describe.summarize}).
    protocol: str = ""
    target: str = ""
    ruleReason: str = ""
    summary: str = ""
    effects: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    #: C{command} with every detector hit masked, and the hits' spans
    #: C{[start, end, detector]} in C{command}.
    masked: str = ""
    marks: tuple = ()

    def asDict(self, reveal: bool = False) -> dict:
        """
        The ticket as the API shows it.  C{command} is the exact command only
        when C{reveal} (the caller may decide this ticket, or asked for it);
        otherwise it is the masked form, and C{marks} is empty.
        """
        exact = reveal or not self.marks
        return {
            "id": self.id, "state": self.state,
            "requester": self.requester.id, "connection": self.connection,
            "session": self.sessionId, "kind": self.kind,
            "command": self.command if exact else (self.masked or self.command),
            "revealed": exact, "marks": [list(m) for m in self.marks] if exact else [],
            "protocol": self.protocol, "target": self.target, "summary": self.summary,
            "effects": list(self.effects), "relations": list(self.relations),
            "rule": self.rule, "rule_reason": self.ruleReason,
            "approvers": list(self.approvers), "needed": self.needed,
            "approvals": [a["by"] for a in self.approvals],
            "created": self.created, "expires": self.expires,
            "decided_by": self.decidedBy, "reason": self.reason, "decided": self.decided,
        }


class Approvals:
    """
    The gateway's tickets.  Fails closed: a ticket nobody decides in time is
    denied; a requester never approves their own ticket; only members of the
    rule's approver groups decide.
    """

    _log = Logger()

    def __init__(self, reactor, store=None, keep: int = 1000):
        self._reactor = reactor
        self._store = store
        self._keep = keep
        #: With a fleet, L{sealgate.fleet.sharing.Sharing} (its C{board} holds
        #: every node's tickets); None: tickets are this node's.
        self.sharing: Any = None
        self.tickets: dict[str, Ticket] = {}
        #: Called with each new ticket; C{changeListeners} with each decided one.
        self.listeners: list = []
        self.changeListeners: list = []

    def request(self, session, rule, kind: str, command: str, details=None,
                masker=None) -> Ticket:
        """
        Open a ticket for a held command; its C{result} fires with the verdict.

        @param details: the command hook's details (effects, relations...),
            for the summary an approver reads.
        @param masker: the session's masker: detector hits in the command are
            marked, and the sealed log and anyone who may not see them get
            the masked form.
        """
        details = dict(details or {})
        masked, marks = command, cast(tuple, ())
        if masker is not None:
            marks = tuple(masker.findings(command))
            if marks:
                masked = masker.maskText(command)
        ticket = Ticket(
            # A fleet's ids are unique across every node's tickets.
            id=secrets.token_hex(4 if self.sharing is None else 8), requester=session.identity,
            connection=session.connection.name, sessionId=session.id, command=command,
            kind=kind, rule=rule.name, approvers=tuple(rule.approvers),
            needed=rule.approvals_needed, created=time.time(), expires=time.time() + rule.expires,
            protocol=str(getattr(session, "protocol", "") or ""),
            target=targetOf(session.connection), ruleReason=rule.reason or "",
            summary=summarize(kind, command if not marks else masked, details),
            effects=tuple(str(e) for e in details.get("effects") or ()),
            relations=tuple(str(r) for r in details.get("relations") or ()),
            masked=masked, marks=marks,
        )
        ticket._audit = getattr(session, "audit", None)
        ticket._owner = session
        ticket._timer = self._reactor.callLater(rule.expires, self._expire, ticket)
        self.tickets[ticket.id] = ticket
        self._event(ticket, "requested", by=session.identity.id)
        self._tell(self.listeners, ticket)
        self._trim()
        if self.sharing is not None:
            self.sharing.publish(ticket)
        return ticket

    def _tell(self, listeners, ticket) -> None:
        for listener in list(listeners):
            try:
                listener(ticket)
            except Exception:
                # A notification failure never approves anything; it is logged.
                self._log.failure("Approval listener failed for ticket {id}", id=ticket.id)

    def note(self, ticket: Ticket, what: str, **fields) -> None:
        """Seal one more event about a ticket (e.g. C{notified}) in the log."""
        self._event(ticket, what, **fields)

    def pending(self) -> list[Ticket]:
        return [t for t in self.tickets.values() if t.state == "pending"]

    def get(self, ticketId: str) -> Ticket:
        t = self.tickets.get(ticketId)
        if t is None:
            raise ApprovalError(f"no ticket {ticketId!r}", 404)
        return t

    def approve(self, ticketId: str, approver, reason: str = "") -> Ticket:
        t = self._decidable(ticketId, approver)
        if any(a["by"] == approver.id for a in t.approvals):
            raise ApprovalError(f"{approver.id} already approved ticket {t.id}", 409)
        t.approvals.append({"by": approver.id, "at": time.time(), "reason": reason})
        self._event(t, "approval", by=approver.id, reason=reason,
                    count=len(t.approvals), needed=t.needed)
        if len(t.approvals) >= t.needed:
            self._finish(t, "approved", approver.id, reason, CONTINUE)
        return t

    def deny(self, ticketId: str, approver, reason: str = "") -> Ticket:
        t = self._decidable(ticketId, approver)
        self._finish(t, "denied", approver.id, reason,
                     Deny(t.rule, f"denied by {approver.id}" + (f": {reason}" if reason else "")))
        return t

    def cancel(self, ticketId: str, requester, reason: str = "", anyone: bool = False) -> Ticket:
        """Cancel a ticket: its requester, or (C{anyone}, for admins) whoever calls."""
        t = self.get(ticketId)
        mine = t.requester.id == requester.id
        if not mine and not anyone:
            raise ApprovalError("only the requester can cancel a ticket")
        self._pending(t)
        self._finish(t, "cancelled", requester.id, reason,
                     Deny(t.rule, "cancelled by the requester" if mine else f"cancelled by {requester.id}"))
        return t

    def cancelSession(self, sessionId: str) -> None:
        """The session went away: its pending tickets are cancelled."""
        for t in self.pending():
            if t.sessionId == sessionId:
                self._finish(t, "cancelled", None, "session ended",
                             Deny(t.rule, "session ended"))

    def stop(self) -> None:
        for t in self.pending():
            self._finish(t, "denied", None, "gateway stopping",
                         Deny(t.rule, "the gateway is shutting down"))

    def _decidable(self, ticketId, approver) -> Ticket:
        t = self.get(ticketId)
        self._pending(t)
        if approver.id == t.requester.id:
            raise ApprovalError("a requester cannot decide their own ticket")
        if not (set(t.approvers) & set(approver.groups)) and "*" not in t.approvers:
            raise ApprovalError(f"{approver.id} is not in the approver groups "
                                f"{', '.join(t.approvers)} of rule {t.rule}")
        return t

    @staticmethod
    def _pending(t: Ticket) -> None:
        if t.state != "pending":
            raise ApprovalError(f"ticket {t.id} is already {t.state}", 409)

    def _expire(self, t: Ticket) -> None:
        t._timer = None
        if t.state == "pending" and self.sharing is not None:
            self.sharing.expire(t)
        elif t.state == "pending":
            self._finish(t, "expired", None, "no decision in time",
                         Deny(t.rule, f"approval ticket {t.id} expired without a decision"))

    def _finish(self, t: Ticket, state, by, reason, verdict, share: bool = True) -> None:
        t.state, t.decidedBy, t.reason, t.decided = state, by, reason, time.time()
        if t._timer is not None and t._timer.active():
            t._timer.cancel()
        t._timer = None
        self._event(t, state, by=by, reason=reason)
        self._log.info("Ticket {id} {state} by {by}", id=t.id, state=state, by=by or "-")
        t.result.callback(verdict)
        self._tell(self.changeListeners, t)
        if share and self.sharing is not None:
            self.sharing.settle(t)

    # -- one API for both (Deferreds): the admin API uses these -----------

    def listing(self, everything: bool = False) -> Deferred:
        """This node's tickets, or with a fleet every node's (pending only unless C{everything})."""
        if self.sharing is not None:
            return self.sharing.board.list(everything)
        return succeed(list(self.tickets.values()) if everything else self.pending())

    def fetch(self, ticketId: str) -> Deferred:
        if self.sharing is not None:
            return self.sharing.board.get(ticketId)
        return maybeDeferred(self.get, ticketId)

    def decide(self, ticketId: str, identity, action: str, reason: str = "",
               anyone: bool = False) -> Deferred:
        """C{action} is "approve", "deny" or "cancel"; fires with the ticket as it stands then."""
        if self.sharing is not None:
            return self.sharing.decide(ticketId, identity, action, reason, anyone)
        if action == "cancel":
            return maybeDeferred(self.cancel, ticketId, identity, reason, anyone=anyone)
        if action not in ("approve", "deny"):
            return fail(ApprovalError(f"unknown action {action!r}", 400))
        return maybeDeferred(getattr(self, action), ticketId, identity, reason)

    def _event(self, t: Ticket, what: str, **fields) -> None:
        # The sealed log keeps the masked form: a detector hit in a held
        # command is no more sealed in clear than in any other event.
        event = {"ticket": t.id, "state": what, "rule": t.rule, "command": t.masked or t.command,
                 "requester": t.requester.id, **fields}
        if what == "requested":
            event.update(summary=t.summary, protocol=t.protocol, target=t.target)
        if t._audit is not None and not getattr(t._owner, "ended", False):
            t._audit("approval", **event)
        elif self._store is not None:
            self._store.auditEvent({"kind": "approval", "session": t.sessionId, **event})

    def _trim(self) -> None:
        done = [t for t in self.tickets.values() if t.state != "pending"]
        for t in done[: max(0, len(done) - self._keep)]:
            del self.tickets[t.id]
