"""The embedded sealed store: SQLite (WAL) plus segment files, written by its own process."""

import collections
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.interfaces import IRecordingStore
from sealgate.recording import _format as fmt
from sealgate.recording import _pipe
from sealgate.recording._engine import StoreError, StoreLocked, failedPath
from sealgate.recording._pressure import FAILED, FLOWING, PAUSED, Pressure
from sealgate.recording._recording import SessionRecording

__all__ = ["SQLiteStore", "SessionRecording", "StoreError", "StoreLocked", "FLOWING", "PAUSED", "FAILED"]

#: How often queued items are shipped to the writer process.
SEND_INTERVAL = 0.01
#: Bytes queued (payload and item costs, see L{_pipe.FRAME_COST}) in one
#: shipment above which the next is taken at once.
BUSY_BYTES = 1 << 20
#: Relaying flows again once the pending cost is below this share of the bound.
RESUME_SHARE = 0.5
#: Seconds between attempts to restart a dead writer (the last one repeats).
RESTART_DELAYS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: The environment variables the writer process inherits.
_WRITER_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONHASHSEED"})


@attrs.define(eq=False)
class _Incarnation:
    """One writer process and the threads that talk to it."""

    proc: subprocess.Popen
    sender: threading.Thread | None = None
    dead: bool = False


