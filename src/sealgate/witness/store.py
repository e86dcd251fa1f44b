"""The witness's own SQLite: per log origin the latest checkpoint it cosigned, and refused requests as evidence."""

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sealgate.recording.checkpoint import Verifier, splitNote
from sealgate.recording.cosignature import AddCheckpoint, Cosigner, RequestError
from sealgate.witness._decide import BAD_REQUEST, OK, Latest, Outcome, decide

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosigned (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL,
    note TEXT NOT NULL, time INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refused (
    id INTEGER PRIMARY KEY, time INTEGER NOT NULL, origin TEXT NOT NULL,
    status INTEGER NOT NULL, reason TEXT NOT NULL, request BLOB NOT NULL);
"""


class WitnessStore:
    """
    Blocking; call it from a thread.  One check-and-persist at a time (a
    lock, and BEGIN IMMEDIATE against a second process on the same file):
    tlog-witness requires the check of the old size and the update to be
    atomic, or two racing requests could roll the witness back.
    """

    def __init__(self, path: Path, clock=time.time):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock

    def close(self) -> None:
        self._db.close()

    def latest(self, origin: str) -> tuple[int, bytes, str] | None:
        """C{(size, root, note with this witness's cosignature)} last cosigned for C{origin}."""
        with self._lock:
            row = self._db.execute("SELECT size, root, note FROM cosigned WHERE origin=?", (origin,)).fetchone()
        return (row[0], bytes(row[1]), row[2]) if row else None

    def refusals(self, origin: str) -> list[tuple[int, str]]:
        with self._lock:
            return self._db.execute("SELECT status, reason FROM refused WHERE origin=? ORDER BY id",
                                    (origin,)).fetchall()

    def submit(self, body: bytes, logs: Mapping[str, Sequence[Verifier]], cosigner: Cosigner) -> Outcome:
        """Decide one add-checkpoint request; on success persist and return the cosignature line as the body."""
        try:
            request = AddCheckpoint.parse(body)
        except RequestError as e:
            return Outcome(BAD_REQUEST, str(e), (str(e) + "\n").encode())
        now = int(self._clock())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                outcome = self._decide(request, logs, cosigner, now, body)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return outcome

    def _decide(self, request, logs, cosigner, now, body) -> Outcome:
        origin = request.checkpoint().origin if _parses(request) else ""
        row = self._db.execute("SELECT size, root FROM cosigned WHERE origin=?", (origin,)).fetchone()
        outcome = decide(request, logs, Latest(row[0], bytes(row[1])) if row else None)
        if outcome.status != OK or outcome.checkpoint is None:
            if outcome.evidence:
                self._db.execute("INSERT INTO refused (time, origin, status, reason, request) VALUES (?,?,?,?,?)",
                                 (now, origin, outcome.status, outcome.reason, body))
            return outcome
        cp = outcome.checkpoint
        line = cosigner.cosign(splitNote(request.note)[0], now)
        self._db.execute("INSERT OR REPLACE INTO cosigned (origin, size, root, note, time) VALUES (?,?,?,?,?)",
                         (cp.origin, cp.size, cp.root, request.note + line, now))
        return Outcome(OK, outcome.reason, line.encode(), checkpoint=cp)


def _parses(request: AddCheckpoint) -> bool:
    try:
        request.checkpoint()
    except RequestError:
        return False
    return True
