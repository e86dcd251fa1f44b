"""Console logins in the fleet database: made on one node, valid on another, kept across a restart."""

from types import SimpleNamespace

import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from sealgate.admin.console import Logins
from sealgate.fleet import schema
from sealgate.fleet.interfaces import ILoginStore
from sealgate.fleet.logins import PGLoginStore, follow
from sealgate.fleetdb import FleetDB
from sealgate.identity import Identity
from tests.fleetpg import fleetDatabase
from tests.test_fleet_ctl_db import poll

ALICE = Identity("alice", {"leads"}, "apikey", credential="0123456789abcdef")


def node(url, name):
    admin = SimpleNamespace(service=SimpleNamespace(config=SimpleNamespace(
        admin=SimpleNamespace(login_lifetime=3600.0))))
    db = FleetDB(url, reactor)
    return db, Logins(admin), PGLoginStore(db, name)


@pytest_twisted.ensureDeferred
async def test_a_login_made_on_one_node_works_on_another_and_after_a_restart(postgres):
    url = fleetDatabase(postgres)
    dbs = []
    try:
        db1, one, store1 = node(url, "a")
        db2, two, store2 = node(url, "b")
        dbs += [db1, db2]
        verifyObject(ILoginStore, store1)
        await db1.migrate(schema.COMPONENT, schema.STEPS)
        await follow(one, store1, reactor)
        await follow(two, store2, reactor)
        await poll(lambda: all(lst.connected for db in dbs for lst in db._listeners))

        login = one.create(ALICE, "apikey")
        await poll(lambda: two.get(login.token) is not None)
        other = two.get(login.token)
        assert other.identity == ALICE and other.csrf == login.csrf
        assert other.identity.credential == ALICE.credential
        assert two.get("not-" + login.token) is None

        # Only the hash of the cookie token is stored.
        rows = postgres.psql("SELECT encode(token_sha256, 'hex') FROM console_logins",
                             database=url.rsplit("/", 1)[1])
        assert login.token not in rows and len(rows.strip()) == 64

        # A restart of node b: a new Logins loads what is live.
        db3, three, store3 = node(url, "b")
        dbs.append(db3)
        await follow(three, store3, reactor)
        assert three.get(login.token).identity == ALICE
        await poll(lambda: all(lst.connected for lst in db3._listeners))

        one.drop(login.token)
        await poll(lambda: two.get(login.token) is None and three.get(login.token) is None)
    finally:
        for db in dbs:
            db.close()


def test_a_logout_during_a_reload_is_not_undone_by_it():
    from twisted.internet import defer, task

    heard, loads = [], []

    class FakeStore:
        db = SimpleNamespace(listen=lambda channel, callback: heard.append(callback))

        def load(self, now, digest=None):
            loads.append(defer.Deferred())
            return loads[-1]

    logins = Logins(SimpleNamespace(service=None))
    follow(logins, FakeStore(), task.Clock())
    loads.pop(0).callback([])
    digest = b"\x01" * 32
    heard[0](None)                      # reconnected: a full reload starts...
    heard[0]("drop:" + digest.hex())    # ...a logout arrives before its rows...
    loads.pop(0).callback([(digest, ALICE, "csrf", 1e12, "apikey")])  # ...which still hold it
    assert logins._logins == {}         # not adopted: read again instead
    loads.pop(0).callback([])
    assert logins._logins == {} and loads == []