@implementer(IRecordingStore)
class SQLiteStore:
    """
    The default L{IRecordingStore}: a per-node log in C{stateDir}.

    Methods called on the reactor thread only queue work.  A sender thread
    ships the queue every L{SEND_INTERVAL} to a writer process
    (L{sealgate.recording._writer}), which seals each batch (frame
    commitments, session trees, log leaves), appends payloads to a segment
    file, commits SQLite and signs a checkpoint at least every
    C{checkpointInterval} seconds while the log grows and for each CLOSE.
    Sealing never holds the gateway's GIL, so the proxies keep a core.  A
    reply thread hands what became durable back to the reactor.

    Every item is kept until the writer says it is durable, so a writer
    that dies is restarted and given every item after its last commit.
    What waits is counted against C{maxUnsealed}; above it, while the
    writer restarts and while its disk is full, L{pressure} says relaying
    must pause, and a pause without progress for C{storeTimeout} seconds
    is a failure (L{addPressureObserver}).
    """

    _log = Logger()

    def __init__(self, stateDir: Path, origin: str, reactor=None, checkpointInterval: float = 1.0,
                 maxUnsealed: int = 64 << 20, storeTimeout: float = 10.0, databaseUrl: str | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.stateDir = Path(stateDir)
        self.origin = origin
        self.reactor = reactor
        self.checkpointInterval = checkpointInterval
        self.maxUnsealed = maxUnsealed
        #: A fleet database (L{sealgate.recording._pgengine}) instead of SQLite in C{stateDir}.
        self.databaseUrl = databaseUrl
        self._queue: collections.deque = collections.deque()
        self._unacked: collections.deque = collections.deque()  # (end index, items) shipped, not durable
        self._wake = threading.Event()
        self._writer: _Incarnation | None = None
        self._handles = 0
        self._live: dict[int, str] = {}       # handle -> session id, until its close is durable
        self._closing: dict[int, int] = {}    # close token -> handle
        self._redacting: set[int] = set()
        self._waiting: dict[int, Deferred] = {}
        self._tokens = 0
        self._shipped = 0      # items handed to a writer (sender thread)
        self._durable = 0      # items a writer made durable (reactor thread)
        self._cost = 0         # cost of every item queued so far (reactor thread; see _pipe)
        self._bigFrames = 0    # frames of at least _pipe.RAW_MIN bytes queued so far (reactor thread)
        self._durableCost = 0
        self._pauseAt: float = maxUnsealed
        self._restarts = 0
        self._vkey: str | None = None
        self._running = False
        self._stopping = False
        self._problem: str | None = "the recording store is not started"
        self._started: Deferred | None = None
        self._stopped: Deferred | None = None
        self._finished = False
        self._pressure = Pressure(reactor, storeTimeout, onFailed=self._storeFailed)

    @property
    def writerPid(self) -> int | None:
        """The writer process's pid while it runs."""
        w = self._writer
        return w.proc.pid if w is not None and not w.dead else None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Deferred:
        if self._writer is not None or self._started is not None:
            raise RuntimeError("store already started")
        self._started = Deferred()
        try:
            self._spawn(resume=False)
        except OSError as e:
            self._finished = True
            self._started = None
            return fail(StoreError(f"cannot start the recording store's writer process: {e}"))
        return self._started

    def _spawn(self, resume: bool) -> None:
        # Only what Python needs: the gateway's environment holds backend
        # secrets (password_env, token_env) the writer has no use for.
        env = {k: v for k, v in os.environ.items() if k in _WRITER_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if self.databaseUrl is not None:
            env["SEALGATE_STORE_URL"] = self.databaseUrl  # not argv: ps shows that to everyone
        proc = subprocess.Popen(
            [sys.executable, "-m", "sealgate.recording._writer", str(self.stateDir), self.origin,
             repr(self.checkpointInterval), str(os.getpid()), *(["resume"] if resume else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        try:
            # A bulk transfer then moves a megabyte per wake-up, not 64 KiB.
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)  # type: ignore[union-attr]
        except OSError:
            pass  # not Linux, or a lower pipe-max-size: the default works, slower
        self._writer = w = _Incarnation(proc)
        threading.Thread(target=self._replies, args=(w,), name="sealgate-store-replies", daemon=True).start()

    def stop(self) -> Deferred:
        if self._stopped is None:
            self._stopped = Deferred()
            self._stopping = True
            self._problem = "the recording store is stopping"
            w = self._writer
            if w is None or w.dead or self._finished:
                self._finish()
            else:
                self._queue.append(("stop",))
                self._wake.set()
        return self._stopped

    def backlog(self) -> int:
        """
        Items queued that the writer has not made durable yet.  Streaming
        protocols stop reading their backend above a bound, so a fast
        download never queues more than that in memory.
        """
        return len(self._queue) + self._shipped - self._durable

    def unsealedCost(self) -> int:
        """What the items not durable yet cost in memory, in bytes (see L{_pipe.FRAME_COST})."""
        return self._cost - self._durableCost

    def healthy(self) -> str | None:
        return self._problem or self._pressure.reason

    def pressure(self) -> str | None:
        """None while writes may flow; else why relaying must pause (or the store failed)."""
        return self._pressure.reason

    def pressureState(self) -> str:
        """C{"flowing"}, C{"paused"} or C{"failed"}."""
        return self._pressure.state

    def status(self) -> dict:
        """What C{/readyz} and C{/metrics} show of the store."""
        w = self._writer
        return {"state": self._pressure.state, "reason": self.healthy(),
                "writer_up": w is not None and not w.dead and self._running and self._pressure.writerUp,
                "disk_full": self._pressure.diskProblem is not None,
                "unsealed_bytes": self.unsealedCost(), "unsealed_items": self.backlog(),
                "max_unsealed": self.maxUnsealed, "writer_restarts": self._restarts}

    def addPressureObserver(self, fn) -> None:
        """C{fn(state, reason)} on the reactor thread at every change of L{pressure}."""
        self._pressure.addObserver(fn)

    def removePressureObserver(self, fn) -> None:
        self._pressure.removeObserver(fn)

    @property
    def verifierKey(self) -> str:
        """The node's public key in signed-note vkey form (after start)."""
        if self._vkey is None:
            raise StoreError("the recording store is not started")
        return self._vkey

    # -- reactor-side API ---------------------------------------------------

    def openSession(self, sessionId: str, info: dict) -> SessionRecording:
        if not self._running:
            raise StoreError("the recording store is not running")
        fmt.framePrefix(sessionId)  # a bad id fails here, not in the writer
        self._handles += 1
        self._live[self._handles] = sessionId
        self._enqueue(("open", self._handles, sessionId, dict(info), time.time()))
        return SessionRecording(self, self._handles, sessionId)

    def auditEvent(self, event: dict) -> None:
        event = dict(event)
        kind = str(event.pop("kind", event.pop("event", "event")))
        self._enqueue(("event", None, kind, event, time.time()))

    def sealPeer(self, node: str) -> Deferred:
        """A dead fleet peer's open sessions, cut off by this node (L{sealgate.recording.peerseal})."""
        if self.databaseUrl is None:
            return succeed([])
        from sealgate.recording.peerseal import sealPeer

        return sealPeer(self, node)

    def redact(self, sessionId: str, seq: int, reason: str, actor: str | None = None) -> Deferred:
        """Redact one frame while running (see L{Engine.redact}); fires with the event's log index."""
        d: Deferred = Deferred()
        if self._finished or self._writer is None:
            return fail(StoreError("the recording store is not running"))
        token = self._waitFor(d)
        self._redacting.add(token)
        self._enqueue(("redact", [sessionId, int(seq), reason, actor], token))
        self._wake.set()
        return d

    def _enqueue(self, item: tuple) -> None:
        self._queue.append(item)
        self._cost += _pipe.ITEM_COST
        if self._cost > self._pauseAt:
            self._overBound()

    def _waitFor(self, d: Deferred) -> int:
        self._tokens += 1
        self._waiting[self._tokens] = d
        return self._tokens

    def _answer(self, token: int):
        """The Deferred waiting on C{token}, now settled by the caller (None if nobody waits)."""
        self._redacting.discard(token)
        handle = self._closing.pop(token, None)
        if handle is not None:
            self._live.pop(handle, None)
        return self._waiting.pop(token, None)

    # -- pressure (reactor thread) ------------------------------------------

    def _overBound(self) -> None:
        self._pauseAt = float("inf")  # the hot path stops asking until the backlog drains
        self._pressure.over = True
        self._pressure.update()

    def _durableNow(self, items: int, cost: int) -> None:
        """A writer committed (every loop that succeeds says so, even with nothing new)."""
        self._durable, self._durableCost = items, cost
        p = self._pressure
        if p.over and self.unsealedCost() <= self.maxUnsealed * RESUME_SHARE:
            p.over = False
        if not p.over:
            self._pauseAt = cost + self.maxUnsealed
        p.progress()
        if p.failure is not None and p.writerUp and p.diskProblem is None:
            p.failure = None  # the store came back: new sessions may be recorded again
            self.reactor.callInThread(failedPath(self.stateDir).unlink, missing_ok=True)
            self._log.info("The recording store records again")
        p.update()

    def _storeFailed(self, reason: str) -> None:
        self._log.critical("{reason}: every open session is closed; they are sealed as 'store failed'",
                           reason=reason)
        self.reactor.callInThread(_markFailed, failedPath(self.stateDir), reason)
        # Closes and redactions stay queued, their callers waiting: a writer
        # that comes back still seals them; a stop fails them.

    # -- writer restarts (reactor thread) -----------------------------------

    def _ended(self, w: _Incarnation, code: int) -> None:
        if self._stopping or self._vkey is None:
            if self._started is not None and not self._started.called:
                self._started.errback(StoreError(
                    f"the recording store's writer process exited with {code} before it opened "
                    f"{self.stateDir}"))
            self._finish()
            return
        if self._pressure.writerUp:
            self._log.error("The recording store's writer process exited with {code}; restarting it, "
                            "sessions pause meanwhile", code=code)
        self._pressure.writerUp = False
        self._pressure.diskProblem = None  # the next writer says again if it still cannot write
        self._pressure.update()
        delay = RESTART_DELAYS[min(self._restarts, len(RESTART_DELAYS) - 1)]
        self._restarts += 1
        self.reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        if self._stopping:
            return self._finish()
        try:
            self._spawn(resume=True)
        except OSError as e:
            self._log.error("Cannot restart the recording store's writer process: {e}", e=e)
            self._ended(self._writer, -1)  # type: ignore[arg-type]

    def _finish(self) -> None:
        self._running = False
        self._finished = True
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(StoreError("the recording store stopped first"))
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- sender thread ------------------------------------------------------

    def _send(self, w: _Incarnation, handles: list | None, tokens: set) -> None:
        assert w.proc.stdin is not None
        fd = w.proc.stdin.fileno()
        queue = self._queue
        unacked = self._unacked
        if handles is not None:
            # A restarted writer: its handles, then every item after its last commit.
            self._trim()
            if unacked and unacked[0][0] - len(unacked[0][1]) < self._durable:
                end, items = unacked[0]
                unacked[0] = (end, items[len(items) - (end - self._durable):])
            replay = [i for _, items in unacked for i in items]
            if tokens:
                seen = {i[4] if i[0] == "close" else i[2] for i in (*replay, *list(queue))
                        if i[0] in ("close", "redact")}
                self.reactor.callFromThread(self._settle, tokens - seen)
            try:
                _pipe.writeAll(fd, _pipe.encode([("resume", handles)]))
                if replay:
                    _pipe.writeAll(fd, _pipe.encodeItems(replay))
            except OSError:
                return
        busy = False
        popleft = queue.popleft
        # Counters the reactor thread bumps after each append: read before the
        # queue's length, they cover at least the items taken below.  A big
        # frame counted late is only marshal'd instead of sent raw.
        sentCost, sentBig = self._cost, -1
        while not w.dead:
            if not busy:
                self._wake.wait(SEND_INTERVAL)
            self._wake.clear()
            self._trim()
            cost, big = self._cost, self._bigFrames
            n = len(queue)
            if not n:
                busy = False  # wait for the next shipment, do not spin
                continue
            items = [popleft() for _ in range(n)]
            self._shipped += n
            unacked.append((self._shipped, items))  # kept until durable: a new writer gets them
            stop = self._stopping and ("stop",) in items
            busy = cost - sentCost >= BUSY_BYTES
            raw, sentCost, sentBig = big != sentBig, cost, big
            try:
                _pipe.writeAll(fd, _pipe.encodeItems(items, raw))
            except OSError:
                return  # the writer is gone; the reply thread tells the reactor
            if stop:
                return

    def _trim(self) -> None:
        """Let go of shipments a writer made durable (sender thread)."""
        unacked, durable = self._unacked, self._durable
        while unacked and unacked[0][0] <= durable:
            unacked.popleft()

    def _settle(self, lost: set) -> None:
        """Waiters whose item was durable when the last writer died, before it said so."""
        for token in lost:
            redaction = token in self._redacting
            d = self._answer(token)
            if d is None:
                continue
            if redaction:
                d.errback(StoreError("the recording store restarted during the redaction; "
                                     "redact the frame again (it is safe to repeat)"))
            else:
                d.callback(None)

    # -- reply thread -------------------------------------------------------

    def _replies(self, w: _Incarnation) -> None:
        proc = w.proc
        assert proc.stdout is not None
        call = self.reactor.callFromThread
        try:
            for message in _pipe.readMessages(proc.stdout):
                call(self._reply, w, message)
        except _pipe.PipeError as e:
            call(self._log.error, "Recording store writer sent garbage: {e}", e=e)
        proc.stdout.close()
        code = proc.wait()
        # The sender must be done with the pipe before it is closed: its
        # descriptor could otherwise be reused by the next writer's pipe.
        w.dead = True
        self._wake.set()
        if w.sender is not None:
            w.sender.join()
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        call(self._ended, w, code)

    def _reply(self, w: _Incarnation, message) -> None:
        kind = message[0]
        if kind == "durable":
            self._durableNow(message[1], message[2])
        elif kind == "done":
            for token in message[1]:
                d = self._answer(token)
                if d is not None:
                    d.callback(None)
        elif kind == "redacted":
            d = self._answer(message[1])
            if d is not None:
                d.callback(message[2])
        elif kind == "failed":
            d = self._answer(message[1])
            if d is not None:
                d.errback(StoreError(message[2]))
        elif kind == "problem":
            self._pressure.diskProblem = message[1]
            self._pressure.update()
        elif kind == "log":
            getattr(self._log, message[1])("{text}", text=message[2])
        elif kind == "started":
            self._started_(w, message)
        elif kind == "startFailed":
            if self._vkey is not None:
                self._log.error("The recording store's writer cannot start again: {why}", why=message[1])
                return
            self._problem = message[1]
            self._started.errback((StoreLocked if message[2] else StoreError)(message[1]))  # type: ignore
            self._started = None

    def _started_(self, w: _Incarnation, message) -> None:
        first = self._vkey is None
        self._vkey = message[1]
        for sid in message[2]:
            self._log.warn("Session {session} was cut off by a gateway crash; sealed as cut off",
                           session=sid)
        handles = None
        tokens: set = set()
        if not first:
            handles = sorted(self._live.items())
            tokens = set(self._waiting)
            self._restarts = 0
            self._pressure.writerUp = True
            self._log.info("The recording store's writer process is back; {n} items go to it again",
                           n=self._shipped - message[3])
        # Before the sender starts: it replays whatever comes after this count.
        self._durableNow(message[3], message[4])
        w.sender = threading.Thread(target=self._send, args=(w, handles, tokens), name="sealgate-store",
                                    daemon=True)
        w.sender.start()
        if first:
            self._running = True
            self._problem = None
            self._started.callback(self)  # type: ignore[union-attr]


def _markFailed(path: Path, reason: str) -> None:
    """Say so in the state directory (a thread): the next start seals open sessions as store failed."""
    try:
        path.write_text(reason + "\n")
    except OSError:
        try:
            path.touch()  # a full disk may still take an empty file
        except OSError:
            pass
