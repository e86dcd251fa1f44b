"""
Copy an embedded store (SQLite and segment files) into a fleet database,
row for row and byte for byte, so every leaf, root, checkpoint and proof
stays what it was: the log is the same log, only stored elsewhere.
"""

import time
from pathlib import Path

from sealgate.recording import _pgdb
from sealgate.recording._engine import Engine
from sealgate.recording._errors import StoreError
from sealgate.recording._segments import segmentPath
from sealgate.recording.pin import readPin
from sealgate.recording.reader import StoreReader

#: Rows per INSERT batch.
BATCH = 1000

_TABLES = (
    ("log", "SELECT n, session, type, leaf FROM log ORDER BY n", 4),
    ("sessions", "SELECT id, opened, closed, open_leaf, close_leaf, size, edge, last, bytes_from_client, "
                 "bytes_to_client, protocol, info, reason, cutoff, root FROM sessions", 15),
    ("chunks", "SELECT session, first, count, segment, offset, length FROM chunks", 6),
    ("segments", "SELECT id, length FROM segments", 2),
    ("checkpoints", "SELECT size, time, note FROM checkpoints", 3),
    ("redactions", "SELECT session, seq, time, reason, leaf FROM redactions", 5),
)


def migrate(stateDir: Path, url: str, log=lambda text: None) -> dict:
    """
    Copy the store in C{stateDir} to its node's schema at C{url}, in one
    transaction.  The gateway must be stopped (the store's lock is taken);
    the node is the origin's name (C{sealgate/<node>}), and the target
    schema must be empty.

    @return: counts of what was copied.
    @raise StoreError: with what to do.
    """
    lock = Engine(stateDir, None)
    lock._lock()  # refuses while a gateway writes this store
    try:
        with StoreReader(stateDir) as src:
            return _copy(src, url, log)
    finally:
        lock.close()


def _copy(src: StoreReader, url: str, log) -> dict:
    origin = src.origin
    prefix, _, node = origin.partition("/")
    from sealgate.fleetdb import NODE_NAME

    if prefix != "sealgate" or not NODE_NAME.match(node):
        raise StoreError(f"the store's origin {origin!r} is not sealgate/<node name>: its log cannot become "
                         "a fleet node's (the origin is signed into every checkpoint and cannot change)")
    vkey = src.verifier().vkey()
    pinned = readPin(src.stateDir)
    conn = _pgdb.connectURL(url)
    try:
        _pgdb.createNode(conn, node)
        _pgdb.lockNode(conn, node)
        db = _pgdb.PgConnection(conn, _pgdb.schemaFor(node))
        if db.execute("SELECT 1 FROM log LIMIT 1").fetchone() or db.execute("SELECT 1 FROM meta LIMIT 1").fetchone():
            raise StoreError(f"node {node!r} already has a log in the fleet database: migrate into a new "
                             "database, or drop that node's schema first")
        counts: dict = {}
        with src.snapshot():
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", src.meta().items())
                for table, sql, width in _TABLES:
                    counts[table] = _insert(db, table, width, src.db.execute(sql))
                counts["bytes"] = _blobs(db, src)
                _pgdb.registerNode(conn, node, origin, pinned.vkey() if pinned else vkey, time.time())
                conn.execute(f"UPDATE {_pgdb.REGISTRY_SCHEMA}.nodes SET vkey = %s WHERE node = %s", (vkey, node))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        log(f"copied node {node}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        counts["node"] = node
        return counts
    finally:
        conn.close()


def _insert(db, table: str, width: int, rows) -> int:
    sql = f"INSERT INTO {table} VALUES ({', '.join('?' * width)})"
    n = 0
    batch: list = []
    for row in rows:
        batch.append(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
        if len(batch) >= BATCH:
            db.executemany(sql, batch)
            n += len(batch)
            batch = []
    db.executemany(sql, batch)
    return n + len(batch)


def _blobs(db, src: StoreReader) -> int:
    """Each chunk's bytes from its segment file, as one blob row at the chunk's own place."""
    total = 0
    files: dict = {}
    try:
        for segment, offset, length in src.db.execute("SELECT segment, offset, length FROM chunks "
                                                      "ORDER BY segment, offset"):
            f = files.get(segment)
            if f is None:
                f = files[segment] = open(segmentPath(src.stateDir, segment), "rb")
            f.seek(offset)
            data = f.read(length)
            if len(data) != length:
                raise StoreError(f"segment file {segmentPath(src.stateDir, segment)} is cut short at byte "
                                 f"{offset + len(data)}: run sealgate verify on the embedded store first")
            db.executemany('INSERT INTO blobs (segment, "offset", data) VALUES (?, ?, ?)',
                           [(segment, offset, data)])
            total += length
    except OSError as e:
        raise StoreError(f"cannot read a segment file of {src.stateDir}: {e}")
    finally:
        for f in files.values():
            f.close()
    return total
