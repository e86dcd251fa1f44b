"""
The read interface over a fleet's PostgreSQL store: one node's log
(L{NodeReader}), or every node's sessions at once (L{FleetReader}).
"""

import contextlib
from pathlib import Path

import attrs
from zope.interface import implementer

from sealgate.interfaces import IRecordingReader
from sealgate.recording import _format as fmt
from sealgate.recording import _pgdb
from sealgate.recording._errors import StoreError
from sealgate.recording.checkpoint import NoteError, Verifier
from sealgate.recording.reader import RecordedSession, StoreReader
from sealgate.recording.records import SessionQuery, SessionRecord


class NodeReader(StoreReader):
    """
    L{StoreReader} over one node's schema: the same SQL, payloads read from
    the C{blobs} table, the key from the registry of nodes.  C{stateDir}
    is a label (what messages name); nothing is read from it.
    """

    embedded = False

    def __init__(self, url: str, node: str, conn=None, known: dict | None = None):
        self.node = node
        self.stateDir = Path(f"fleet database, node {node}")
        self._own = conn is None
        conn = _pgdb.connectURL(url, readOnly=True) if conn is None else conn
        if known is None:  # the registry's rows by node (a fleet reader passes them: one query, not one per node)
            known = {row[0]: row for row in _pgdb.listNodes(conn)}
        if node not in known:
            if self._own:
                conn.close()
            raise StoreError(f"the fleet database holds no recording store of node {node!r} "
                             f"(nodes: {', '.join(known) or 'none'})")
        self._row = known[node]
        self.db = _pgdb.PgConnection(conn, self._row[1])
        self._peerCuts = conn.execute("SELECT to_regclass(%s)", (f"{self._row[1]}.peer_cuts",)).fetchone()[0]

    def close(self) -> None:
        if self._own:
            self.db.close()

    def verifier(self) -> Verifier:
        try:
            return Verifier.fromVkey(self._row[3])
        except NoteError as e:
            raise StoreError(f"node {self.node}'s key in the fleet database's registry is malformed: {e}")

    def pinnedVerifier(self) -> Verifier | None:
        try:
            return Verifier.fromVkey(self._row[4])
        except NoteError as e:
            raise StoreError(f"node {self.node}'s pinned key in the fleet database's registry is malformed: {e}")

    def records(self, sessionId: str):
        position = 0
        blob: tuple = (None, -1, b"")
        for _first, _count, segment, offset, length in self.chunks(sessionId):
            if blob[0] != segment or not blob[1] <= offset < blob[1] + len(blob[2]):
                row = self.db.execute('SELECT "offset", data FROM blobs WHERE segment = ? AND "offset" <= ? '
                                      'ORDER BY "offset" DESC LIMIT 1', (segment, offset)).fetchone()
                blob = (segment, row[0], bytes(row[1])) if row else (segment, -1, b"")
            start = offset - blob[1]
            buf = blob[2][start : start + length] if blob[1] >= 0 else b""
            try:
                for leaf, salt, payload in fmt.iterRecords(buf):
                    yield position, leaf, salt, payload
                    position += 1
            except fmt.FormatError as e:
                if len(buf) == length:
                    raise fmt.FormatError(f"{self.stateDir}: frame {position} does not parse ({e} of the chunk "
                                          f"at segment {segment} byte {offset}): altered or corrupted")
            if len(buf) != length:
                raise fmt.FormatError(f"{self.stateDir}: the bytes of frame {position} and later are missing "
                                      f"(segment {segment}, byte {offset})")

    def _lastSeal(self, sessionId: str) -> dict | None:
        """
        The latest seal, or, for a session a peer cut off while this node
        was down (L{sealgate.recording.peerseal}) and not sealed since, a
        CLOSE as the peer's cut tells it (its sealed frames, the peer's
        time and reason).  The node's own CLOSE at its restart replaces it.
        """
        seal = super()._lastSeal(sessionId)
        if not self._peerCuts or (seal or {}).get("type") == "close":
            return seal
        row = self.db.execute("SELECT time, reason, log_size FROM peer_cuts WHERE session = ?",
                              (sessionId,)).fetchone()
        if row is None or (seal is not None and int(seal["n"]) >= row[2]):
            return seal  # sealed after the cut: the node was not down after all
        cut = dict(seal) if seal else {"n": self.db.execute(
            "SELECT n FROM log WHERE session = ? AND type = 'open'", (sessionId,)).fetchone()[0]}
        cut.update(type="close", time=row[0], reason=row[1], cutoff=True)
        return cut

    def segmentLengths(self) -> list:
        return []  # no files: a missing or short chunk is named by records()

    def integrityProblems(self) -> list:
        return []


