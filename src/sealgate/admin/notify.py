"""Ticket notifications: signed JSON webhooks and Slack incoming webhooks, retried with backoff."""

import json
import secrets
import time
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sealgate.webhook import SIGNATURE_HEADER, makeAgent, postJSON, sign

KEEP = 500


def _slackEscape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slackBody(ticket: dict, event: str, link: str) -> dict:
    """A Slack incoming-webhook message: who asks for what, the (masked) command, a console link."""
    command = ticket["command"]
    if len(command) > 2800:
        command = command[:2800] + "…"
    command = _slackEscape(command).replace("```", "`\u200b``")
    head = {
        "requested": f"*Approval needed* — {ticket['requester']} on `{ticket['connection']}`",
        "approved": f"*Approved* by {ticket.get('decided_by')}",
        "denied": f"*Denied* by {ticket.get('decided_by')}",
        "expired": "*Expired* without a decision",
        "cancelled": f"*Cancelled* by {ticket.get('decided_by') or 'the gateway'}",
    }.get(event, event)
    detail = (f"ticket `{ticket['id']}` · rule `{ticket['rule']}` · approvers "
              f"{', '.join(ticket['approvers'])} · {len(ticket['approvals'])}/{ticket['needed']} approvals")
    if ticket.get("reason"):
        detail += f" · reason: {_slackEscape(ticket['reason'])}"
    # What an approver needs at a glance; the command itself is the masked
    # form (a channel is no role decision), the console shows it exactly.
    what = ticket.get("summary") or ""
    where = " · ".join(x for x in (ticket.get("protocol"), ticket.get("target")) if x)
    why = ticket.get("rule_reason") or ""
    context = "\n".join(line for line in (
        f"*What it does:* {_slackEscape(what)}" if what else "",
        f"*Where:* {_slackEscape(where)}" if where else "",
        f"*Why it is held:* {_slackEscape(why)}" if why else "") if line)
    return {
        "text": f"sealgate ticket {ticket['id']} {event}: {ticket['requester']} on {ticket['connection']}"
                + (f": {ticket['summary']}" if ticket.get("summary") else ""),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _slackEscape(head)}},
            *([{"type": "section", "text": {"type": "mrkdwn", "text": context}}] if context else []),
            {"type": "section", "text": {"type": "mrkdwn", "text": f"```{command}```"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": detail}]},
            {"type": "actions", "elements": [{"type": "button", "url": link,
                                              "text": {"type": "plain_text", "text": "Open in the console"}}]},
        ],
    }


@attrs.define
class Delivery:
    id: str
    target: str
    ticket: str
    event: str
    state: str = "pending"  # pending -> sent | failed
    attempts: int = 0
    error: str | None = None
    created: float = attrs.field(factory=time.time)
    finished: float | None = None
    nextAttempt: float | None = None

    def asDict(self) -> dict:
        return {"id": self.id, "target": self.target, "ticket": self.ticket, "event": self.event,
                "state": self.state, "attempts": self.attempts, "error": self.error,
                "created": self.created, "finished": self.finished, "next_attempt": self.nextAttempt}


