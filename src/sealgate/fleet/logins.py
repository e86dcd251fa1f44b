"""Console logins in the fleet database: they outlive a restart and work on every node.

The cookie token is kept only as its SHA-256; every node keeps the live
logins in memory (checks stay synchronous and cost no query), loads them at
start and follows NOTIFY C{sealgate_logins} ("add:<hash>", "drop:<hash>").
"""

import json
import time

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.fleet.interfaces import ILoginStore
from sealgate.fleet.schema import LOGINS_CHANNEL
from sealgate.fleetdb import FleetDB
from sealgate.identity import Identity

_log = Logger()


def _identity(text: str) -> Identity:
    d = json.loads(text)
    return Identity(d["subject"], d["groups"], d["method"], d["issuer"],
                    expires=d.get("expires"), credential=d.get("credential"))


def _identityText(i) -> str:
    return json.dumps({"subject": i.subject, "groups": sorted(i.groups), "method": i.method,
                       "issuer": i.issuer, "expires": i.expires, "credential": i.credential})


@implementer(ILoginStore)
class PGLoginStore:
    """L{ILoginStore} on the C{console_logins} table."""

    def __init__(self, db: FleetDB, node: str):
        self.db = db
        self.node = node

    def save(self, login) -> defer.Deferred:
        from sealgate.admin.console import tokenHash

        digest = tokenHash(login.token)

        def insert(cur):
            # Expired logins go as new ones come: the table stays the size of the live ones.
            cur.execute("DELETE FROM console_logins WHERE expires < %s", (time.time(),))
            cur.execute("INSERT INTO console_logins (token_sha256, identity, csrf, expires, method, "
                        "node) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (digest, _identityText(login.identity), login.csrf, login.expires,
                         login.method, self.node))
            cur.execute("SELECT pg_notify(%s, %s)", (LOGINS_CHANNEL, "add:" + digest.hex()))
        return self.db.runInteraction(insert)

    def drop(self, token) -> defer.Deferred:
        from sealgate.admin.console import tokenHash

        digest = tokenHash(token)

        def delete(cur):
            cur.execute("DELETE FROM console_logins WHERE token_sha256 = %s", (digest,))
            cur.execute("SELECT pg_notify(%s, %s)", (LOGINS_CHANNEL, "drop:" + digest.hex()))
        return self.db.runInteraction(delete)

    def load(self, now, digest: bytes | None = None) -> defer.Deferred:
        """Every unexpired login as C{(hash, identity, csrf, expires, method)}; one with C{digest}."""
        sql = "SELECT token_sha256, identity, csrf, expires, method FROM console_logins " \
              "WHERE expires > %s"
        args: tuple = (now,)
        if digest is not None:
            sql += " AND token_sha256 = %s"
            args += (digest,)
        d = self.db.runQuery(sql, args)
        return d.addCallback(lambda rows: [(bytes(r[0]), _identity(r[1]), r[2], r[3], r[4])
                                           for r in rows])


def follow(logins, store: PGLoginStore, clock) -> defer.Deferred:
    """Share L{sealgate.admin.console.Logins}: load the live ones, then follow the channel."""
    logins.store = store
    # A read that was under way when a logout arrived may still hold the
    # login: such a read is done again, so no logout is undone.
    drops = [0]

    def load(digest: bytes | None = None) -> defer.Deferred:
        seen = drops[0]

        def loaded(rows):
            if drops[0] != seen:
                return load(digest)
            if digest is None:
                logins.clear()
            for found, identity, csrf, expires, method in rows:
                logins.adopt(found, identity, csrf, expires, method)
        return store.load(clock.seconds(), digest).addCallback(loaded)

    def heard(payload):
        if payload is None:
            d = load()
        else:
            what, _, hexDigest = payload.partition(":")
            try:
                digest = bytes.fromhex(hexDigest)
            except ValueError:
                return
            if what == "drop":
                drops[0] += 1
                logins.forget(digest)
                return
            d = load(digest)
        d.addErrback(lambda f: _log.warn("Console logins not refreshed from the fleet database: "
                                         "{why}", why=f.getErrorMessage()))

    store.db.listen(LOGINS_CHANNEL, heard)
    return load()
