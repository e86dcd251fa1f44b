"""Failed-login counters in the fleet database, so a guesser gains nothing by spreading over nodes."""

from twisted.internet import defer
from zope.interface import implementer

from sealgate.fleet.interfaces import IBackoffCounters
from sealgate.fleetdb import FleetDB


@implementer(IBackoffCounters)
class PGBackoffCounters:
    """L{IBackoffCounters} on the C{login_backoff} table."""

    def __init__(self, db: FleetDB):
        self.db = db

    def read(self, keys, now, interval) -> defer.Deferred:
        keys = list(keys)
        if not keys:
            return defer.succeed({})
        d = self.db.runQuery(
            "SELECT kind, key, failures, last FROM login_backoff WHERE (kind, key) IN "
            f"({', '.join(['(%s, %s)'] * len(keys))}) AND last >= %s",
            [x for k in keys for x in k] + [now - interval])
        return d.addCallback(lambda rows: {(r[0], r[1]): (r[2], r[3]) for r in rows})

    def record(self, keys, now, interval) -> defer.Deferred:
        def upsert(cur):
            for kind, key in keys:
                cur.execute(
                    "INSERT INTO login_backoff (kind, key, failures, last) VALUES (%s, %s, 1, %s) "
                    "ON CONFLICT (kind, key) DO UPDATE SET failures = CASE WHEN "
                    "login_backoff.last < %s THEN 1 ELSE login_backoff.failures + 1 END, "
                    "last = GREATEST(login_backoff.last, EXCLUDED.last)",
                    (kind, key, now, now - interval))
            # Quiet keys go: the table stays the size of the recent failures.
            cur.execute("DELETE FROM login_backoff WHERE last < %s", (now - interval,))
        return self.db.runInteraction(upsert)

    def forget(self, keys) -> defer.Deferred:
        def delete(cur):
            for kind, key in keys:
                cur.execute("DELETE FROM login_backoff WHERE kind = %s AND key = %s", (kind, key))
        return self.db.runInteraction(delete)
