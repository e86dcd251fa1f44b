"""
The store's writer process: seals and commits what the gateway streams to
it, so hashing, JSON and SQLite never hold the gateway's GIL.

Run by L{sealgate.recording.store.SQLiteStore} as
C{python -m sealgate.recording._writer STATE_DIR ORIGIN INTERVAL GATEWAY_PID}.
Standard input carries L{_pipe} messages of items, standard output
carries replies.  It dies with the gateway (PR_SET_PDEATHSIG): a gateway
killed with -9 leaves its open sessions to be sealed as cut off at the
next start, exactly as if the store had run inside it.
"""

import collections
import ctypes
import errno
import os
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


class Writer:
    """
    The batching loop around one open L{Engine}.  Items arrive on a reader
    thread (L{receive}); the loop applies them in batches and says what
    became durable through C{send}.  A failed batch is retried whole until
    the disk takes it, while the gateway hears the store is unhealthy.
    """

    def __init__(self, engine: Engine, send, checkpointInterval: float):
        self.engine = engine
        self.send = send
        self.checkpointInterval = checkpointInterval
        self.queue: collections.deque = collections.deque()
        self.wake = threading.Event()
        self.stopping = False   # the gateway asked: seal open sessions, then exit
        self.orphaned = False   # the gateway is gone: keep what arrived, seal nothing more
        self.problem: str | None = None
        self._states: dict[int, SessionState] = {}
        self._arrived = 0  # payload bytes queued since the loop last took a batch

    # -- reader thread --------------------------------------------------------

    def receive(self, items: list) -> None:
        """Turn one message's wire items into engine items and queue them."""
        states = self._states
        out = []
        stop = urgent = False  # urgent: someone waits on a close or a redaction
        for item in items:
            if len(item) == 5 and type(item[0]) is int:
                state = states.get(item[0])
                if state is not None:  # never after its close; a bug must not stop the store
                    out.append((state, *item[1:]))
                    self._arrived += len(item[4])
                continue
            kind = item[0]
            if kind == "open":
                _, sid, sessionId, info, at = item
                state = states[sid] = SessionState(sessionId)
                out.append(("open", state, info, None, None, False, at))
            elif kind == "event":
                _, sid, name, fields, at = item
                if sid is None or sid in states:
                    out.append(("event", states.get(sid), name, fields, None, False, at))
            elif kind == "close":
                _, sid, reason, stats, token, at = item
                out.append(("close", states.pop(sid), reason, stats, token, False, at))
                urgent = True
            elif kind == "redact":
                out.append(("redact", None, tuple(item[1]), None, item[2], False))
                urgent = True
            elif kind == "stop":
                stop = True
            else:
                raise ValueError(f"unknown item {kind!r} from the gateway")
        self.queue.extend(out)
        if stop:
            self.stopping = True  # after the items before it are queued
        # A bulk transfer is taken as it arrives: the gateway paces on what
        # the writer has taken, so waiting out the interval would stall it.
        if stop or urgent or self._arrived >= WAKE_BYTES:
            self.wake.set()

    # -- loop -----------------------------------------------------------------

    def run(self) -> None:
        engine = self.engine
        queue = self.queue
        retry: list = []
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
            items = retry
            retry = []
            self._arrived = 0
            taken = len(queue)
            for _ in range(taken):
                items.append(queue.popleft())
            busy = sum(len(i[4]) for i in items if len(i) == 5) >= BUSY_BYTES
            try:
                self._applyBatch(items, stopping)
            except Exception as e:
                retry = items
                failing = True
                self._failed(e)
                if stopping:
                    self.send(("log", "error", f"Stopping with {len(items)} unrecorded items: {e}"))
                    queue.extendleft(reversed(items))  # their waiters are told on the way out
                    return
                self.send(("taken", taken))
                time.sleep(min(1.0, self.checkpointInterval))
                continue
            self.send(("taken", taken))
            if failing:
                failing = False
                self._setProblem(None)
                self.send(("log", "info", "Recording store is writable again"))
            if stopping:
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
        return [i[4] for i in self.queue if len(i) > 5 and i[4] is not None]

    def _applyBatch(self, items: list, stopping: bool) -> None:
        # Redactions touch frames already on disk, so they go after the batch;
        # the batch itself is all-or-nothing and can be retried whole.
        redactions = [i for i in items if len(i) != 5 and i[0] == "redact"]
        if redactions:
            items = [i for i in items if len(i) == 5 or i[0] != "redact"]
        tokens = [t for t in self.engine.apply(items, forceCheckpoint=stopping) if t is not None]
        if tokens:
            self.send(("done", tokens))
        for item in redactions:
            try:
                n = self.engine.redact(*item[2])
            except Exception as e:
                self.send(("failed", item[4], str(e)))
            else:
                self.send(("redacted", item[4], n))

    def _failed(self, e: Exception) -> None:
        if (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)) or (
            isinstance(e, sqlite3.OperationalError) and "full" in str(e)
        ):
            reason = "the recording store's disk is full; sessions cannot be recorded"
        else:
            reason = "the recording store cannot write; sessions cannot be recorded"
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


def main(argv: list[str]) -> int:
    stateDir, origin, interval, parent = argv[0], argv[1], float(argv[2]), int(argv[3])
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

    engine = Engine(stateDir, origin, interval, lockOwner=parent)
    try:
        cut = engine.open()
    except StoreError as e:
        send(("startFailed", str(e), isinstance(e, StoreLocked)))
        return 1
    except Exception as e:
        send(("startFailed", f"cannot open the recording store in {stateDir}: {e}", False))
        return 1
    writer = Writer(engine, send, interval)
    send(("log", *keyNotice(engine.stateDir, engine.signer.verifier, engine.pinnedNow)))
    send(("started", engine.signer.verifier.vkey(), cut))

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
