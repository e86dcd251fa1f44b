"""Notification deliveries in the fleet database: a restarted node resumes its pending retries.

At least once: a delivery whose attempt was in flight when the node died is
sent again (receivers dedupe on C{X-Sealgate-Delivery}).  After a restart a
resumed delivery has no live ticket, so its outcome is logged and kept here
but not sealed in the ticket's session.
"""

import json
import time

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.admin.notify import Delivery
from sealgate.fleet.interfaces import IDeliveryStore
from sealgate.fleetdb import FleetDB

_log = Logger()
_COLUMNS = "id, target, ticket, event, state, attempts, error, created, finished, next_attempt, body"


@implementer(IDeliveryStore)
class PGDeliveryStore:
    """L{IDeliveryStore} on the C{notifications} table."""

    def __init__(self, db: FleetDB, node: str, keep: int = 500):
        self.db = db
        self.node = node
        self.keep = keep

    def save(self, delivery, ticket) -> defer.Deferred:
        def insert(cur):
            cur.execute(f"INSERT INTO notifications (node, {_COLUMNS}) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.node, delivery.id, delivery.target, delivery.ticket, delivery.event,
                         delivery.state, delivery.attempts, delivery.error, delivery.created,
                         delivery.finished, delivery.nextAttempt, json.dumps(ticket)))
            cur.execute("DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
                        "WHERE node = %s AND state <> 'pending' ORDER BY created DESC OFFSET %s)",
                        (self.node, self.keep))
        return self.db.runInteraction(insert)

    def update(self, delivery) -> defer.Deferred:
        return self.db.runOperation(
            "UPDATE notifications SET state = %s, attempts = %s, error = %s, finished = %s, "
            "next_attempt = %s WHERE id = %s",
            (delivery.state, delivery.attempts, delivery.error, delivery.finished,
             delivery.nextAttempt, delivery.id))

    def pending(self) -> defer.Deferred:
        d = self.db.runQuery(f"SELECT {_COLUMNS} FROM notifications WHERE node = %s AND "
                             "state = 'pending' ORDER BY created", (self.node,))

        def rows(found):
            return [(Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]),
                     json.loads(r[10])) for r in found]
        return d.addCallback(rows)


async def resume(notifier, store: IDeliveryStore, reactor) -> int:
    """Keep C{notifier}'s deliveries in C{store}, and go on with the ones a previous life left."""
    notifier.store = store
    targets = {t.name: t for t in notifier.admin.service.config.notify}
    resumed = 0
    for delivery, ticket in await store.pending():
        target = targets.get(delivery.target)
        if target is None:
            delivery.state, delivery.finished = "failed", time.time()
            delivery.error = "the target is no longer configured"
            await store.update(delivery)
            continue
        notifier.deliveries.append(delivery)
        wait = max(0.0, (delivery.nextAttempt or 0.0) - time.time())
        notifier._timers[delivery.id] = reactor.callLater(
            wait, notifier._attempt, target, None, delivery, ticket)
        resumed += 1
    if resumed:
        _log.info("Resumed {n} notification deliveries of an earlier run", n=resumed)
    return resumed
