"""One session's recording handle: the proxies' hot path into the store's queue."""

import time

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from sealgate.interfaces import ISessionRecording
from sealgate.recording import _pipe
from sealgate.recording._errors import StoreError

_now = time.time
_RAW_MIN = _pipe.RAW_MIN
_FRAME_COST = _pipe.FRAME_COST


@implementer(ISessionRecording)
class SessionRecording:
    """
    One session's recording handle.  L{frame} is on the proxy's hot path:
    it only appends to the store's queue and counts what waits; the writer
    process hashes and writes.
    """

    __slots__ = ("sessionId", "_handle", "_queue", "_store", "_closed")

    def __init__(self, store, handle: int, sessionId: str):
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
        self._queue.append((self._handle, _now(), channel, direction, data))
        store = self._store
        n = len(data)
        if n >= _RAW_MIN:
            store._bigFrames += 1  # after the append: the sender then looks for it (see SQLiteStore._send)
        cost = store._cost = store._cost + n + _FRAME_COST
        if cost > store._pauseAt:
            store._overBound()

    def event(self, kind: str, fields: dict) -> None:
        if not self._closed:
            self._store._enqueue(("event", self._handle, kind, dict(fields), time.time()))

    def close(self, reason: str, stats: dict) -> Deferred:
        if self._closed:
            raise RuntimeError(f"recording of session {self.sessionId} is already closed")
        self._closed = True
        store = self._store
        if store._finished:
            return fail(StoreError(f"the recording store stopped before session {self.sessionId} closed; "
                                   "it is sealed as cut off at the next start"))
        d: Deferred = Deferred()
        token = store._waitFor(d)
        store._closing[token] = self._handle
        store._enqueue(("close", self._handle, reason, dict(stats), token, time.time()))
        store._wake.set()
        # Even on a failed store: the close stays queued, and fires once a
        # writer that comes back makes it durable (or fails at stop).
        return d
