"""The cosignatures the gateway collected from its witnesses: their own SQLite beside the store, read by export and the log API."""

import sqlite3
from pathlib import Path

from sealgate.recording.cosignature import addSignatures

DB_NAME = "witness.sqlite"


class Cosignatures:
    """The cosignatures the gateway collected, in its own SQLite beside the store (never the writer's file); blocking."""

    def __init__(self, stateDir: Path, readOnly: bool = False):
        path = Path(stateDir) / DB_NAME
        if readOnly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True) if path.exists() else None
            return
        self._db = sqlite3.connect(str(path), timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cosignatures (size INTEGER NOT NULL, witness TEXT NOT NULL,"
                         " line TEXT NOT NULL, timestamp INTEGER NOT NULL, PRIMARY KEY (size, witness))")
        self._db.commit()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._db is not None:
            self._db.close()

    def add(self, size: int, witness: str, line: str, timestamp: int) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO cosignatures VALUES (?,?,?,?)", (size, witness, line, timestamp))
        self._db.commit()

    def _rows(self, query: str, args) -> list:
        if self._db is None:
            return []
        try:
            return self._db.execute(query, args).fetchall()
        except sqlite3.OperationalError as e:
            # A reader that opened the file between its creation and its table: nothing collected yet.
            if "no such table" in str(e):
                return []
            raise

    def latest(self, witness: str) -> int | None:
        """The largest size C{witness} cosigned, or None."""
        rows = self._rows("SELECT max(size) FROM cosignatures WHERE witness=?", (witness,))
        return rows[0][0] if rows else None

    def count(self, witness: str) -> int:
        """How many checkpoints C{witness} cosigned."""
        rows = self._rows("SELECT count(*) FROM cosignatures WHERE witness=?", (witness,))
        return rows[0][0] if rows else 0

    def timestamp(self, size: int, witness: str) -> int | None:
        """When C{witness} cosigned C{size} (its cosignature's timestamp), or None."""
        rows = self._rows("SELECT timestamp FROM cosignatures WHERE size=? AND witness=?", (size, witness))
        return rows[0][0] if rows else None

    def lines(self, size: int) -> list[str]:
        return [r[0] for r in self._rows("SELECT line FROM cosignatures WHERE size=? ORDER BY witness", (size,))]

    def witnessedSize(self, names, quorum: int) -> int:
        """The largest size at least C{quorum} of the named witnesses cosigned (0 if none)."""
        if quorum <= 0:
            return 0
        names = list(names)
        marks = ",".join("?" * len(names))
        rows = self._rows(f"SELECT max(size) FROM (SELECT size FROM cosignatures WHERE witness IN ({marks})"
                          " GROUP BY size HAVING count(*) >= ?)", (*names, quorum))
        return (rows[0][0] or 0) if rows else 0


def witnessedNote(stateDir: Path, size: int, note: str) -> str:
    """A stored checkpoint note with the cosignatures collected for its size appended (blocking)."""
    with Cosignatures(stateDir, readOnly=True) as c:
        return addSignatures(note, c.lines(size))


def cosignedCheckpoint(stateDir: Path, checkpoints, minSize: int) -> tuple[int, str] | None:
    """
    C{(size, note with its cosignatures)} of the largest stored checkpoint of
    at least C{minSize} leaves that witnesses cosigned, or None (blocking).
    """
    with Cosignatures(stateDir, readOnly=True) as c:
        for size, _t, note in sorted(checkpoints, reverse=True):
            if size < minSize:
                break
            lines = c.lines(size)
            if lines:
                return size, addSignatures(note, lines)
    return None
