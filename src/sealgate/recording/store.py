"""The embedded sealed store: SQLite (WAL) plus segment files, written by one batching thread."""

import collections
import errno
import sqlite3
import threading
import time
from pathlib import Path

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.interfaces import IRecordingStore, ISessionRecording
from sealgate.recording._engine import Engine, SessionState, StoreError, StoreLocked

__all__ = ["SQLiteStore", "SessionRecording", "StoreError", "StoreLocked"]

#: How long the writer gathers a batch; frames reach the disk within about this.
FLUSH_INTERVAL = 0.05
#: Queued items beyond which the store reports itself unhealthy (writer behind).
MAX_BACKLOG = 2_000_000
#: Payload bytes in one batch above which the writer takes the next batch
#: without waiting: a bulk transfer, not a stream of small messages.
BUSY_BYTES = 4 << 20


@implementer(ISessionRecording)
class SessionRecording:
    """
    One session's recording handle.  L{frame} is on the proxy's hot path:
    it only appends to the store's queue; the writer thread hashes and writes.
    """

    __slots__ = ("sessionId", "_state", "_queue", "_store", "_closed")

    def __init__(self, store: "SQLiteStore", state: SessionState):
        self.sessionId = state.id
        self._state = state
        self._queue = store._queue
        self._store = store
        self._closed = False

    def frame(self, direction: int, data: bytes, channel: int = 0) -> None:
        if self._closed or not data:
            return
        if direction not in (0, 1) or not 0 <= channel <= 0xFFFFFFFF:
            # Checked here: one bad frame in a batch must not stall the writer.
            raise ValueError(f"frame direction {direction!r} / channel {channel!r} out of range")
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        self._queue.append((self._state, time.time(), channel, direction, data))

    def event(self, kind: str, fields: dict) -> None:
        if not self._closed:
            self._queue.append(("event", self._state, kind, dict(fields), None, False, time.time()))

    def close(self, reason: str, stats: dict) -> Deferred:
        if self._closed:
            raise RuntimeError(f"recording of session {self.sessionId} is already closed")
        self._closed = True
        if self._store._finished:
            return fail(StoreError(f"the recording store stopped before session {self.sessionId} closed; "
                                   "it is sealed as cut off at the next start"))
        d: Deferred = Deferred()
        self._queue.append(("close", self._state, reason, dict(stats), d, False, time.time()))
        self._store._wake.set()
        return d


