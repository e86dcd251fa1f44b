"""Blocking access to the fleet database for code that already runs in a thread (key checks, the CLI)."""

import threading

from sealgate.fleet import schema
from sealgate.fleetdb import FleetDBError, connect, migrate, safeMessage


class SyncDB:
    """
    One autocommit psycopg connection per thread, reopened after a failure;
    SQLite-style C{?} placeholders are accepted so a store's queries read
    the same on both backends.  Errors are L{FleetDBError} without the URL.
    """

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()
        self._migrated = False

    def __repr__(self) -> str:
        from sealgate.fleetdb import redactURL

        return f"<SyncDB {redactURL(self.url)}>"

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.conn = connect(self.url, autocommit=True)
            if not self._migrated:
                with conn.transaction(), conn.cursor() as cur:
                    migrate(cur, schema.COMPONENT, schema.STEPS)
                self._migrated = True
        return conn

    def execute(self, sql: str, args=()):
        import psycopg

        try:
            return self._conn().execute(sql.replace("?", "%s"), tuple(args))
        except psycopg.OperationalError as e:
            self.close()
            raise FleetDBError(f"fleet database: {safeMessage(e, self.url)}") from None

    def transaction(self):
        """A context manager: the statements inside commit together or not at all."""
        return self._conn().transaction()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
