"""
The recording store's tables on PostgreSQL, behind the small part of
sqlite3's connection API the engine and reader use.

Each node's log lives in its own schema (C{sealgate_rec_<node>}) with the
embedded store's tables, so the engine and the reader speak the same SQL
to both (C{?} placeholders become C{%s}; the few SQLite-only statements
are spelled out in L{_REWRITES}).  Payload bytes, which the embedded store
keeps in segment files, are rows of C{blobs} (bytea).  The registry
C{sealgate_store.nodes} lists every node's schema, origin and public key:
what a reader of the whole fleet, or C{sealgate verify} on another host,
needs.  Blocking: the writer process and the CLI call it, or a thread.
"""

import re
import weakref
from typing import Any

from sealgate.recording._errors import StoreError

#: Where the registry of nodes lives (shared by every node of the fleet).
REGISTRY_SCHEMA = "sealgate_store"

#: A node's tables: the embedded store's schema, in PostgreSQL's types.
NODE_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bytea);
CREATE TABLE IF NOT EXISTS log (n bigint PRIMARY KEY, session text, type text NOT NULL, leaf bytea NOT NULL);
CREATE INDEX IF NOT EXISTS log_session ON log(session, type);
CREATE INDEX IF NOT EXISTS log_type ON log(type);
CREATE TABLE IF NOT EXISTS sessions (
    id text PRIMARY KEY, opened double precision, closed double precision, open_leaf bigint,
    close_leaf bigint, size bigint NOT NULL DEFAULT 0, edge bytea NOT NULL DEFAULT '\\x'::bytea, last bytea,
    bytes_from_client bigint NOT NULL DEFAULT 0, bytes_to_client bigint NOT NULL DEFAULT 0,
    protocol text, info text, reason text, cutoff integer NOT NULL DEFAULT 0, root bytea);
CREATE TABLE IF NOT EXISTS chunks (
    session text NOT NULL, first bigint NOT NULL, count bigint NOT NULL,
    segment bigint NOT NULL, "offset" bigint NOT NULL, length bigint NOT NULL,
    PRIMARY KEY (session, first));