@implementer(IRecordingStore)
class SQLiteStore:
    """
    The default L{IRecordingStore}: a per-node log in C{stateDir}.

    Methods called on the reactor thread only queue work.  One writer
    thread drains the queue every L{FLUSH_INTERVAL}, seals the batch (frame
    commitments, session trees, log leaves), appends payloads to a segment
    file, commits SQLite and signs a checkpoint at least every
    C{checkpointInterval} seconds while the log grows and for each CLOSE.
    """

    _log = Logger()

    def __init__(self, stateDir: Path, origin: str, reactor=None, checkpointInterval: float = 1.0):
        if reactor is None:
            from twisted.internet import reactor
        self.stateDir = Path(stateDir)
        self.origin = origin
        self.reactor = reactor
        self.checkpointInterval = checkpointInterval
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._engine = Engine(self.stateDir, origin, checkpointInterval)
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._problem: str | None = "the recording store is not started"
        self._stopped: Deferred | None = None
        self._finished = False

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Deferred:
        if self._thread is not None:
            raise RuntimeError("store already started")
        d: Deferred = Deferred()
        self._thread = threading.Thread(target=self._run, args=(d,), name="sealgate-store", daemon=True)
        self._thread.start()
        return d

    def stop(self) -> Deferred:
        if self._stopped is None:
            self._stopped = Deferred()
            self._stopping = True
            self._problem = "the recording store is stopping"
            self._wake.set()
            if self._thread is None:
                self._stopped.callback(None)
        return self._stopped

    def backlog(self) -> int:
        """
        Items queued that the writer thread has not taken yet.  Streaming
        protocols stop reading their backend above a bound, so a fast
        download never queues more than that in memory.
        """
        return len(self._queue)

    def healthy(self) -> str | None:
        if self._problem is None and len(self._queue) > MAX_BACKLOG:
            return "the recording store is falling behind; try again shortly"
        return self._problem

    @property
    def verifierKey(self) -> str:
        """The node's public key in signed-note vkey form (after start)."""
        return self._engine.signer.verifier.vkey()

    # -- reactor-side API ---------------------------------------------------

    def openSession(self, sessionId: str, info: dict) -> SessionRecording:
        if not self._running:
            raise StoreError("the recording store is not running")
        state = SessionState(sessionId)
        self._queue.append(("open", state, dict(info), None, None, False, time.time()))
        return SessionRecording(self, state)

    def auditEvent(self, event: dict) -> None:
        event = dict(event)
        kind = str(event.pop("kind", event.pop("event", "event")))
        self._queue.append(("event", None, kind, event, None, False, time.time()))

    def redact(self, sessionId: str, seq: int, reason: str, actor: str | None = None) -> Deferred:
        """Redact one frame while running (see L{Engine.redact}); fires with the event's log index."""
        d: Deferred = Deferred()
        self._queue.append(("redact", None, (sessionId, seq, reason, actor), None, d, False))
        self._wake.set()
        return d

    # -- writer thread ------------------------------------------------------

    def _run(self, started: Deferred) -> None:
        call = self.reactor.callFromThread
        try:
            cut = self._engine.open()
        except Exception as e:
            self._engine.close()
            self._problem = str(e)
            call(started.errback, e if isinstance(e, StoreError) else StoreError(
                f"cannot open the recording store in {self.stateDir}: {e}"))
            self._thread = None
            return
        self._running = True
        self._problem = None
        for sid in cut:
            self._log.warn("Session {session} was cut off by a gateway crash; sealed as cut off",
                           session=sid)
        call(started.callback, self)
        try:
            self._loop()
        finally:
            self._running = False
            self._finished = True
            self._engine.close()
            # Anyone still waiting on a close or a redaction hears that it did not happen.
            while self._queue:
                item = self._queue.popleft()
                if len(item) > 5 and isinstance(item[4], Deferred):
                    call(item[4].errback, StoreError("the recording store stopped first"))
            if self._stopped is not None:
                call(self._stopped.callback, None)

    def _loop(self) -> None:
        engine = self._engine
        queue = self._queue
        retry: list = []
        failing = False
        busy = False
        while True:
            # Group commit: after a bulk batch the next one is already
            # waiting, so take it at once.  Small messages wait for the
            # interval: syncing back to back would cost more CPU per message.
            if not busy:
                self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            stopping = self._stopping
            items = retry
            retry = []
            pop = queue.popleft
            try:
                while True:
                    items.append(pop())
            except IndexError:
                pass
            busy = sum(len(i[4]) for i in items if len(i) == 5) >= BUSY_BYTES
            try:
                self._applyBatch(items, stopping)
            except Exception as e:
                retry = items
                failing = True
                self._failed(e)
                if stopping:
                    self._log.error("Stopping with {n} unrecorded items: {e}", n=len(items), e=e)
                    queue.extendleft(reversed(items))  # their waiters are told on the way out
                    return
                time.sleep(min(1.0, self.checkpointInterval))
                continue
            if failing:
                failing = False
                if not self._stopping:
                    self._log.info("Recording store is writable again")
                    self._problem = None
            if stopping:
                try:
                    # Sessions the gateway did not end are sealed now, not at the next start.
                    engine.apply([("close", s, "cut off: the gateway stopped with the session open",
                                   {}, None, True) for s in list(engine.sessions.values())],
                                 forceCheckpoint=True)
                except Exception as e:
                    self._log.error("Open sessions are sealed at the next start instead: {e}", e=e)
                return

    def _applyBatch(self, items: list, stopping: bool) -> None:
        # Redactions touch frames already on disk, so they go after the batch;
        # the batch itself is all-or-nothing and can be retried whole.
        redactions = [i for i in items if i[0] == "redact"]
        if redactions:
            items = [i for i in items if i[0] != "redact"]
        self._deliver(self._engine.apply(items, forceCheckpoint=stopping))
        call = self.reactor.callFromThread
        for item in redactions:
            try:
                n = self._engine.redact(*item[2])
            except Exception as e:
                call(item[4].errback, e)
            else:
                call(item[4].callback, n)

    def _deliver(self, tokens) -> None:
        for d in tokens:
            if d is not None:
                self.reactor.callFromThread(d.callback, None)

    def _failed(self, e: Exception) -> None:
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)) or (
            isinstance(e, sqlite3.OperationalError) and "full" in str(e)
        ):
            reason = "the recording store's disk is full; sessions cannot be recorded"
        else:
            reason = "the recording store cannot write; sessions cannot be recorded"
        if self._problem != reason:
            self._log.error("{reason} ({state_dir}): {error}", reason=reason,
                            state_dir=str(self.stateDir), error=e)
        self._problem = reason
