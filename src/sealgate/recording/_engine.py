"""The store's synchronous core: lock, key, schema, recovery, batched sealed appends."""

import fcntl
import hashlib
import os
import sqlite3
import time
from itertools import chain
from pathlib import Path
from typing import Any

from sealgate.recording import _format as fmt
from sealgate.recording._errors import StoreError, StoreLocked
from sealgate.recording._redact import Redaction
from sealgate.recording._segments import SEGMENT_LIMIT, SegmentFile, segmentPath
from sealgate.recording.checkpoint import Checkpoint, Signer, signCheckpoint
from sealgate.recording.merkle import CompactTree
from sealgate.recording.pin import pinKey

__all__ = ["Engine", "SessionState", "StoreError", "StoreLocked", "SEGMENT_LIMIT", "segmentPath"]

PROGRESS_BYTES = 4 * 1024 * 1024
#: A session's frames in one batch are written out as a run once they reach
#: this many bytes, while the batch goes on sealing (bulk transfers only).
RUN_BYTES = 1 << 20
#: Log rows per INSERT statement (4 values each, far below SQLite's 999 limit).
LOG_ROWS = 64
_LOG_INSERT_MANY = "INSERT INTO log VALUES " + ", ".join(["(?, ?, ?, ?)"] * LOG_ROWS)
_ZERO_LOG_HEAD = b"\x00" + fmt.LOG_HEAD
_sha256 = hashlib.sha256
#: What a frame record costs in the segment beside its leaf and payload.
RECORD_OVERHEAD = fmt.RECORD.size + fmt.SALT_SIZE

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS log (n INTEGER PRIMARY KEY, session TEXT, type TEXT NOT NULL, leaf BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS log_session ON log(session);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, opened REAL, closed REAL, open_leaf INTEGER, close_leaf INTEGER,
    size INTEGER NOT NULL DEFAULT 0, edge BLOB NOT NULL DEFAULT x'', last BLOB,
    bytes_from_client INTEGER NOT NULL DEFAULT 0, bytes_to_client INTEGER NOT NULL DEFAULT 0,
    protocol TEXT, info TEXT, reason TEXT, cutoff INTEGER NOT NULL DEFAULT 0, root BLOB);
