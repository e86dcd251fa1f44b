"""Synchronous, read-only access to a store for the CLI, the admin API, verify and export."""

import contextlib
import json
import sqlite3
from pathlib import Path

from sealgate.recording import Frame
from sealgate.recording import _format as fmt
from sealgate.recording._engine import StoreError, dbPath, keyPath, segmentPath
from sealgate.recording.checkpoint import NoteError, Signer, Verifier
from sealgate.recording.pin import PinError, readPin

_SESSION_COLUMNS = ("id", "opened", "closed", "open_leaf", "close_leaf", "size", "bytes_from_client",
                    "bytes_to_client", "protocol", "info", "reason", "cutoff", "root")


class StoreReader:
    """
    Reads a store's SQLite file and segments without taking the writer's
    lock, so it works beside a running gateway (SQLite WAL readers see the
    last committed batch).
    """

    def __init__(self, stateDir):
        self.stateDir = Path(stateDir)
        path = dbPath(self.stateDir)
        if not path.exists():
            raise StoreError(f"no recording store in {self.stateDir} (no {path.name})")
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.db.execute("PRAGMA query_only=1")

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

    # -- sessions -----------------------------------------------------------

    def _session(self, row) -> dict:
        d = dict(zip(_SESSION_COLUMNS, row, strict=True))
        d["info"] = json.loads(d["info"] or "{}")
        d["root"] = d["root"].hex() if d["root"] else None
        d["cutoff"] = bool(d["cutoff"])
        d["state"] = "open" if d["closed"] is None else ("cut off" if d["cutoff"] else "closed")
        return d

    def sessions(self, limit: int | None = None) -> list:
        """Sessions, newest first, as dicts (id, opened, closed, size, bytes, info, state...)."""
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

    def logLeaves(self):
        """Yield C{(n, session, type, leaf)} in stored order."""
        yield from self.db.execute("SELECT n, session, type, leaf FROM log ORDER BY n")

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
