"""The embedded sealed store: SQLite (WAL) plus segment files, written by its own process."""

import collections
import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.interfaces import IRecordingStore, ISessionRecording
from sealgate.recording import _format as fmt
from sealgate.recording import _pipe
from sealgate.recording._engine import StoreError, StoreLocked

__all__ = ["SQLiteStore", "SessionRecording", "StoreError", "StoreLocked"]

#: How often queued items are shipped to the writer process.
SEND_INTERVAL = 0.01
#: Queued items beyond which the store reports itself unhealthy (writer behind).
MAX_BACKLOG = 2_000_000
#: Payload bytes in one shipment above which the next is taken at once.
BUSY_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: The environment variables the writer process inherits.
_WRITER_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONHASHSEED"})


@implementer(ISessionRecording)
class SessionRecording:
    """
    One session's recording handle.  L{frame} is on the proxy's hot path:
    it only appends to the store's queue; the writer process hashes and writes.
    """

    __slots__ = ("sessionId", "_handle", "_queue", "_store", "_closed")

    def __init__(self, store: "SQLiteStore", handle: int, sessionId: str):
        self.sessionId = sessionId
        self._handle = handle
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
        self._queue.append((self._handle, time.time(), channel, direction, data))

    def event(self, kind: str, fields: dict) -> None:
        if not self._closed:
            self._queue.append(("event", self._handle, kind, dict(fields), time.time()))

    def close(self, reason: str, stats: dict) -> Deferred:
        if self._closed:
            raise RuntimeError(f"recording of session {self.sessionId} is already closed")
        self._closed = True
        store = self._store
        if store._finished:
            return fail(StoreError(f"the recording store stopped before session {self.sessionId} closed; "
                                   "it is sealed as cut off at the next start"))
        d: Deferred = Deferred()
        self._queue.append(("close", self._handle, reason, dict(stats), store._waitFor(d), time.time()))
        store._wake.set()
        return d


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
        self._proc: subprocess.Popen | None = None
        self._handles = 0
        self._waiting: dict[int, Deferred] = {}
        self._tokens = 0
        self._shipped = 0   # items written to the writer (sender thread)
        self._taken = 0     # items the writer has taken into a batch (reactor thread)
        self._vkey: str | None = None
        self._running = False
        self._stopping = False
        self._problem: str | None = "the recording store is not started"
        self._started: Deferred | None = None
        self._stopped: Deferred | None = None
        self._finished = False

    @property
    def writerPid(self) -> int | None:
        """The writer process's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Deferred:
        if self._proc is not None:
            raise RuntimeError("store already started")
        self._started = Deferred()
        # Only what Python needs: the gateway's environment holds backend
        # secrets (password_env, token_env) the writer has no use for.
        env = {k: v for k, v in os.environ.items() if k in _WRITER_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sealgate.recording._writer", str(self.stateDir), self.origin,
                 repr(self.checkpointInterval), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        except OSError as e:
            self._finished = True
            return fail(StoreError(f"cannot start the recording store's writer process: {e}"))
        try:
            # A bulk transfer then moves a megabyte per wake-up, not 64 KiB.
            fcntl.fcntl(self._proc.stdin.fileno(), _F_SETPIPE_SZ, 1 << 20)  # type: ignore[union-attr]
        except OSError:
            pass  # not Linux, or a lower pipe-max-size: the default works, slower
        threading.Thread(target=self._replies, name="sealgate-store-replies", daemon=True).start()
        return self._started

    def stop(self) -> Deferred:
        if self._stopped is None:
            self._stopped = Deferred()
            self._stopping = True
            self._problem = "the recording store is stopping"
            if self._proc is None or self._finished:
                self._stopped.callback(None)
            else:
                self._queue.append(("stop",))
                self._wake.set()
        return self._stopped

    def backlog(self) -> int:
        """
        Items queued that the writer has not taken yet.  Streaming
        protocols stop reading their backend above a bound, so a fast
        download never queues more than that in memory.
        """
        return len(self._queue) + self._shipped - self._taken

    def healthy(self) -> str | None:
        if self._problem is None and self.backlog() > MAX_BACKLOG:
            return "the recording store is falling behind; try again shortly"
        return self._problem

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
        self._queue.append(("open", self._handles, sessionId, dict(info), time.time()))
        return SessionRecording(self, self._handles, sessionId)

    def auditEvent(self, event: dict) -> None:
        event = dict(event)
        kind = str(event.pop("kind", event.pop("event", "event")))
        self._queue.append(("event", None, kind, event, time.time()))

    def redact(self, sessionId: str, seq: int, reason: str, actor: str | None = None) -> Deferred:
        """Redact one frame while running (see L{Engine.redact}); fires with the event's log index."""
        d: Deferred = Deferred()
        if self._finished or self._proc is None:
            return fail(StoreError("the recording store is not running"))
        self._queue.append(("redact", [sessionId, int(seq), reason, actor], self._waitFor(d)))
        self._wake.set()
        return d

    def _waitFor(self, d: Deferred) -> int:
        self._tokens += 1
        self._waiting[self._tokens] = d
        return self._tokens

    # -- sender thread ------------------------------------------------------

    def _send(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        fd = self._proc.stdin.fileno()
        queue = self._queue
        busy = False
        while True:
            if not busy:
                self._wake.wait(SEND_INTERVAL)
            self._wake.clear()
            n = len(queue)
            if not n:
                busy = False  # wait for the next shipment, do not spin
                continue
            items = [queue.popleft() for _ in range(n)]
            stop = ("stop",) in items
            busy = sum(len(i[4]) for i in items if type(i[0]) is int) >= BUSY_BYTES
            try:
                buffers = _pipe.encode(items)
            except ValueError:
                buffers = _pipe.encode([_marshalable(i) for i in items])
            try:
                _writeAll(fd, buffers)
            except OSError:
                return  # the writer is gone; the reply thread tells the reactor
            self._shipped += n
            if stop:
                return

    # -- reply thread -------------------------------------------------------

    def _replies(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        call = self.reactor.callFromThread
        try:
            for message in _pipe.readMessages(self._proc.stdout):
                call(self._reply, message)
        except _pipe.PipeError as e:
            call(self._log.error, "Recording store writer sent garbage: {e}", e=e)
        self._proc.stdout.close()
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        call(self._ended, self._proc.wait())

    def _reply(self, message) -> None:
        kind = message[0]
        if kind == "taken":
            self._taken += message[1]
        elif kind == "done":
            for token in message[1]:
                self._waiting.pop(token).callback(None)
        elif kind == "redacted":
            self._waiting.pop(message[1]).callback(message[2])
        elif kind == "failed":
            self._waiting.pop(message[1]).errback(StoreError(message[2]))
        elif kind == "problem":
            if not self._stopping:
                self._problem = message[1]
        elif kind == "log":
            getattr(self._log, message[1])("{text}", text=message[2])
        elif kind == "started":
            self._vkey = message[1]
            for sid in message[2]:
                self._log.warn("Session {session} was cut off by a gateway crash; sealed as cut off",
                               session=sid)
            self._running = True
            self._problem = None
            threading.Thread(target=self._send, name="sealgate-store", daemon=True).start()
            self._started.callback(self)  # type: ignore[union-attr]
        elif kind == "startFailed":
            self._problem = message[1]
            self._started.errback((StoreLocked if message[2] else StoreError)(message[1]))  # type: ignore
            self._started = None

    def _ended(self, code: int) -> None:
        self._running = False
        self._finished = True
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(StoreError("the recording store stopped first"))
        if self._started is not None and not self._started.called:
            self._started.errback(StoreError(
                f"the recording store's writer process exited with {code} before it opened {self.stateDir}"))
        if self._stopped is not None:
            self._stopped.callback(None)
        elif self._started is not None:
            self._problem = (f"the recording store's writer process exited with {code}; "
                             "sessions cannot be recorded")
            self._log.critical("{problem}: restart the gateway", problem=self._problem)


def _writeAll(fd: int, buffers: list) -> None:
    """Every buffer, in order, to a blocking pipe (one write may take part of them)."""
    i = 0
    while i < len(buffers):
        done = os.writev(fd, buffers[i : i + 1024])
        while done:
            size = len(buffers[i])
            if done >= size:
                done -= size
                i += 1
            else:
                buffers[i] = memoryview(buffers[i])[done:]
                done = 0


def _marshalable(item: tuple) -> tuple:
    """
    An item whose fields marshal cannot carry, made plain the way the log
    stores them anyway (L{fmt.scrub}: unknown values become their text).
    """
    if len(item) == 5 and type(item[0]) is int:
        return item
    return tuple(fmt.scrub(v) for v in item)
