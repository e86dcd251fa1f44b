"""The store's segment files: positioned writes, bulk runs written beside the sealing, one sync per batch."""

import ctypes
import ctypes.util
import os
import queue
import threading
from pathlib import Path

#: A segment is closed for appends once it holds this much.
SEGMENT_LIMIT = 256 * 1024 * 1024
#: Buffers handed to one pwritev (Linux's IOV_MAX is 1024).
_IOV_MAX = 1024


def segmentPath(stateDir: Path, segment: int) -> Path:
    return Path(stateDir) / "segments" / f"{segment:08d}.seg"


def _startWriteback():
    """
    Linux's sync_file_range(SYNC_FILE_RANGE_WRITE), or None: it starts
    writing a run to disk at once, so the batch's fdatasync finds most of
    it done instead of waiting for the whole batch.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return lambda fd, offset, size: call(fd, offset, size, 2)  # SYNC_FILE_RANGE_WRITE


_writeback = _startWriteback()


def _writeAll(fd: int, buffers: list, offset: int, size: int) -> None:
    """All C{size} bytes of C{buffers} at C{offset}, however the kernel splits it."""
    if len(buffers) > _IOV_MAX:
        buffers = [b"".join(buffers)]  # many small records: one copy beats many iovecs
    done = os.pwritev(fd, buffers, offset)
    if done < size:
        rest = memoryview(b"".join(buffers))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            rest = rest[n:]
            done += n


class SegmentFile:
    """
    The open segment of one store, written by the store's writer.

    A batch reserves its bytes in order (L{reserve}); a bulk run is handed
    to a helper thread at once (L{submit}), so the kernel copies it into
    the page cache while the writer hashes the next frames, and the rest
    is written when the batch ends.  L{finish} waits for every write and
    makes them durable with one fdatasync before the batch's SQLite commit
    refers to them.  Bytes past the committed length are never read: a
    failed batch is cut off again (L{rollback}) and so is a crash's (on
    the next open).
    """

    def __init__(self, stateDir: Path, segment: int, length: int):
        self.stateDir = Path(stateDir)
        self.segment = segment
        self.length = length  # where the next reservation starts
        self._fd = self._open(segment)
        self._jobs: queue.SimpleQueue | None = None
        self._inFlight = 0
        self._done = threading.Condition()
        self._error: BaseException | None = None

    def _open(self, segment: int) -> int:
        return os.open(segmentPath(self.stateDir, segment), os.O_WRONLY | os.O_CREAT, 0o600)

    def rotateIfFull(self) -> None:
        """Start the next segment when this one is full (between batches only)."""
        if self.length >= SEGMENT_LIMIT:
            self._wait()
            os.close(self._fd)
            self.segment, self.length = self.segment + 1, 0
            self._fd = self._open(self.segment)

    def reserve(self, size: int) -> int:
        """The offset of C{size} bytes placed next in this segment."""
        offset = self.length
        self.length += size
        return offset

    def submit(self, buffers: list, offset: int, size: int) -> None:
        """Write C{buffers} (C{size} bytes) at C{offset} on the helper thread (see L{finish})."""
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(self._jobs,), name="sealgate-segments",
                             daemon=True).start()
        with self._done:
            self._inFlight += 1
        self._jobs.put((self._fd, buffers, offset, size))

    def write(self, buffers: list, offset: int, size: int) -> None:
        """Write C{buffers} (C{size} bytes) at C{offset} now, on this thread."""
        _writeAll(self._fd, buffers, offset, size)

    def finish(self) -> None:
        """Wait for the helper's writes, then fdatasync. @raise OSError: a write failed."""
        self._wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        os.fdatasync(self._fd)

    def rollback(self, segment: int, length: int) -> None:
        """Forget everything after C{length} of C{segment} (a failed batch)."""
        self._wait()
        self._error = None
        try:
            if segment != self.segment:
                os.close(self._fd)
                segmentPath(self.stateDir, self.segment).unlink(missing_ok=True)
                self._fd = self._open(segment)
            self.segment, self.length = segment, length
            os.ftruncate(self._fd, length)
        except OSError:
            pass  # the next open truncates to the committed length anyway

    def close(self) -> None:
        self._wait()
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None
        os.close(self._fd)

    def _wait(self) -> None:
        with self._done:
            while self._inFlight:
                self._done.wait()

    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                _writeAll(*job)
                if _writeback is not None:
                    _writeback(job[0], job[2], job[3])
            except BaseException as e:
                self._error = self._error or e
            with self._done:
                self._inFlight -= 1
                self._done.notify_all()