CREATE TABLE IF NOT EXISTS chunks (
    session TEXT NOT NULL, first INTEGER NOT NULL, count INTEGER NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    PRIMARY KEY (session, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (id INTEGER PRIMARY KEY, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, time REAL NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS redactions (
    session TEXT NOT NULL, seq INTEGER NOT NULL, time REAL, reason TEXT, leaf INTEGER,
    PRIMARY KEY (session, seq)) WITHOUT ROWID;
"""


def dbPath(stateDir: Path) -> Path:
    return Path(stateDir) / "recordings.sqlite"


def keyPath(stateDir: Path) -> Path:
    return Path(stateDir) / "signing.key"


def lockPath(stateDir: Path) -> Path:
    return Path(stateDir) / "store.lock"


def failedPath(stateDir: Path) -> Path:
    """Left by a gateway whose store failed: its open sessions are sealed as "store failed"."""
    return Path(stateDir) / "store-failed"


def loadOrCreateKey(stateDir: Path, origin: str) -> Signer:
    """The node's signing key; created mode 0600 on first use."""
    path = keyPath(stateDir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise StoreError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        signer = Signer.fromSkey(path.read_text())
        if signer.name != origin:
            raise StoreError(
                f"{path} signs for {signer.name!r} but this node's origin is {origin!r}; "
                "set [gateway] node back or use a new state_dir"
            )
        return signer
    signer = Signer.generate(origin)
    with os.fdopen(fd, "w") as f:
        f.write(signer.skey() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return signer


class SessionState:
    """Writer-side state of one session tree (touched only by the writer's loop)."""

    __slots__ = ("id", "prefix", "zprefix", "leafLen", "tree", "last", "offsets", "sealed", "sealedAt", "unsealedBytes",
                 "closed", "dead")

    def __init__(self, sessionId: str):
        self.id = sessionId
        self.prefix = fmt.framePrefix(sessionId)
        self.zprefix = b"\x00" + self.prefix  # a leaf hash's input starts so
        self.leafLen = len(self.prefix) + fmt.FRAME_FIELDS.size + 64
        self.tree = CompactTree()
        self.last = fmt.NO_PREV
        self.offsets = [0, 0]
        self.sealed = 0
        self.sealedAt = time.time()
        self.unsealedBytes = 0
        self.closed = False
        self.dead = False

    def snapshot(self):
        return (self.tree.copy(), self.last, list(self.offsets), self.sealed, self.sealedAt,
                self.unsealedBytes, self.closed, self.dead)

    def restore(self, snap) -> None:
        (self.tree, self.last, self.offsets, self.sealed, self.sealedAt, self.unsealedBytes,
         self.closed, self.dead) = snap


class Engine(Redaction):
    """
    Everything the store does on disk, synchronously, for one writer process
    (or one CLI command holding the lock).  A batch is all-or-nothing: on a
    failed write the SQLite transaction is rolled back, the segment truncated
    and the in-memory state restored, so the same batch can be retried.
    """

    def __init__(self, stateDir, origin: str | None, checkpointInterval: float = 1.0,
                 lockOwner: int | None = None):
        self.stateDir = Path(stateDir)
        self.lockOwner = lockOwner or os.getpid()  # the gateway's pid, named to a second opener
        self.origin: Any = origin
        self.checkpointInterval = checkpointInterval
        self.db: Any = None
        self._lockFd: int | None = None
        self._seg: Any = None
        self._pending: dict[str, Any] = {}
        self.sessions: dict[str, SessionState] = {}
        self.pinnedNow = False

    # -- opening ------------------------------------------------------------

    def open(self, resume: bool = False) -> list:
        """
        Lock, create or load, recover.  With C{resume} (a writer restarted
        under a running gateway) open sessions stay open in L{sessions}, to
        go on where the last commit left them.

        @return: ids of sessions closed as cut off.
        """
        try:
            (self.stateDir / "segments").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create state_dir {self.stateDir}: {e.strerror}")
        self._lock()
        try:
            return self._open(resume)
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        path = lockPath(self.stateDir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"the recording store {self.stateDir} is in use: lock {path} is held by "
                f"process {holder}; stop that gateway or use another state_dir"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.lockOwner}\n".encode(), 0)
        self._lockFd = fd

    def _connect(self) -> Any:
        """The store's database, its tables created (the PostgreSQL backend's seam)."""
        db = sqlite3.connect(dbPath(self.stateDir), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        return db

    def _open(self, resume: bool) -> list:
        self.db = self._connect()
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        stored = meta.get("origin")
        if self.origin is None:
            if stored is None:
                raise StoreError(f"{self.stateDir} holds no recording store yet")
            self.origin = stored
        elif stored is not None and stored != self.origin:
            raise StoreError(
                f"{self.stateDir} was created for origin {stored!r}, not {self.origin!r}; "
                "set [gateway] node back or use a new state_dir"
            )
        self.signer = loadOrCreateKey(self.stateDir, self.origin)
        self.pinnedNow = pinKey(self.stateDir, self.signer)
        if stored is None:
            self.db.execute("INSERT INTO meta VALUES ('origin', ?), ('format', 1)", (self.origin,))
        self.log = CompactTree.unpack(meta.get("log_size", 0), meta.get("log_edge", b""))
        self.logLast = meta.get("log_last", fmt.NO_PREV)
        row = self.db.execute("SELECT max(size), max(time) FROM checkpoints").fetchone()
        self.checkpointSize, self.checkpointTime = row[0] or 0, row[1] or 0.0
        self._openSegment()
        return self._recover(resume)

    def _openSegment(self) -> None:
        rows = self.db.execute("SELECT id, length FROM segments ORDER BY id").fetchall()
        known = {i for i, _ in rows}
        for p in (self.stateDir / "segments").glob("*.seg"):
            if p.stem.isdigit() and int(p.stem) not in known:
                p.unlink()  # created but never committed
        for seg, length in rows:
            p = segmentPath(self.stateDir, seg)
            if p.exists() and p.stat().st_size > length:
                # Bytes written before a crash but never committed: not part of the store.
                with open(p, "r+b") as f:
                    f.truncate(length)
        if rows:
            self.segment, self.segmentLength = rows[-1]
        else:
            self.segment, self.segmentLength = 1, 0
            self.db.execute("INSERT INTO segments VALUES (1, 0)")
        self._seg = SegmentFile(self.stateDir, self.segment, self.segmentLength)

    def _recover(self, resume: bool) -> list:
        rows = self.db.execute(
            "SELECT id, size, edge, last, bytes_from_client, bytes_to_client FROM sessions "
            "WHERE closed IS NULL ORDER BY opened"
        ).fetchall()
        failed = failedPath(self.stateDir)
        reason = ("store failed: the recording store could not record, so the gateway closed this session"
                  if failed.exists() else "cut off: the gateway stopped without closing this session")
        cut: list = []
        for sid, size, edge, last, bIn, bOut in rows:
            s = SessionState(sid)
            s.tree = CompactTree.unpack(size, edge)
            s.last = last or fmt.NO_PREV
            s.offsets = [bIn, bOut]
            s.sealed = size  # its last commit's state; a PROGRESS follows the next frames
            self.sessions[sid] = s
            cut.append(("close", s, self._cutReason(sid, reason), {}, None, True))
        if resume:
            return []
        if not self.db.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone():
            # A signed empty log from the first start on: an auditor can tell a
            # store whose log was wiped from one that never recorded anything.
            note = signCheckpoint(self.signer, Checkpoint(self.origin, 0, self.log.root()))
            self.db.execute("INSERT INTO checkpoints VALUES (0, ?, ?)", (time.time(), note))
        if cut:
            self.apply(cut, forceCheckpoint=True)
        elif self.log.size > self.checkpointSize:
            self.apply([], forceCheckpoint=True)
        failed.unlink(missing_ok=True)
        return [s.id for _, s, *_ in cut]

    def _cutReason(self, sessionId: str, reason: str) -> str:
        """Why a session left open by the last run is closed now (the PostgreSQL backend's seam)."""
        return f"{reason} (closed when the store was next opened)"

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None
        if self.db is not None:
            self.db.close()
            self.db = None
        if self._lockFd is not None:
            os.close(self._lockFd)
            self._lockFd = None

    # -- writing ------------------------------------------------------------

    def apply(self, items, forceCheckpoint: bool = False, now: float | None = None,
              meta: dict | None = None) -> list:
        """
        Seal and commit one batch of queued items.

        Frame items are C{(state, time, channel, direction, data)}; others
        have six or seven fields C{(kind, state, a, b, token, cutoff[,
        time])}: C{("open", state, info, ...)}, C{("event", state or None,
        kind, fields, ...)}, C{("close", state, reason, stats, token,
        cutoff, ...)}; without a time, the batch's time is used.  Returns the
        close items' tokens once the batch (and a checkpoint covering it) is
        durable.  C{meta} rows are committed with the batch (the writer's
        count of items made durable).

        @raise OSError, sqlite3.Error: nothing of the batch is kept.
        """
        now = time.time() if now is None else now
        snaps: dict = {}
        logSnap = (self.log.copy(), self.logLast)
        segSnap = (self.segment, self.segmentLength)
        self._pending = {"log": [], "opens": [], "closes": [], "states": set(), "chunks": []}
        records: dict = {}
        SALT = fmt.SALT_SIZE
        MAX = fmt.MAX_FRAME
        # Salts are drawn as frames need them, 64 first, then twice as many
        # each time up to 1024: getrandom costs about 3 us a KiB, so an idle
        # or small batch should not draw 16 KiB.
        salts = b""
        saltAt = saltBlock = 0
        sha = hashlib.sha256
        tag = fmt.COMMIT_TAG
        committing = sha(tag).copy
        pack = fmt.FRAME_FIELDS.pack
        rpack = fmt.RECORD.pack
        scrub = fmt.scrub
        tokens = []
        self.db.execute("BEGIN")
        try:
            for item in items:
                if len(item) == 5:
                    s, t, channel, direction, data = item
                    if s.closed or s.dead:
                        continue
                    rec = records.get(s)
                    if rec is None:
                        if s not in snaps:
                            snaps[s] = s.snapshot()
                        rec = records[s] = [s.tree.size, [], 0]
                    elif rec[2] >= RUN_BYTES:
                        self._writeRun(s, rec, background=True)
                    extend = rec[1].extend
                    tree = s.tree
                    edge = tree.edge
                    zprefix = s.zprefix
                    leafLen = s.leafLen
                    offsets = s.offsets
                    size = tree.size
                    last = s.last
                    total = len(data)
                    for cut in range(0, total, MAX) if total > MAX else (0,):
                        piece = data[cut : cut + MAX] if total > MAX else data
                        if saltAt == saltBlock:
                            saltBlock = min(SALT * 1024, max(SALT * 64, 2 * saltBlock))
                            salts, saltAt = os.urandom(saltBlock), 0
                        salt = salts[saltAt : saltAt + SALT]
                        saltAt += SALT
                        n = len(piece)
                        if n <= 2048:  # one call beats a copy and two updates; big pieces hash without the GIL
                            c = sha(tag + salt + piece).digest()
                        else:
                            ch = committing()
                            ch.update(salt)
                            ch.update(piece)
                            c = ch.digest()
                        # The leaf hash's 0x00 goes in front of the leaf once; the leaf is the rest of it.
                        zleaf = zprefix + pack(size, t, channel, direction, offsets[direction], n) + last + c
                        h = last = sha(zleaf).digest()
                        m = size  # CompactTree.appendHash, inline: one hash per trailing set bit
                        while m & 1:
                            h = sha(b"\x01" + edge.pop() + h).digest()
                            m >>= 1
                        edge.append(h)
                        size += 1
                        offsets[direction] += n
                        extend((rpack(leafLen, SALT, n), zleaf[1:], salt, piece))
                        rec[2] += n + leafLen + RECORD_OVERHEAD
                    tree.size = size
                    s.last = last
                    s.unsealedBytes += total
                    continue
                kind, s = item[0], item[1]
                at = item[6] if len(item) > 6 else now  # when it happened, not when written
                if s is not None and s not in snaps:
                    snaps[s] = s.snapshot()
                if kind == "event":  # the most common after frames
                    if s is None or not (s.closed or s.dead):
                        self._logAppend("event", s.id if s else None, at, scrub(item[3]), str(item[2]))
                elif kind == "open":
                    self._open_(s, item[2], at)
                elif kind == "close":
                    if not (s.closed or s.dead):
                        self._close_(s, str(item[2]), item[3], at, cutoff=item[5])
                    tokens.append(item[4])
                    forceCheckpoint = True
                else:
                    raise ValueError(f"unknown store item {kind!r}")
            for s in list(self.sessions.values()):
                if s.tree.size > s.sealed and not s.closed and (
                    now - s.sealedAt >= self.checkpointInterval or s.unsealedBytes >= PROGRESS_BYTES
                    or forceCheckpoint
                ):
                    if s not in snaps:
                        snaps[s] = s.snapshot()
                    self._seal(s, "progress", now, {})
            self._commit(records, now, forceCheckpoint, meta)
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            for s, snap in snaps.items():
                s.restore(snap)
            for sid in self._pending["opens"]:
                self.sessions.pop(sid, None)
            self.log, self.logLast = logSnap
            self._rollbackSegment(*segSnap)
            raise
        for sid in self._pending["closes"]:
            self.sessions.pop(sid, None)
        return tokens

    def _open_(self, s: SessionState, info: dict, now: float) -> None:
        if s.id in self.sessions or self.db.execute(
            "SELECT 1 FROM sessions WHERE id = ?", (s.id,)
        ).fetchone():
            s.dead = True  # a reused id must never mix two sessions' frames
            self._logAppend("event", None, now, {"event": "session-id-reused", "fields": {"id": s.id}})
            return
        info = fmt.scrub(info)
        n = self._logAppend("open", s.id, now, {"info": info})
        self.sessions[s.id] = s
        self._pending["opens"].append(s.id)
        self._pending["states"].add(s)
        s.sealedAt = now
        self.db.execute(
            "INSERT INTO sessions (id, opened, open_leaf, protocol, info) VALUES (?, ?, ?, ?, ?)",
            (s.id, now, n, fmt.sqlText(str(info.get("protocol", ""))), fmt.canonicalJson(info).decode()),
        )

    def _seal(self, s: SessionState, kind: str, now: float, extra: dict) -> int:
        body = {"size": s.tree.size, "root": s.tree.root().hex(),
                "bytes": {"from_client": s.offsets[0], "to_client": s.offsets[1]}, **extra}
        n = self._logAppend(kind, s.id, now, body)
        s.sealed = s.tree.size
        s.sealedAt = now
        s.unsealedBytes = 0
        self._pending["states"].add(s)
        return n

    def _close_(self, s, reason, stats, now, cutoff=False) -> None:
        n = self._seal(s, "close", now, {"reason": reason, "stats": fmt.scrub(stats), "cutoff": cutoff})
        s.closed = True
        self._pending["closes"].append(s.id)
        self.db.execute(
            "UPDATE sessions SET closed = ?, close_leaf = ?, reason = ?, cutoff = ?, root = ? WHERE id = ?",
            (now, n, fmt.sqlText(reason), int(cutoff), s.tree.root(), s.id),
        )

    def _logAppend(self, kind: str, sessionId, now: float, fields: dict, event: str | None = None) -> int:
        """Append one log leaf; with C{event}, an event leaf whose C{fields} are the event's own."""
        log = self.log
        n = log.size
        if event is not None:  # the hot case: one dict, no update
            body = {"n": n, "prev": self.logLast.hex(), "type": kind, "time": now, "session": sessionId,
                    "event": event, "fields": fields}
        else:
            body = {"n": n, "prev": self.logLast.hex(), "type": kind, "time": now, "session": sessionId}
            body.update(fields)
        zleaf = _ZERO_LOG_HEAD + fmt.canonicalJson(body)  # the leaf hash's input: 0x00, then the leaf
        h = self.logLast = _sha256(zleaf).digest()
        edge = log.edge
        while n & 1:  # CompactTree.appendHash, inline
            h = _sha256(b"\x01" + edge.pop() + h).digest()
            n >>= 1
        edge.append(h)
        n = log.size
        log.size = n + 1
        self._pending["log"].append((n, sessionId, kind, zleaf[1:]))
        return n

    def _writeRun(self, s: SessionState, rec: list, background: bool) -> int:
        """Place one session's sealed records C{rec} = [first seq, buffers, bytes] in the segment."""
        seg = self._seg
        chunks = self._pending["chunks"]
        if not chunks:
            seg.rotateIfFull()  # between batches: a batch's chunks share one segment
        offset = seg.reserve(rec[2])
        chunks.append((s.id, rec[0], s.tree.size - rec[0], seg.segment, offset, seg.length - offset))
        self._pending["states"].add(s)
        if background:
            seg.submit(rec[1], offset, rec[2])
            rec[:] = [s.tree.size, [], 0]
        return offset

    def _commit(self, records: dict, now: float, forceCheckpoint: bool, meta: dict | None = None) -> None:
        chunks = self._pending["chunks"]
        buffers: list = []
        start = None
        for s, rec in records.items():
            if rec[1]:
                offset = self._writeRun(s, rec, background=False)
                start = offset if start is None else start
                buffers += rec[1]
        if chunks:
            if buffers:
                self._seg.write(buffers, start, self._seg.length - start)
            self._seg.finish()
            self.segment, self.segmentLength = self._seg.segment, self._seg.length
        checkpoint = None
        if self.log.size > self.checkpointSize and (
            forceCheckpoint or now - self.checkpointTime >= self.checkpointInterval
        ):
            checkpoint = signCheckpoint(self.signer, Checkpoint(self.origin, self.log.size, self.log.root()))
        db = self.db
        if meta:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        if not (chunks or self._pending["log"] or checkpoint):
            db.execute("COMMIT")
            return
        if chunks:
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?)", chunks)
            db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?)", (self.segment, self.segmentLength))
        if self._pending["log"]:
            self._insertLog(self._pending["log"])
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("log_size", self.log.size), ("log_edge", self.log.pack()), ("log_last", self.logLast)])
        states = [(s.tree.size, s.tree.pack(), s.last, s.offsets[0], s.offsets[1], s.id)
                  for s in self._pending["states"] if not s.dead]
        if states:
            db.executemany(
                "UPDATE sessions SET size = ?, edge = ?, last = ?, bytes_from_client = ?, "
                "bytes_to_client = ? WHERE id = ?", states)
        if checkpoint:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (self.log.size, now, checkpoint))
        db.execute("COMMIT")
        if checkpoint:
            self.checkpointSize, self.checkpointTime = self.log.size, now

    def _insertLog(self, rows: list) -> None:
        """
        The batch's log rows: L{LOG_ROWS} to a statement, which costs SQLite
        a third less per row than one statement per row (the PostgreSQL
        backend's seam).
        """
        full = len(rows) - len(rows) % LOG_ROWS
        for at in range(0, full, LOG_ROWS):
            self.db.execute(_LOG_INSERT_MANY, list(chain.from_iterable(rows[at : at + LOG_ROWS])))
        if full < len(rows):
            self.db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows[full:])

    def _rollbackSegment(self, segment: int, length: int) -> None:
        self._seg.rollback(segment, length)
        self.segment, self.segmentLength = segment, length