def openReader(gateway, node: str | None = None):
    """
    The read interface a gateway's C{[gateway]} section selects: the fleet
    database's (every node's sessions) or the embedded store in state_dir.
    C{node}: another node's log alone (fleet mode).

    @raise StoreError: no such node.
    """
    if node is not None and node != gateway.node:
        if gateway.fleet is None:
            raise StoreError(f"this gateway is node {gateway.node!r} with an embedded store: it has no node {node!r}")
        return NodeReader(gateway.fleet.url, node)
    if gateway.fleet is not None:
        return FleetReader(gateway.fleet.url, gateway.node, gateway.state_dir)
    return StoreReader(gateway.state_dir)


def nodeNames(url: str) -> list[str]:
    conn = _pgdb.connectURL(url, readOnly=True)
    try:
        return [row[0] for row in _pgdb.listNodes(conn)]
    finally:
        conn.close()


@implementer(IRecordingReader)
class FleetReader:
    """
    Every node's sessions, frames and events (each record with its
    C{node}); the log itself (leaves, proofs, checkpoints, key) is the
    local node's, C{node}.  One database connection, a schema per node.
    """

    def __init__(self, url: str, node: str, stateDir=None):
        self.node = node
        self._conn = _pgdb.connectURL(url, readOnly=True)
        known = {row[0]: row for row in _pgdb.listNodes(self._conn)}
        self.readers = {name: NodeReader(url, name, self._conn, known) for name in known}
        if node not in self.readers:
            self._conn.close()
            raise StoreError(f"the fleet database holds no recording store of node {node!r} yet")
        self.local = self.readers[node]
        if stateDir is not None:
            # The local node's own files (witness cosignatures) are in its state_dir.
            self.local.stateDir = Path(stateDir)
        self.stateDir = self.local.stateDir
        self.origin = self.local.origin

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def snapshot(self):
        with self.local.snapshot():  # one connection: every node's schema as of one moment
            yield self

    def _owner(self, sessionId: str) -> NodeReader | None:
        for reader in self.readers.values():
            if reader.db.execute("SELECT 1 FROM log WHERE session = ? AND type = 'open' LIMIT 1",
                                 (sessionId,)).fetchone():
                return reader
        return None

    def findSessions(self, query: SessionQuery | None = None) -> list[SessionRecord]:
        query = query or SessionQuery()
        with self.snapshot():
            found = [attrs.evolve(r, node=name) for name, reader in self.readers.items()
                     for r in reader._find(query)]
        found.sort(key=lambda r: r.opened, reverse=True)
        return found if query.limit is None else found[: max(query.limit, 0)]

    def sessionRecord(self, sessionId: str) -> SessionRecord | None:
        with self.snapshot():
            reader = self._owner(sessionId)
            record = None if reader is None else reader._record(sessionId)
        return None if record is None else attrs.evolve(record, node=reader.node)  # type: ignore[union-attr]

    def recorded(self, sessionId: str):
        reader = self._owner(sessionId)
        record = None if reader is None else reader.sessionRecord(sessionId)
        if reader is None or record is None:
            return None
        return RecordedSession(reader, attrs.evolve(record, node=reader.node))

    def frames(self, sessionId: str):
        reader = self._owner(sessionId)
        return iter(()) if reader is None else reader.frames(sessionId)

    def events(self, sessionId: str | None) -> list:
        if sessionId is None:
            return self.local.events(None)
        reader = self._owner(sessionId)
        return [] if reader is None else reader.events(sessionId)

    def redactions(self, sessionId: str) -> dict:
        reader = self._owner(sessionId)
        return {} if reader is None else reader.redactions(sessionId)

    def logSize(self) -> int:
        return self.local.logSize()

    def logLeaves(self, start: int = 0, end: int | None = None):
        return self.local.logLeaves(start, end)

    def logLeavesFrom(self, start: int, limit: int):
        return self.local.logLeavesFrom(start, limit)

    def inclusionProof(self, index: int, size: int | None = None) -> dict:
        return self.local.inclusionProof(index, size)

    def consistencyProof(self, first: int, second: int | None = None) -> dict:
        return self.local.consistencyProof(first, second)

    def checkpoints(self) -> list:
        return self.local.checkpoints()

    def latestCheckpoint(self):
        return self.local.latestCheckpoint()

    def verifier(self) -> Verifier:
        return self.local.verifier()

    def pinnedVerifier(self) -> Verifier | None:
        return self.local.pinnedVerifier()