class Notifier:
    """
    Listens to the gateway's tickets and tells the configured targets.
    Sending never blocks the reactor (twisted.web Agent) and its outcome
    never touches the ticket's decision: a target that is down only shows up
    as a failed delivery, in the log, the API and the console.
    """

    _log = Logger()

    def __init__(self, admin, agent=None):
        self.admin = admin
        self._agent = agent
        self._pool = None
        self.deliveries: list[Delivery] = []
        self._timers: dict[str, IDelayedCall] = {}
        self._stopped = False
        #: With a fleet, an L{sealgate.fleet.interfaces.IDeliveryStore}: retries resume after a restart.
        self.store: Any = None
        approvals = admin.service.approvals
        approvals.listeners.append(self.ticketChanged)
        approvals.changeListeners.append(self.ticketChanged)

    @property
    def agent(self):
        if self._agent is None:
            reactor = self.admin.reactor
            # No kept-alive connections: a notification is rare, and an idle
            # socket to a chat service is nothing to hold on to.
            self._agent = makeAgent(reactor)
            self._pool = self._agent._pool
        return self._agent

    def targets(self) -> list:
        return [{"name": t.name, "kind": t.kind, "events": list(t.events), "retries": t.retries}
                for t in self.admin.service.config.notify]

    def recent(self) -> list:
        return [d.asDict() for d in reversed(self.deliveries)]

    def forTicket(self, ticketId: str) -> list:
        return [d.asDict() for d in self.deliveries if d.ticket == ticketId]

    def ticketChanged(self, ticket) -> None:
        if self._stopped:
            return
        event = "requested" if ticket.state == "pending" else ticket.state
        for target in self.admin.service.config.notify:
            if event in target.events:
                self._start(target, ticket, event)

    def test(self, by: str) -> list:
        """Send a test message to every target (admins check the wiring)."""
        fake: dict[str, Any] = {"id": "test", "state": "requested", "requester": by, "connection": "(test)",
                "session": None, "kind": "test", "command": "(a test notification)", "rule": "(test)",
                "approvers": [], "needed": 1, "approvals": [], "created": time.time(),
                "expires": time.time(), "decided_by": None, "reason": "", "decided": None}
        return [self._start(t, None, "test", fake).asDict() for t in self.admin.service.config.notify]

    def _start(self, target, ticket, event, ticketDict=None) -> Delivery:
        d = Delivery(secrets.token_hex(6), target.name, ticketDict["id"] if ticketDict else ticket.id, event)
        self.deliveries.append(d)
        del self.deliveries[: max(0, len(self.deliveries) - KEEP)]
        body = ticketDict or ticket.asDict()
        if self.store is not None:
            self.store.save(d, body).addErrback(self._unsaved, d)
        self._attempt(target, ticket, d, body)
        return d

    def _unsaved(self, f, delivery) -> None:
        self._log.warn("Notification {id}: not kept in the fleet database ({why}); a restart "
                       "will not resume it", id=delivery.id, why=f.getErrorMessage())

    def _settled(self, _, delivery) -> None:
        if delivery.state != "pending":
            self._persist(delivery)

    def _persist(self, delivery) -> None:
        if self.store is not None:
            self.store.update(delivery).addErrback(self._unsaved, delivery)

    def _body(self, target, delivery, ticket: dict) -> tuple[bytes, dict]:
        link = f"{self.admin.baseURL()}console/#ticket/{ticket['id']}"
        if target.kind == "slack":
            body = json.dumps(slackBody(ticket, delivery.event, link)).encode()
        else:
            body = json.dumps({"type": "sealgate.approval", "event": delivery.event,
                               "delivery": delivery.id, "sent": time.time(), "ticket": ticket,
                               "console": link}, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "sealgate",
                   "X-Sealgate-Event": delivery.event, "X-Sealgate-Delivery": delivery.id}
        if target.secret:
            headers[SIGNATURE_HEADER] = sign(target.secret, body)
        return body, headers

    def _attempt(self, target, ticket, delivery, ticketDict) -> None:
        self._timers.pop(delivery.id, None)
        if self._stopped:
            return
        delivery.attempts += 1
        delivery.nextAttempt = None
        body, headers = self._body(target, delivery, ticketDict)
        reactor = self.admin.reactor
        d = postJSON(self.agent, reactor, target.url, body, headers, target.timeout)

        def sent(_):
            delivery.state, delivery.error, delivery.finished = "sent", None, time.time()
            self.admin.metrics.notifications.labels(target.name, "sent").inc()
            self._log.info("Notified {target} of ticket {ticket} {event}", target=target.name,
                           ticket=delivery.ticket, event=delivery.event)
            if ticket is not None:
                self.admin.service.approvals.note(ticket, "notified", by=target.name,
                                                  event=delivery.event, attempts=delivery.attempts)

        def failed(f):
            # Never the URL: a Slack webhook URL is a credential.
            why = f.getErrorMessage() if not f.check(defer.TimeoutError, defer.CancelledError) \
                else f"no answer in {target.timeout:g}s"
            delivery.error = f"{type(f.value).__name__}: {why}"[:300]
            self.admin.metrics.notifications.labels(target.name, "error").inc()
            if delivery.attempts <= target.retries and not self._stopped:
                wait = target.backoff * (2 ** (delivery.attempts - 1))
                delivery.nextAttempt = time.time() + wait
                self._log.warn("Notification {id} to {target} failed ({why}); retry {n} in {wait}s",
                               id=delivery.id, target=target.name, why=delivery.error,
                               n=delivery.attempts, wait=round(wait, 3))
                self._timers[delivery.id] = reactor.callLater(
                    wait, self._attempt, target, ticket, delivery, ticketDict)
                self._persist(delivery)
                return
            delivery.state, delivery.finished = "failed", time.time()
            self._log.error("Notification {id} to {target} about ticket {ticket} failed after "
                            "{n} attempt(s): {why}", id=delivery.id, target=target.name,
                            ticket=delivery.ticket, n=delivery.attempts, why=delivery.error)
            if ticket is not None:
                self.admin.service.approvals.note(ticket, "notify_failed", by=target.name,
                                                  event=delivery.event, reason=delivery.error,
                                                  attempts=delivery.attempts)

        d.addCallbacks(sent, failed)
        d.addCallback(self._settled, delivery)
        d.addErrback(lambda f: self._log.failure("Notification bookkeeping failed", f))

    def stop(self) -> defer.Deferred:
        self._stopped = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return defer.succeed(None)
