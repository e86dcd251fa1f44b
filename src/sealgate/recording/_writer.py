"""
The store's writer process: seals and commits what the gateway streams to
it, so hashing, JSON and SQLite never hold the gateway's GIL.

Run by L{sealgate.recording.store.SQLiteStore} as
C{python -m sealgate.recording._writer STATE_DIR ORIGIN INTERVAL GATEWAY_PID [resume]}
(C{resume}: a restart under a running gateway, which then replays every
item after the last durable one).
Standard input carries L{_pipe} messages of items, standard output
carries replies.  It dies with the gateway (PR_SET_PDEATHSIG): a gateway
killed with -9 leaves its open sessions to be sealed as cut off at the
next start, exactly as if the store had run inside it.
"""

import collections
import ctypes
import errno
import os
import resource
import signal
import sqlite3
import sys
import threading
import time

from sealgate.recording import _pipe
from sealgate.recording._engine import Engine, SessionState, StoreError, StoreLocked
from sealgate.recording.pin import keyNotice

#: How long a batch gathers; frames reach the disk within about this.
FLUSH_INTERVAL = 0.05
#: Payload bytes in one batch above which the next batch is taken at once:
#: a bulk transfer, not a stream of small messages.
BUSY_BYTES = 4 << 20
#: Payload bytes arriving that wake the loop before the interval is up.
WAKE_BYTES = 1 << 20
#: The environment variable carrying a fleet database's URL to the writer.
STORE_URL_ENV = "SEALGATE_STORE_URL"


def _noRoom(stateDir) -> bool:
    """
    SQLite reports a write that hit the file size limit (EFBIG) or a nearly
    full file system only as "disk I/O error": tell those apart from a real
    I/O fault by looking at the room left.
    """
    try:
        st = os.statvfs(stateDir)
        if st.f_bavail * st.f_frsize < (1 << 20):
            return True
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit == resource.RLIM_INFINITY:
            return False
        return any(p.stat().st_size + (1 << 16) >= limit
                   for p in os.scandir(stateDir) if p.is_file() and p.name.startswith("recordings"))
    except OSError:
        return False


