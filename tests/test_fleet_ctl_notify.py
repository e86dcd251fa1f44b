"""Notification deliveries in the fleet database: a retry pending at a restart is sent by the next run."""

import json
import time
from types import SimpleNamespace

import pytest_twisted
from twisted.internet import defer, reactor
from zope.interface.verify import verifyObject

from sealgate.admin.notify import Notifier
from sealgate.config import NotifyConfig
from sealgate.fleet import schema
from sealgate.fleet.interfaces import IDeliveryStore
from sealgate.fleet.notifications import PGDeliveryStore, resume
from sealgate.fleetdb import FleetDB
from tests.fleetpg import fleetDatabase
from tests.test_fleet_ctl_db import poll


class Counter:
    def labels(self, *a):
        return self

    def inc(self):
        pass


def admin(url: str):
    approvals = SimpleNamespace(listeners=[], changeListeners=[], note=lambda *a, **k: None)
    target = NotifyConfig("hook", "webhook", url + "/hook", None, ("requested",), 3, 1.0, 5.0)
    return SimpleNamespace(
        service=SimpleNamespace(approvals=approvals, config=SimpleNamespace(notify=(target,))),
        reactor=reactor, metrics=SimpleNamespace(notifications=Counter()),
        baseURL=lambda: "http://console.example/")


TICKET = SimpleNamespace(id="t1", state="pending", asDict=lambda: {
    "id": "t1", "requester": "apikey:ci", "connection": "db", "command": "DROP TABLE x"})


@pytest_twisted.ensureDeferred
async def test_a_retry_pending_at_a_restart_is_sent_after_it(postgres, receiver):
    url = fleetDatabase(postgres)
    db = FleetDB(url, reactor)
    try:
        await db.migrate(schema.COMPONENT, schema.STEPS)
        store = PGDeliveryStore(db, "n1")
        verifyObject(IDeliveryStore, store)
        receiver.codes["/hook"] = [500]
        first = Notifier(admin(receiver.url))
        await resume(first, store, reactor)
        first.ticketChanged(TICKET)
        await poll(lambda: first.deliveries and first.deliveries[0].attempts == 1
                   and first.deliveries[0].nextAttempt is not None)
        delivery = first.deliveries[0]
        # The node stops before the retry (1 s later) is due.
        await first.stop()
        rows = await _until(lambda: store.pending(), lambda rows: rows and rows[0][0].attempts == 1)
        assert rows[0][0].id == delivery.id and rows[0][1]["command"] == "DROP TABLE x"

        second = Notifier(admin(receiver.url))
        assert await resume(second, store, reactor) == 1
        await poll(lambda: second.deliveries[0].state == "sent")
        posts = [(p, h) for p, h, _ in receiver.got]
        assert [p for p, _ in posts] == ["/hook", "/hook"]
        assert posts[1][1]["x-sealgate-delivery"] == delivery.id
        assert json.loads(receiver.got[1][2])["ticket"]["id"] == "t1"
        await _until(lambda: store.pending(), lambda rows: rows == [])
        await second.stop()
    finally:
        db.close()


async def _until(query, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await query()
        if condition(value):
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0.05, d.callback, None)
        await d
