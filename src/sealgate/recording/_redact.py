"""Redaction: erase one sealed frame's salt and payload in place, every proof staying valid."""

import os
import time
from pathlib import Path
from typing import Any

from sealgate.recording import _format as fmt
from sealgate.recording._errors import StoreError
from sealgate.recording._segments import segmentPath


class Redaction:
    """The engine's redaction step (a mixin of L{sealgate.recording._engine.Engine})."""

    # Provided by the engine.
    db: Any
    stateDir: Path
    log: Any
    logLast: bytes
    _pending: dict
    _logAppend: Any
    apply: Any

    def redact(self, sessionId: str, seq: int, reason: str, actor: str | None = None, now=None) -> int:
        """
        Erase one frame's salt and payload in place and seal a redaction
        event.  The frame leaf stays, so every root and proof stays valid.
        The event is committed first: a crash in between leaves a frame
        marked redacted whose bytes a repeated C{redact} erases.

        @return: the log index of the redaction event.
        """
        now = time.time() if now is None else now
        known = self.db.execute("SELECT size FROM sessions WHERE id = ?", (sessionId,)).fetchone()
        if known is None:
            raise StoreError(f"no session {sessionId!r} in {self.stateDir}")
        row = self.db.execute(
            "SELECT segment, offset, length, first FROM chunks WHERE session = ? AND first <= ? "
            "ORDER BY first DESC LIMIT 1", (sessionId, seq)).fetchone()
        if row is None or not 0 <= seq < known[0]:
            raise StoreError(f"session {sessionId} has no frame {seq} (it has {known[0]})")
        done = self.db.execute(
            "SELECT leaf FROM redactions WHERE session = ? AND seq = ?", (sessionId, seq)).fetchone()
        if done:
            n = done[0]
        else:
            self._pending = {"log": [], "opens": [], "closes": [], "states": set()}
            logSnap = (self.log.copy(), self.logLast)
            n = self._logAppend("event", sessionId, now, {
                "event": "redaction", "fields": {"frame": seq, "reason": reason, "by": actor}})
            try:
                self.db.execute("BEGIN")
                self.db.execute("INSERT INTO redactions VALUES (?, ?, ?, ?, ?)",
                                (sessionId, seq, now, fmt.sqlText(reason), n))
                self.db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", self._pending["log"])
                self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("log_size", self.log.size), ("log_edge", self.log.pack()), ("log_last", self.logLast)])
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                self.log, self.logLast = logSnap
                raise
        self._eraseFrame(sessionId, seq, *row)
        self.apply([], forceCheckpoint=True, now=now)
        return n

    def _eraseFrame(self, sessionId: str, seq: int, segment: int, offset: int, length: int, first: int) -> None:
        """Zero frame C{seq}'s salt and payload in the chunk at C{offset} (the PostgreSQL backend's seam)."""
        with open(segmentPath(self.stateDir, segment), "r+b") as f:
            f.seek(offset)
            buf = f.read(length)
            for i, (saltAt, size) in enumerate(fmt.secretSpans(buf)):
                if first + i == seq:
                    f.seek(offset + saltAt)
                    f.write(b"\x00" * size)
                    f.flush()
                    os.fsync(f.fileno())
                    break
            else:
                raise StoreError(f"frame {seq} of session {sessionId} is missing from its segment")