class Writer:
    """
    The batching loop around one open L{Engine}.  Items arrive on a reader
    thread (L{receive}); the loop applies them in batches and says what
    became durable through C{send}: a count of the gateway's items, and of
    their cost, committed with the batch, so a writer started after
    this one dies takes over exactly after the last commit.  A frame costs
    its payload plus L{_pipe.FRAME_COST}, any other item L{_pipe.ITEM_COST},
    as the gateway counts them.  A failed batch
    is retried, ever smaller, until the disk takes it (a prefix that fits
    what space is left goes first), while the gateway hears of the problem.
    """

    def __init__(self, engine: Engine, send, checkpointInterval: float, durable=(0, 0)):
        self.engine = engine
        self.send = send
        self.checkpointInterval = checkpointInterval
        self.queue: collections.deque = collections.deque()
        self.pending: list = []  # taken from the queue, not yet durable (loop thread)
        self.wake = threading.Event()
        self.stopping = False   # the gateway asked: seal open sessions, then exit
        self.orphaned = False   # the gateway is gone: keep what arrived, seal nothing more
        self.problem: str | None = None
        self.items, self.cost = durable  # the gateway's items (and their cost, see _pipe) durable so far
        self._states: dict[int, SessionState] = {}
        self._arrived = 0  # payload bytes queued since the loop last took a batch

    def resume(self, handles: list) -> None:
        """
        Before any item: the gateway's live session handles (its first
        message to a restarted writer), mapped to the sessions the engine
        kept open.  A handle whose open is not durable yet is left out: its
        open comes again.  One that never had a session of its own (a reused
        id) stays dead, as it was.
        """
        engine = self.engine
        claimed: set = set()
        for handle, sessionId in handles:
            state = engine.sessions.get(sessionId)
            if state is not None and sessionId not in claimed:
                claimed.add(sessionId)
                self._states[handle] = state
            elif state is not None or engine.db.execute(
                    "SELECT 1 FROM sessions WHERE id = ?", (sessionId,)).fetchone():
                dead = self._states[handle] = SessionState(sessionId)
                dead.dead = True

    # -- reader thread --------------------------------------------------------

    def receive(self, items: list) -> None:
        """
        Turn one message's wire items into engine items and queue them, one
        for one: an item with nothing to do (a frame of a handle that is
        gone) is queued as its byte count, so the durable counts stay the
        gateway's.
        """
        states = self._states
        get = states.get
        out: list = []
        append = out.append
        arrived = 0
        cost = _pipe.FRAME_COST
        stop = urgent = False  # urgent: someone waits on a close or a redaction
        for item in items:
            if len(item) == 5 and type(item[0]) is int:
                handle, t, channel, direction, data = item
                state = get(handle)
                n = len(data) + cost
                arrived += n
                # None after its close; a bug must not stop the store.
                append((state, t, channel, direction, data) if state is not None else n)
                continue
            kind = item[0]
            if kind == "event":  # the most common after frames
                _, sid, name, fields, at = item
                state = get(sid)
                append(("event", state, name, fields, None, False, at)
                       if state is not None or sid is None else _pipe.ITEM_COST)
            elif kind == "redact":
                out.append(("redact", None, tuple(item[1]), None, item[2], False))
                urgent = True
            elif kind == "open":
                _, sid, sessionId, info, at = item
                state = states[sid] = SessionState(sessionId)
                out.append(("open", state, info, None, None, False, at))
            elif kind == "close":
                _, sid, reason, stats, token, at = item
                state = states.pop(sid, None)
                if state is not None:
                    out.append(("close", state, reason, stats, token, False, at))
                else:
                    out.append(_pipe.ITEM_COST)
                    if token is not None:
                        self.send(("failed", token, "the recording store lost this session's handle"))
                urgent = True
            elif kind == "stop":
                out.append(_pipe.ITEM_COST)
                stop = True
            else:
                raise ValueError(f"unknown item {kind!r} from the gateway")
        self._arrived += arrived
        self.queue.extend(out)
        if stop:
            self.stopping = True  # after the items before it are queued
        # A bulk transfer is taken as it arrives: the gateway paces on what
        # the writer has made durable, so waiting out the interval would stall it.
        if stop or urgent or self._arrived >= WAKE_BYTES:
            self.wake.set()

    # -- loop -----------------------------------------------------------------

    def run(self) -> None:
        engine = self.engine
        queue = self.queue
        pending = self.pending
        limit = 0  # items per attempt while the disk refuses a whole batch; 0: no limit
        failing = False
        busy = False
        while True:
            # Group commit: after a bulk batch the next one is already
            # waiting, so take it at once.  Small messages wait for the
            # interval: syncing back to back would cost more CPU per message.
            if not busy:
                self.wake.wait(FLUSH_INTERVAL)
            self.wake.clear()
            stopping = self.stopping or self.orphaned
            self._arrived = 0
            popleft = queue.popleft  # the reader thread appends meanwhile: take only what is there now
            pending += [popleft() for _ in range(len(queue))]
            batch = pending[:limit] if limit and limit < len(pending) else pending
            try:
                size = self._applyBatch(batch, stopping and len(batch) == len(pending))
            except Exception as e:
                failing = True
                self._failed(e)
                if stopping:
                    self.send(("log", "error", f"Stopping with {len(pending)} unrecorded items: {e}"))
                    return  # their waiters are told on the way out
                if len(batch) > 1:
                    limit = max(1, len(batch) // 2)  # a smaller batch may fit the space left
                    busy = True
                else:
                    busy = False
                    time.sleep(min(1.0, self.checkpointInterval))
                continue
            if batch is pending:
                pending.clear()
            else:
                del pending[: len(batch)]
            limit = limit * 2 if limit and pending else 0
            busy = size >= BUSY_BYTES or bool(pending)
            if failing and not pending:  # a part that fit is not the disk back
                failing = False
                self._setProblem(None)
                self.send(("log", "info", "Recording store is writable again"))
            if stopping and not pending:
                if self.orphaned:
                    return  # crash semantics: open sessions are cut off at the next start
                try:
                    # Sessions the gateway did not end are sealed now, not at the next start.
                    engine.apply([("close", s, "cut off: the gateway stopped with the session open",
                                   {}, None, True) for s in list(engine.sessions.values())],
                                 forceCheckpoint=True)
                except Exception as e:
                    self.send(("log", "error", f"Open sessions are sealed at the next start instead: {e}"))
                return

    def leftovers(self) -> list:
        """Tokens of closes and redactions that never happened."""
        return [i[4] for i in (*self.pending, *self.queue) if type(i) is tuple and len(i) > 5 and i[4] is not None]

    def _applyBatch(self, batch: list, stopping: bool) -> int:
        """Commit C{batch} with the durable counts it brings; @return: its frame bytes."""
        size = cost = 0
        items: list = []
        redactions = []
        append = items.append
        frames = 0
        for i in batch:
            if type(i) is int:
                cost += i
            elif len(i) == 5:
                size += len(i[4])
                frames += 1
                append(i)
            else:
                cost += _pipe.ITEM_COST
                if i[0] == "redact":
                    # They touch frames already on disk, so they go after the batch;
                    # the batch itself is all-or-nothing and can be retried.
                    redactions.append(i)
                else:
                    append(i)
        cost += frames * _pipe.FRAME_COST
        count, total = self.items + len(batch), self.cost + size + cost
        # An idle loop commits nothing (no sync); it still says it is alive.
        meta = {"writer_items": count, "writer_cost": total} if batch else None
        tokens = [t for t in self.engine.apply(items, forceCheckpoint=stopping, meta=meta) if t is not None]
        self.items, self.cost = count, total
        self.send(("durable", count, total))
        if tokens:
            self.send(("done", tokens))
        for item in redactions:
            try:
                n = self.engine.redact(*item[2])
            except Exception as e:
                self.send(("failed", item[4], str(e)))
            else:
                self.send(("redacted", item[4], n))
        return size

    def _failed(self, e: Exception) -> None:
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)) or (
            isinstance(e, sqlite3.OperationalError)
            and ("full" in str(e) or ("I/O" in str(e) and _noRoom(self.engine.stateDir)))
        ):
            reason = _pipe.DISK_FULL
        else:
            reason = getattr(self.engine, "cannotWrite", _pipe.CANNOT_WRITE)
        if self.problem != reason:
            self.send(("log", "error", f"{reason} ({self.engine.stateDir}): {e}"))
        self._setProblem(reason)

    def _setProblem(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            self.send(("problem", problem))


def _dieWithParent(parent: int) -> None:
    """Linux: SIGKILL this process when the gateway dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)  # it died before we asked


def _durable(engine: Engine, resume: bool) -> tuple[int, int]:
    """
    How many of this gateway's items (and their cost) are durable: from
    the last commit for a restarted writer, zero (committed now) for the
    gateway's first.
    """
    if not resume:
        engine.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [("writer_items", 0), ("writer_cost", 0)])
        return 0, 0
    meta = dict(engine.db.execute(
        "SELECT key, value FROM meta WHERE key IN ('writer_items', 'writer_cost')"))
    return int(meta.get("writer_items", 0)), int(meta.get("writer_cost", 0))


def _engine(stateDir: str, origin: str, interval: float, parent: int) -> Engine:
    """The embedded engine, or the fleet database's when the gateway passed its URL (never in argv)."""
    url = os.environ.pop(STORE_URL_ENV, None)
    if url is None:
        return Engine(stateDir, origin, interval, lockOwner=parent)
    from sealgate.recording._pgengine import PgEngine

    return PgEngine(stateDir, origin, url, origin.split("/", 1)[-1], interval, lockOwner=parent)


def main(argv: list[str]) -> int:
    stateDir, origin, interval, parent = argv[0], argv[1], float(argv[2]), int(argv[3])
    resume = argv[4:] == ["resume"]
    _dieWithParent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to twistd -n is the gateway's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A file size limit then fails a write with EFBIG: the store turns unhealthy and retries.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    source = os.fdopen(0, "rb", buffering=1 << 20)
    sink = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print goes to stderr and cannot corrupt the replies
    lock = threading.Lock()

    def send(message) -> None:
        with lock:
            _pipe.writeMessage(sink, message)

    engine = _engine(stateDir, origin, interval, parent)
    try:
        cut = engine.open(resume=resume)
        durable = _durable(engine, resume)
    except StoreError as e:
        send(("startFailed", str(e), isinstance(e, StoreLocked)))
        return 1
    except Exception as e:
        send(("startFailed", f"cannot open the recording store in {stateDir}: {e}", False))
        return 1
    writer = Writer(engine, send, interval, durable)
    send(("log", *keyNotice(engine.stateDir, engine.signer.verifier, engine.pinnedNow)))
    send(("started", engine.signer.verifier.vkey(), cut, *durable))
    if resume:
        # The gateway answers with its live handles before any item.
        first = next(_pipe.readMessages(source), None)
        if not first or first[0][0] != "resume":
            send(("log", "error", "Recording store writer restarted without the gateway's handles"))
            engine.close()
            return 1
        writer.resume(first[0][1])

    def read() -> None:
        try:
            for items in _pipe.readMessages(source):
                writer.receive(items)
                if writer.stopping:
                    break
        except Exception as e:  # a gateway bug, not a disk problem: say it, then stop
            send(("log", "error", f"Recording store writer got a bad message: {e!r}"))
        if not writer.stopping:
            writer.orphaned = True
        writer.wake.set()

    threading.Thread(target=read, name="sealgate-store-reader", daemon=True).start()
    try:
        writer.run()
    finally:
        engine.close()
        for token in writer.leftovers():
            send(("failed", token, "the recording store stopped first"))
        send(("stopped",))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
