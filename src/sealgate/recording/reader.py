"""Synchronous, read-only access to a store for the CLI, the admin API, verify and export."""

import contextlib
import hashlib
import json
import sqlite3
from pathlib import Path

import attrs
from zope.interface import implementer

from sealgate.interfaces import IRecordedSession, IRecordingReader
from sealgate.recording import Frame
from sealgate.recording import _format as fmt
from sealgate.recording._engine import StoreError, dbPath, keyPath, segmentPath
from sealgate.recording.bundle import exportBundle
from sealgate.recording.checkpoint import NoteError, Signer, Verifier
from sealgate.recording.merkle import Levels, consistencyProof, rootOf
from sealgate.recording.pin import PinError, readPin
from sealgate.recording.records import (
    SessionQuery,
    SessionRecord,
    commandTexts,
    lastSeal,
    leafMayMatch,
)

_SESSION_COLUMNS = ("id", "opened", "closed", "open_leaf", "close_leaf", "size", "bytes_from_client",
                    "bytes_to_client", "protocol", "info", "reason", "cutoff", "root")


@implementer(IRecordedSession)
@attrs.frozen
class RecordedSession:
    """One stored session, for export writers: its sealed record, frames and log leaves."""

    reader: "StoreReader"
    record: SessionRecord

    def frames(self):
        return self.reader.frames(self.record.id)

    def events(self) -> list:
        return self.reader.events(self.record.id)

    def redactions(self) -> dict:
        return self.reader.redactions(self.record.id)

    def bundle(self, out) -> dict:
        return exportBundle(self.reader, self.record.id, out)


class StoreUnreadable(StoreError):
    """The store's database exists but SQLite cannot open it: a verdict for verify."""


