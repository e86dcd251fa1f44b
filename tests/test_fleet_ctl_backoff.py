"""Failed-login backoff counted fleet-wide: failures on one node slow the next attempt on another."""

import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from sealgate.configlimits import Limits
from sealgate.fleet import schema
from sealgate.fleet.backoff import PGBackoffCounters
from sealgate.fleet.interfaces import IBackoffCounters
from sealgate.fleetdb import FleetDB
from sealgate.throttle import LoginThrottle
from tests.fleetpg import fleetDatabase
from tests.test_fleet_ctl_db import poll


class Store:
    def __init__(self):
        self.events = []

    def auditEvent(self, e):
        self.events.append(e)


@pytest_twisted.ensureDeferred
async def test_failures_on_node_a_delay_the_same_identity_on_node_b(postgres):
    url = fleetDatabase(postgres)
    a_db, b_db = FleetDB(url, reactor), FleetDB(url, reactor)
    limits = Limits(login_backoff_base=30.0, login_backoff_max=600.0)
    a, b = LoginThrottle(limits, reactor, Store()), LoginThrottle(limits, reactor, Store())
    try:
        await a_db.migrate(schema.COMPONENT, schema.STEPS)
        a.shared, b.shared = PGBackoffCounters(a_db), PGBackoffCounters(b_db)
        verifyObject(IBackoffCounters, a.shared)
        # Another identity on b is not slowed (nothing shared for it).
        await b.wait("198.51.100.7", ["apikey-id:other"])
        for _ in range(3):
            a.failed("203.0.113.9", ["apikey-id:feedc0de"], {"kind": "login_failed"})
        key = ("claimed", "apikey-id:feedc0de")
        await _eventually(lambda: a.shared.read([key], reactor.seconds(), 60),
                          lambda counts: counts.get(key, (0,))[0] == 3)
        # A different address, the same claimed identity, on the other node.
        waiting = b.wait("198.51.100.7", ["apikey-id:feedc0de"])
        fired: list = []
        waiting.addCallback(fired.append)
        await poll(lambda: key in b._backoff and b._backoff[key].failures == 3)
        entry = b._backoff[key]
        assert fired == []  # held for 30 * 2^2 s: the guess has to wait
        assert entry.nextAt - reactor.seconds() > 100
        waiting.cancel()
        waiting.addErrback(lambda f: None)
        # A successful login of that identity ends its shared count.
        b.succeeded(["apikey-id:feedc0de"])
        await _eventually(lambda: b.shared.read([key], reactor.seconds(), 60),
                          lambda counts: counts == {})
    finally:
        a_db.close()
        b_db.close()


async def _eventually(query, condition, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while not condition(await query()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