CREATE TABLE IF NOT EXISTS segments (id bigint PRIMARY KEY, length bigint NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (segment bigint NOT NULL, "offset" bigint NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (segment, "offset"));
CREATE TABLE IF NOT EXISTS checkpoints (size bigint PRIMARY KEY, time double precision NOT NULL, note text NOT NULL);
CREATE TABLE IF NOT EXISTS redactions (
    session text NOT NULL, seq bigint NOT NULL, time double precision, reason text, leaf bigint,
    PRIMARY KEY (session, seq));
"""
#: A dead node's sessions cut off by a peer (L{sealgate.recording.peerseal}): not sealed in its log.
PEER_CUTS = """
CREATE TABLE IF NOT EXISTS peer_cuts (
    session text PRIMARY KEY, by_node text NOT NULL, time double precision NOT NULL, reason text NOT NULL,
    size bigint NOT NULL, log_size bigint NOT NULL);
"""

REGISTRY = f"""
CREATE SCHEMA IF NOT EXISTS {REGISTRY_SCHEMA};
CREATE TABLE IF NOT EXISTS {REGISTRY_SCHEMA}.nodes (
    node text PRIMARY KEY, schema text NOT NULL, origin text NOT NULL,
    vkey text NOT NULL, pinned text NOT NULL, registered double precision NOT NULL);
"""

#: SQLite statements whose PostgreSQL spelling is not a placeholder swap.
_REWRITES = {
    "INSERT OR REPLACE INTO segments VALUES (?, ?)":
        "INSERT INTO segments VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET length = EXCLUDED.length",
    "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)":
        "INSERT INTO checkpoints VALUES (%s, %s, %s) ON CONFLICT (size) DO UPDATE "
        "SET time = EXCLUDED.time, note = EXCLUDED.note",
    "INSERT INTO meta VALUES ('origin', ?), ('format', 1)":
        "INSERT INTO meta VALUES ('origin', %s), ('format', %s)",
    "BEGIN": "BEGIN ISOLATION LEVEL REPEATABLE READ",
}
#: An INSERT of whole rows, nothing on conflict: done with COPY.
_PLAIN_INSERT = re.compile(r"^INSERT INTO (\w+)(?: \(([^)]*)\))? VALUES \((?:\?, )*\?\)$")
#: Meta values are SQLite's loose types (text, integers, bytes): kept tagged (L{_put}, L{_value}).
_META_PUT = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
_META_PUT_PG = "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"


def schemaFor(node: str) -> str:
    return f"sealgate_rec_{node}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _translate(sql: str) -> str:
    out = _REWRITES.get(sql)
    if out is not None:
        return out
    return sql.replace("%", "%%").replace("?", "%s").replace(" offset,", ' "offset",').replace(
        " offset ", ' "offset" ').replace("offset FROM", '"offset" FROM')


class _Rows:
    """Rows already fetched (meta values decoded), as a cursor."""

    def __init__(self, rows: list):
        self._rows = rows

    def __iter__(self):
        return iter(self._rows)

    def fetchall(self) -> list:
        return list(self._rows)

    def fetchone(self):
        return self._rows[0] if self._rows else None


def _put(v) -> bytes:
    """A meta value as bytes: a tag (i, f, s, b, n) and the value (never unpickled or unmarshal'd)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str, bytes, bytearray, memoryview, type(None))):
        raise TypeError(f"meta value of type {type(v).__name__}")
    if v is None:
        return b"n"
    if isinstance(v, int):
        return b"i" + str(v).encode()
    if isinstance(v, float):
        return b"f" + repr(v).encode()
    if isinstance(v, str):
        return b"s" + v.encode()
    return b"b" + bytes(v)


def _value(v):
    """A meta value as stored; what does not decode is returned as it is (verify names the mismatch)."""
    if v is None:
        return None
    v = bytes(v)
    tag, body = v[:1], v[1:]
    try:
        if tag == b"i":
            return int(body)
        if tag == b"f":
            return float(body)
        if tag == b"s":
            return body.decode()
    except ValueError:
        return v
    if tag == b"b":
        return body
    return None if tag == b"n" else v


def connectURL(url: str, readOnly: bool = False):
    """
    A psycopg connection in autocommit mode (transactions are explicit).
    Short connect and TCP user timeouts: a database that went away must
    fail a batch within seconds, so the pressure contract sees it.

    @raise StoreError: it cannot connect (the message carries no password).
    """
    import psycopg

    from sealgate.fleetdb import redactURL, safeMessage

    try:
        conn = psycopg.connect(url, autocommit=True, application_name="sealgate-store", connect_timeout=3,
                               keepalives=1, keepalives_idle=2,
                               keepalives_interval=1, keepalives_count=2, tcp_user_timeout=4000)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to the fleet database {redactURL(url)}: {safeMessage(e, url)}") from None
    if readOnly:
        conn.execute("SET default_transaction_read_only = on")
    return conn


#: Which schema each open connection's search_path names (weak: it goes with its connection).
_current: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class PgConnection:
    """
    One node's schema on a psycopg connection, looking like the sqlite3
    connection the store code was written against: C{execute} returns a
    cursor (iterable, C{fetchone}, C{fetchall}, C{description}),
    C{executemany}, C{in_transaction}, C{close}.
    """

    def __init__(self, conn, schema: str):
        self.conn = conn
        self.schema = schema
        self._use()

    def _use(self) -> None:
        """Point the connection at this node's schema (a fleet reader shares one connection)."""
        if _current.get(self.conn) != self.schema:
            self.conn.execute(f"SET search_path TO {_quote(self.schema)}")
            _current[self.conn] = self.schema

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR,
                                                     TransactionStatus.ACTIVE)

    @property
    def broken(self) -> bool:
        return self.conn.broken or self.conn.closed

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql == "ROLLBACK":
            try:
                return self.conn.execute("ROLLBACK")
            except Exception:
                return None  # a connection that broke has nothing left to roll back
        if sql.startswith("INSERT INTO meta VALUES ('origin'"):
            params = (_put(params[0]), _put(1))
        elif sql == _META_PUT:
            return self.conn.execute(_META_PUT_PG, (params[0], _put(params[1])))
        self._use()
        cur = self.conn.execute(_translate(sql), tuple(params) if params else None)
        if sql.startswith("SELECT key, value FROM meta"):
            return _Rows([(k, _value(v)) for k, v in cur.fetchall()])
        if sql.startswith("SELECT value FROM meta"):
            return _Rows([(_value(v),) for (v,) in cur.fetchall()])
        return cur

    def executemany(self, sql: str, rows) -> None:
        rows = list(rows)
        if not rows:
            return
        self._use()
        with self.conn.cursor() as cur:
            plain = _PLAIN_INSERT.match(sql)
            if plain:
                # A batch's log leaves and payloads: COPY costs the writer
                # an eighth of executemany's CPU per row.
                table, columns = plain.groups()
                with cur.copy(f"COPY {table} {'(' + columns + ')' if columns else ''} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            elif sql == _META_PUT:
                cur.executemany(_META_PUT_PG, [(k, _put(v)) for k, v in rows])
            else:
                cur.executemany(_translate(sql), rows)

    def executescript(self, script: str) -> None:
        self.conn.execute(script)

    def close(self) -> None:
        _current.pop(self.conn, None)
        try:
            self.conn.close()
        except Exception:
            pass


def createNode(conn, node: str) -> None:
    """The registry and C{node}'s schema and tables (idempotent, under one advisory lock)."""
    schema = schemaFor(node)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (0x5EA15707,))
        conn.execute(REGISTRY)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
        conn.execute(f"SET LOCAL search_path TO {_quote(schema)}")
        conn.execute(NODE_TABLES)
        conn.execute(PEER_CUTS)


def registerNode(conn, node: str, origin: str, vkey: str, now: float) -> str:
    """
    Publish C{node}'s public key; the first one registered stays pinned.

    @return: the pinned vkey.
    """
    conn.execute(f"INSERT INTO {REGISTRY_SCHEMA}.nodes VALUES (%s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT (node) DO UPDATE SET vkey = EXCLUDED.vkey",
                 (node, schemaFor(node), origin, vkey, vkey, now))
    return conn.execute(f"SELECT pinned FROM {REGISTRY_SCHEMA}.nodes WHERE node = %s", (node,)).fetchone()[0]


def listNodes(conn) -> list:
    """C{[(node, schema, origin, vkey, pinned)]} of every node, by name; empty without a registry."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{REGISTRY_SCHEMA}.nodes",)).fetchone()[0]
    if exists is None:
        return []
    return conn.execute(f"SELECT node, schema, origin, vkey, pinned FROM {REGISTRY_SCHEMA}.nodes "
                        "ORDER BY node").fetchall()


def lockNode(conn, node: str) -> None:
    """
    Hold C{node}'s writer lock for the life of C{conn}: two gateways given
    the same node name would otherwise interleave one log.

    @raise StoreError: another connection holds it.
    """
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (schemaFor(node),)).fetchone()[0]
    if not got:
        raise StoreError(f"node {node!r}'s log in the fleet database is being written by another gateway "
                         "(its advisory lock is held); give each gateway its own [gateway] node")


def tryLockNode(conn, node: str) -> bool:
    """Take C{node}'s writer lock if no writer holds it (a peer sealing a dead node's sessions)."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (schemaFor(node),)).fetchone()[0])


def unlockNode(conn, node: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (schemaFor(node),))


def endStale(conn, pid: int) -> None:
    """
    Terminate server process C{pid} if it is still a store writer's
    connection holding an advisory lock (a writer's own connection from
    before an outage), waiting up to 3 s for it to go.
    """
    conn.execute("SELECT pg_terminate_backend(a.pid, 3000) FROM pg_stat_activity a "
                 "WHERE a.pid = %s AND a.application_name = 'sealgate-store' AND EXISTS "
                 "(SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory')", (pid,))
