"""
The store's engine on a fleet's PostgreSQL: the embedded engine's sealing,
committed to the node's schema, payloads as bytea rows instead of segment
files.

The node's signing key, its pin and the writer lock stay in its state_dir
as in the embedded store; the database adds an advisory lock per node (two
gateways with one node name cannot interleave a log) and the registry row
with the node's public key (so a reader on any host can verify its log).
"""

import os
import time
from typing import Any

from sealgate.recording import _format as fmt
from sealgate.recording import _pgdb
from sealgate.recording._engine import Engine
from sealgate.recording._errors import StoreError
from sealgate.recording._segments import SEGMENT_LIMIT
from sealgate.recording.peerseal import restartReason

#: What the writer reports while it cannot commit (C{/readyz}, the log).
CANNOT_WRITE = "the recording store cannot write to the fleet database"
#: The writer's exit status when a commit's outcome is unknown (see L{PgEngine._reconnect}).
EX_COMMIT_UNKNOWN = 75


class DbSegments:
    """
    L{sealgate.recording._segments.SegmentFile}'s interface over the
    C{blobs} table: the bytes a batch places are inserted with the batch,
    in its transaction, so a failed batch leaves none behind and a
    committed one is durable with it.  Segment ids and offsets keep their
    meaning: a chunk is the bytes at its offset within one blob row.
    """

    def __init__(self, db: Any, segment: int, length: int):
        self.db = db
        self.segment = segment
        self.length = length
        self._rows: list = []

    def rotateIfFull(self) -> None:
        if self.length >= SEGMENT_LIMIT:
            self.segment, self.length = self.segment + 1, 0

    def reserve(self, size: int) -> int:
        offset = self.length
        self.length += size
        return offset

    def submit(self, buffers: list, offset: int, size: int) -> None:
        self._rows.append((self.segment, offset, b"".join(buffers)))

    write = submit

    def finish(self) -> None:
        rows, self._rows = self._rows, []
        self.db.executemany('INSERT INTO blobs (segment, "offset", data) VALUES (?, ?, ?)', rows)

    def rollback(self, segment: int, length: int) -> None:
        self._rows = []
        self.segment, self.length = segment, length

    def close(self) -> None:
        self._rows = []


class PgEngine(Engine):
    """
    L{Engine} writing node C{node}'s log to the fleet database at C{url}.
    A batch that fails because the database went away is rolled back like
    any failed batch; the next one reconnects first.
    """

    cannotWrite = CANNOT_WRITE

    def __init__(self, stateDir, origin: str | None, url: str, node: str, checkpointInterval: float = 1.0,
                 lockOwner: int | None = None):
        super().__init__(stateDir, origin, checkpointInterval, lockOwner)
        self.url = url
        self.node = node
        self.schema = _pgdb.schemaFor(node)
        self._lastItems: int | None = None
        self._backend: int | None = None  # the server process of our connection

    def _connect(self) -> Any:
        conn = _pgdb.connectURL(self.url)
        try:
            _pgdb.createNode(conn, self.node)
            if self._backend is not None:
                # Our connection before an outage may live on at the server
                # (a partition it never saw), holding the node's lock and the
                # rows of a transaction that will never finish: end it.
                _pgdb.endStale(conn, self._backend)
            _pgdb.lockNode(conn, self.node)
        except BaseException:
            conn.close()
            raise
        self._backend = conn.info.backend_pid
        return _pgdb.PgConnection(conn, self.schema)

    def _open(self, resume: bool) -> list:
        if self.origin is None:
            self.origin = f"sealgate/{self.node}"
        cut = super()._open(resume)
        _pgdb.registerNode(self.db.conn, self.node, self.origin, self.signer.verifier.vkey(), time.time())
        return cut

    def _recover(self, resume: bool) -> list:
        # Sessions a peer cut off while this node was down: their CLOSE names that peer.
        self._peerCuts = dict(self.db.execute("SELECT session, by_node FROM peer_cuts").fetchall())
        return super()._recover(resume)

    def _cutReason(self, sessionId: str, reason: str) -> str:
        peer = self._peerCuts.get(sessionId)
        if peer is None:
            return super()._cutReason(sessionId, reason)
        return restartReason(peer, self.node)

    def _openSegment(self) -> None:
        rows = self.db.execute("SELECT id, length FROM segments ORDER BY id").fetchall()
        if rows:
            self.segment, self.segmentLength = rows[-1]
        else:
            self.segment, self.segmentLength = 1, 0
            self.db.execute("INSERT INTO segments VALUES (1, 0)")
        self._seg = DbSegments(self.db, self.segment, self.segmentLength)

    def apply(self, items, forceCheckpoint: bool = False, now: float | None = None,
              meta: dict | None = None) -> list:
        if self.db.broken:
            self._reconnect()
        tokens = super().apply(items, forceCheckpoint, now, meta)
        if meta and "writer_items" in meta:
            self._lastItems = meta["writer_items"]
        return tokens

    def _insertLog(self, rows: list) -> None:
        self.db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)  # the adapter's plain insert

    def _reconnect(self) -> None:
        """
        A new connection after the database came back.  If the batch that
        failed was committed after all (the connection broke before the
        answer), this process's state is behind the database's: it exits,
        and the gateway's restarted writer resumes from the database, as
        after a writer crash, replaying only what was not committed.

        @raise StoreError: the database is still unreachable.
        """
        db = self._connect()
        stored = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('log_size', 'writer_items')"))
        if stored.get("log_size", 0) != self.log.size or (
                self._lastItems is not None and stored.get("writer_items") != self._lastItems):
            db.close()
            os._exit(EX_COMMIT_UNKNOWN)
        self.db.close()
        self.db = db
        self._seg = DbSegments(db, self.segment, self.segmentLength)

    def _eraseFrame(self, sessionId: str, seq: int, segment: int, offset: int, length: int, first: int) -> None:
        row = self.db.execute('SELECT "offset", data FROM blobs WHERE segment = ? AND "offset" <= ? '
                              'ORDER BY "offset" DESC LIMIT 1', (segment, offset)).fetchone()
        if row is None:
            raise StoreError(f"frame {seq} of session {sessionId} is missing from the fleet database")
        start = offset - row[0]
        buf = bytes(row[1])[start : start + length]
        for i, (saltAt, size) in enumerate(fmt.secretSpans(buf)):
            if first + i == seq:
                self.db.execute('UPDATE blobs SET data = overlay(data placing ? from ?) '
                                'WHERE segment = ? AND "offset" = ?',
                                (b"\x00" * size, start + saltAt + 1, segment, row[0]))
                return
        raise StoreError(f"frame {seq} of session {sessionId} is missing from its chunk in the fleet database")