@implementer(IRecordingReader)
class StoreReader:
    """
    Reads a store's SQLite file and segments without taking the writer's
    lock, so it works beside a running gateway (SQLite WAL readers see the
    last committed batch).  The only place outside the writer that speaks
    SQL to the store.
    """

    def __init__(self, stateDir):
        self.stateDir = Path(stateDir)
        path = dbPath(self.stateDir)
        if not path.exists():
            raise StoreError(f"no recording store in {self.stateDir} (no {path.name})")
        try:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self.db.execute("PRAGMA query_only=1")
        except sqlite3.DatabaseError as e:
            raise StoreUnreadable(f"the database {path} cannot be read: {e} (truncated or corrupted)")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def snapshot(self):
        """Read everything inside as of one commit, while the gateway goes on writing."""
        if self.db.in_transaction:
            yield self
            return
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            self.db.execute("COMMIT")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def origin(self) -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        if row is None:
            raise StoreError(f"the store in {self.stateDir} has no origin")
        return row[0]

    def verifier(self) -> Verifier:
        """The node's public key, read from its signing key file."""
        path = keyPath(self.stateDir)
        try:
            return Signer.fromSkey(path.read_text()).verifier
        except OSError as e:
            raise StoreError(f"cannot read the signing key {path}: {e.strerror}")
        except (UnicodeDecodeError, NoteError) as e:
            why = e if isinstance(e, NoteError) else "it is not text"
            raise StoreError(f"the signing key file {path} is malformed (truncated or altered): {why}")

    def pinnedVerifier(self) -> Verifier | None:
        """The key pinned at the store's first start, or None (a store from before pinning)."""
        try:
            return readPin(self.stateDir)
        except PinError as e:
            raise StoreError(str(e))

    # -- sessions, from their sealed leaves ---------------------------------

    def _parsed(self, sessionId: str, leaf, kinds) -> dict | None:
        """A log leaf's body, if it is what its index columns say (else verify names it)."""
        try:
            body = fmt.parseLogLeaf(leaf)
        except fmt.FormatError:
            return None
        return body if body.get("session") == sessionId and body["type"] in kinds else None

    def _lastSeal(self, sessionId: str) -> dict | None:
        rows = self.db.execute("SELECT leaf FROM log WHERE session = ? AND type IN ('progress', 'close') "
                               "ORDER BY n DESC LIMIT 1", (sessionId,))
        return lastSeal(b for (leaf,) in rows if (b := self._parsed(sessionId, leaf, ("progress", "close"))))

    def _commanded(self, query: SessionQuery) -> set[str]:
        """The sessions with a sealed command matching C{query.command}: one pass over the event leaves."""
        found: set[str] = set()
        for sid, leaf in self.db.execute("SELECT session, leaf FROM log WHERE type = 'event' "
                                         "AND session IS NOT NULL"):
            if sid in found:
                continue
            leaf = bytes(leaf)
            if not leafMayMatch(leaf, query.command or ""):
                continue
            body = self._parsed(sid, leaf, ("event",))
            if body is not None and query.matchesCommands(commandTexts((body,))):
                found.add(sid)
        return found

    def findSessions(self, query: SessionQuery | None = None) -> list[SessionRecord]:
        """Sessions matching C{query}, newest first, each described by its own sealed leaves."""
        query = query or SessionQuery()
        if query.limit is not None and query.limit <= 0:
            return []
        with self.snapshot():  # one commit: a session's OPEN and its latest seal agree
            return self._find(query)

    def _find(self, query: SessionQuery) -> list[SessionRecord]:
        # A leaf's time is when its event happened, so OPENs are only roughly
        # in time order: every one is looked at, none skipped by position.
        found: list[SessionRecord] = []
        commanded = None if query.command is None else self._commanded(query)
        for (leaf,) in self.db.execute("SELECT leaf FROM log WHERE type = 'open' ORDER BY n DESC"):
            try:
                body = fmt.parseLogLeaf(leaf)
            except fmt.FormatError:
                continue
            sid = body.get("session")
            if body["type"] != "open" or not isinstance(sid, str):
                continue
            if not query.matchesOpen(sid, body) or (commanded is not None and sid not in commanded):
                continue
            record = SessionRecord.fromLeaves(body, self._lastSeal(sid))
            if query.state is not None and record.state != query.state:
                continue
            found.append(record)
            if query.limit is not None and len(found) >= query.limit:
                break
        return found

    def sessionRecord(self, sessionId: str) -> SessionRecord | None:
        """One session as its sealed OPEN and latest PROGRESS/CLOSE leaves tell it, or None."""
        with self.snapshot():
            return self._record(sessionId)

    def _record(self, sessionId: str) -> SessionRecord | None:
        for (leaf,) in self.db.execute("SELECT leaf FROM log WHERE session = ? AND type = 'open' ORDER BY n",
                                       (sessionId,)):
            body = self._parsed(sessionId, leaf, ("open",))
            if body is not None:
                return SessionRecord.fromLeaves(body, self._lastSeal(sessionId))
        return None

    def recorded(self, sessionId: str) -> RecordedSession | None:
        """The session as an L{IRecordedSession} for export writers, or None."""
        record = self.sessionRecord(sessionId)
        return None if record is None else RecordedSession(self, record)

    # -- the session table (an index: verify compares it with the leaves) ---

    def _session(self, row) -> dict:
        d = dict(zip(_SESSION_COLUMNS, row, strict=True))
        d["info"] = json.loads(d["info"] or "{}")
        d["root"] = d["root"].hex() if d["root"] else None
        d["cutoff"] = bool(d["cutoff"])
        d["state"] = "open" if d["closed"] is None else ("cut off" if d["cutoff"] else "closed")
        return d

    def sessions(self, limit: int | None = None) -> list:
        """
        The session table's rows, newest first, as dicts (id, opened,
        closed, size, bytes, info, state...).  Only C{sealgate verify} and
        the writer's tests should want these: everything shown to a person
        comes from L{findSessions}.
        """
        sql = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions ORDER BY opened DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [self._session(r) for r in self.db.execute(sql)]

    def session(self, sessionId: str) -> dict | None:
        row = self.db.execute(
            f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions WHERE id = ?", (sessionId,)).fetchone()
        return self._session(row) if row else None

    def redactions(self, sessionId: str) -> dict:
        """C{{seq: {time, reason, leaf}}} for the session's redacted frames."""
        return {seq: {"time": t, "reason": r, "leaf": n} for seq, t, r, n in self.db.execute(
            "SELECT seq, time, reason, leaf FROM redactions WHERE session = ?", (sessionId,))}

    def chunks(self, sessionId: str) -> list:
        return self.db.execute(
            "SELECT first, count, segment, offset, length FROM chunks WHERE session = ? ORDER BY first",
            (sessionId,)).fetchall()

    def records(self, sessionId: str):
        """
        Yield C{(position, leaf, salt, payload)} (memoryviews) of every stored
        frame record of a session, in storage order.
        """
        files: dict = {}
        try:
            position = 0
            for first, _count, segment, offset, length in self.chunks(sessionId):
                try:
                    path = segmentPath(self.stateDir, segment)
                    f = files.get(segment)
                    if f is None:
                        f = files[segment] = open(path, "rb")
                    f.seek(offset)
                    buf = f.read(length)
                except OSError as e:
                    raise fmt.FormatError(f"segment file {path}: frame {position} and later cannot be read "
                                          f"({e.strerror})")
                except (TypeError, ValueError, OverflowError):
                    raise fmt.FormatError(f"the chunks table's row for frames from {first!r} names no readable "
                                          f"place (segment {segment!r}, offset {offset!r}, length {length!r}): "
                                          "the row was altered")
                try:
                    for leaf, salt, payload in fmt.iterRecords(buf):
                        yield position, leaf, salt, payload
                        position += 1
                except fmt.FormatError as e:
                    if len(buf) == length:
                        raise fmt.FormatError(f"segment file {path}: frame {position} does not parse "
                                              f"({e} of the chunk at byte {offset}): altered or corrupted")
                if len(buf) != length:
                    raise fmt.FormatError(f"segment file {path} is cut short at byte {offset + len(buf)}: "
                                          f"frame {position} and later are missing")
        finally:
            for f in files.values():
                f.close()

    def frames(self, sessionId: str):
        """Yield the session's L{Frame}s in order; redacted frames have C{data=None}."""
        redacted = self.redactions(sessionId)
        for position, leaf, _salt, payload in self.records(sessionId):
            f = fmt.parseFrameLeaf(leaf)
            yield Frame(f.seq, f.time, f.channel, f.direction, f.offset,
                        None if position in redacted else bytes(payload))

    def events(self, sessionId: str | None) -> list:
        """The parsed log leaves (open, progress, event, close) of a session, or node-level ones for None."""
        if sessionId is None:
            rows = self.db.execute("SELECT leaf FROM log WHERE session IS NULL ORDER BY n")
        else:
            rows = self.db.execute("SELECT leaf FROM log WHERE session = ? ORDER BY n", (sessionId,))
        return [fmt.parseLogLeaf(leaf) for (leaf,) in rows]

    # -- the log ------------------------------------------------------------

    def logLeaves(self, start: int = 0, end: int | None = None):
        """Yield C{(n, session, type, leaf)} in stored order, from leaf C{start} to before C{end}."""
        if end is None:
            yield from self.db.execute("SELECT n, session, type, leaf FROM log WHERE n >= ? ORDER BY n",
                                       (start,))
        else:
            yield from self.db.execute("SELECT n, session, type, leaf FROM log WHERE n >= ? AND n < ? "
                                       "ORDER BY n", (start, end))

    def leafHashes(self, size: int) -> list[bytes]:
        """The RFC 9162 hashes of the first C{size} log leaves (fewer if the log is shorter)."""
        rows = self.db.execute("SELECT leaf FROM log WHERE n < ? ORDER BY n", (size,))
        return [hashlib.sha256(b"\x00" + bytes(leaf)).digest() for (leaf,) in rows]

    def _tree(self, size: int | None) -> list[bytes]:
        if not size:
            latest = self.latestCheckpoint()
            if latest is None:
                raise StoreError("the store has no signed checkpoint yet")
            size = latest[0]
        hashes = self.leafHashes(size)
        if len(hashes) < size:
            raise ValueError(f"the log has only {len(hashes)} leaves, not {size}")
        return hashes

    def inclusionProof(self, index: int, size: int | None = None) -> dict:
        """
        The audit path of log leaf C{index} in the tree of C{size} leaves
        (default: the latest checkpoint's): C{{index, size, leaf_hash, root, proof}}, hashes as bytes.
        """
        hashes = self._tree(size)
        if not 0 <= index < len(hashes):
            raise ValueError(f"leaf {index} is outside a tree of size {len(hashes)}")
        levels = Levels(hashes)
        return {"index": index, "size": len(hashes), "leaf_hash": hashes[index], "root": levels.root(),
                "proof": levels.inclusionProof(index)}

    def consistencyProof(self, first: int, second: int | None = None) -> dict:
        """
        The proof that the tree of C{second} leaves (default: the latest
        checkpoint's) extends that of C{first}: C{{first, second, first_root, second_root, proof}}.
        """
        hashes = self._tree(second)
        if not 0 < first <= len(hashes):
            raise ValueError(f"first ({first}) must be between 1 and the tree's size ({len(hashes)})")
        return {"first": first, "second": len(hashes), "first_root": rootOf(hashes[:first]),
                "second_root": Levels(hashes).root(), "proof": consistencyProof(hashes, first)}

    def logLeavesFrom(self, start: int, limit: int):
        """C{(n, session, type, leaf)} of at most C{limit} leaves from index C{start} on."""
        return self.db.execute("SELECT n, session, type, leaf FROM log WHERE n >= ? ORDER BY n "
                               "LIMIT ?", (start, limit)).fetchall()

    def logSize(self) -> int:
        return self.db.execute("SELECT count(*) FROM log").fetchone()[0]

    def checkpoints(self) -> list:
        """C{[(size, time, note)]}, oldest first."""
        return self.db.execute("SELECT size, time, note FROM checkpoints ORDER BY size").fetchall()

    def meta(self) -> dict:
        return dict(self.db.execute("SELECT key, value FROM meta"))

    def rawSessions(self) -> dict:
        """Every sessions-table row as stored, C{id -> {column: value}} (for verify)."""
        cur = self.db.execute("SELECT * FROM sessions")
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur}

    def allRedactions(self) -> list:
        return self.db.execute("SELECT session, seq, leaf FROM redactions").fetchall()

    def segmentLengths(self) -> list:
        return self.db.execute("SELECT id, length FROM segments ORDER BY id").fetchall()

    def integrityProblems(self) -> list:
        """What SQLite's own check finds wrong in the database file (pages, indexes), if anything."""
        rows = [r[0] for r in self.db.execute("PRAGMA integrity_check(20)")]
        return [] if rows == ["ok"] else rows

    def latestCheckpoint(self):
        return self.db.execute(
            "SELECT size, time, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
