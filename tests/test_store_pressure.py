"""The real store's backpressure: bounded backlog, writer restarts that lose nothing, failure after the timeout."""

import fcntl
import os
import resource
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, task

from sealgate.recording._engine import lockPath
from sealgate.recording.reader import StoreReader
from sealgate.recording.store import SQLiteStore, StoreError
from sealgate.recording.verify import verifyStore
from sealgate.session import FROM_CLIENT, TO_CLIENT

ORIGIN = "sealgate/pressure"


def _reactor():
    from twisted.internet import reactor

    return reactor


async def until(predicate, timeout=60.0, what="condition"):
    """Wait on a condition, polling through the reactor (the store answers through it)."""
    reactor = _reactor()
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} not reached in {timeout} s")
        await task.deferLater(reactor, 0.01, lambda: None)


class Observer:
    """Keeps every (state, reason) a store announces."""

    def __init__(self, store):
        self.seen: list = []
        store.addPressureObserver(self)

    def __call__(self, state, reason):
        self.seen.append((state, reason))

    @property
    def state(self):
        return self.seen[-1][0] if self.seen else "flowing"


def _frames(state, sessionId):
    with StoreReader(state) as r:
        return [(f.direction, f.data) for f in r.frames(sessionId)], r.session(sessionId), verifyStore(
            r, r.verifier())


def _writerRss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest_twisted.ensureDeferred
async def test_a_killed_writer_is_restarted_and_every_frame_reaches_the_store_once(tmp_path):
    """
    A producer that obeys the pressure signal (as the core does) sends
    numbered frames while the writer is killed -9 three times: it pauses
    each time, resumes once a new writer is back, and the store holds
    every frame once, in order, in a store that verifies.
    """
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1, maxUnsealed=4 << 20)
    seen = Observer(store)
    await store.start()
    rec = store.openSession("s", {"identity": "alice"})
    sent: list = []
    kills = []
    pausedWhileDown = []

    async def produce(n):
        for _ in range(n):
            await until(lambda: store.pressure() is None, what="flowing again")
            i = len(sent)
            data = b"%06d:" % i + os.urandom(100 + (i * 37) % 16000)  # under a frame: one leaf each
            sent.append((i % 2, data))
            rec.frame(i % 2, data)
            if i % 50 == 0:
                await task.deferLater(_reactor(), 0, lambda: None)

    for _ in range(3):
        await produce(400)
        pid = store.writerPid
        os.kill(pid, signal.SIGKILL)
        kills.append(pid)
        await until(lambda: store.pressure() is not None, what="paused")
        pausedWhileDown.append(store.pressure())
        # Frames keep arriving from legs already read: they are queued, not lost.
        rec.frame(TO_CLIENT, b"in flight %d" % len(kills))
        sent.append((TO_CLIENT, b"in flight %d" % len(kills)))
        await until(lambda: store.writerPid not in (None, *kills) and store.pressure() is None,
                    what="a new writer")
    await produce(200)
    await rec.close("client closed", {})
    await store.stop()
    assert pausedWhileDown == ["the recording store is restarting"] * 3
    assert ("paused", "the recording store is restarting") in seen.seen and seen.state == "flowing"
    frames, session, result = _frames(tmp_path, "s")
    assert [d[:12] for _, d in frames] == [d[:12] for _, d in sent]  # short, readable when it fails
    assert frames == sent
    assert session["state"] == "closed" and result.ok


@pytest_twisted.ensureDeferred
async def test_a_writer_killed_while_closes_wait_settles_every_close(tmp_path):
    """Closes whose answer died with the writer are answered by the next one, each sealed once."""
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1)
    await store.start()
    recs = [store.openSession(f"s{i}", {}) for i in range(20)]
    for i, r in enumerate(recs):
        r.frame(FROM_CLIENT, b"hello %d" % i)
    closes = [r.close("done", {}) for r in recs[:10]]
    os.kill(store.writerPid, signal.SIGKILL)
    closes += [r.close("done", {}) for r in recs[10:]]
    results = await defer.gatherResults(closes)
    assert results == [None] * 20
    await store.stop()
    with StoreReader(tmp_path) as r:
        for i in range(20):
            assert r.session(f"s{i}")["state"] == "closed"
            assert [f.data for f in r.frames(f"s{i}")] == [b"hello %d" % i]
        closes = [e for s in range(20) for e in r.events(f"s{s}") if e["type"] == "close"]
        assert len(closes) == 20
        assert verifyStore(r, r.verifier()).ok


@pytest_twisted.ensureDeferred
async def test_backlog_over_max_unsealed_pauses_at_once_and_flows_below_half(tmp_path):
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), maxUnsealed=1 << 20)
    seen = Observer(store)
    await store.start()
    rec = store.openSession("s", {})
    payload = os.urandom(16384)
    n = 0
    while store.pressure() is None:
        rec.frame(TO_CLIENT, payload)
        n += 1
    # Decided on the call that crossed the bound, before the reactor turned.
    assert n <= (1 << 20) // 16384 + 1
    assert store.pressure() == "the recording backlog is over max_unsealed"
    assert store.healthy() == store.pressure()
    assert seen.seen == [("paused", "the recording backlog is over max_unsealed")]
    assert store.unsealedCost() > 1 << 20
    await until(lambda: store.pressure() is None, what="flowing")
    assert seen.seen[-1] == ("flowing", None) and store.unsealedCost() <= 1 << 19
    await rec.close("done", {})
    await store.stop()
    frames, _, result = _frames(tmp_path, "s")
    assert len(frames) == n and result.ok


@pytest_twisted.ensureDeferred
async def test_a_writer_that_cannot_restart_fails_the_store_and_the_next_start_seals_store_failed(tmp_path):
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1, storeTimeout=1.5)
    seen = Observer(store)
    await store.start()
    rec = store.openSession("s", {"identity": "alice"})
    rec.frame(TO_CLIENT, b"before")
    await until(lambda: store.backlog() == 0, what="durable")
    # Someone else holds the state directory: every restart is refused.
    fd = os.open(lockPath(tmp_path), os.O_RDWR)
    pid = store.writerPid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: store.writerPid != pid, what="writer gone")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        rec.frame(TO_CLIENT, b"after")
        await until(lambda: store.pressureState() == "failed", what="failed")
        assert seen.seen[-2:] == [("paused", "the recording store is restarting"),
                                  ("failed", "the recording store failed: its writer process could not "
                                             "be restarted for 1.5 s")]
        assert store.healthy() == store.pressure()
        closing = rec.close("store failed", {})
        await until(lambda: (tmp_path / "store-failed").exists(), what="marker")
        assert not closing.called  # it waits for a writer
        await store.stop()
        with pytest.raises(StoreError, match="stopped first"):
            await closing
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    store = SQLiteStore(tmp_path, ORIGIN, _reactor())
    await store.start()
    await store.stop()
    with StoreReader(tmp_path) as r:
        s = r.session("s")
        assert s["state"] == "cut off" and s["reason"].startswith("store failed:")
        assert [f.data for f in r.frames("s")] == [b"before"]
        assert verifyStore(r, r.verifier()).ok
    assert not (tmp_path / "store-failed").exists()


@pytest_twisted.ensureDeferred
async def test_a_store_that_failed_records_again_when_its_writer_comes_back(tmp_path):
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1, storeTimeout=1.0)
    seen = Observer(store)
    await store.start()
    rec = store.openSession("s", {})
    rec.frame(TO_CLIENT, b"before")
    fd = os.open(lockPath(tmp_path), os.O_RDWR)
    pid = store.writerPid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: store.writerPid != pid, what="writer gone")
    fcntl.flock(fd, fcntl.LOCK_EX)
    rec.frame(TO_CLIENT, b"while down")
    await until(lambda: store.pressureState() == "failed", what="failed")
    closing = rec.close("store failed", {})
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    assert await closing is None  # sealed by the writer that came back
    await until(lambda: store.pressureState() == "flowing", what="back")
    assert seen.seen[-1] == ("flowing", None) and store.healthy() is None
    await until(lambda: store.backlog() == 0, what="durable")
    await until(lambda: not (tmp_path / "store-failed").exists(), what="marker gone")
    await store.stop()
    frames, session, result = _frames(tmp_path, "s")
    assert frames == [(TO_CLIENT, b"before"), (TO_CLIENT, b"while down")]
    assert session["reason"] == "store failed" and result.ok


@pytest_twisted.ensureDeferred
async def test_a_full_disk_pauses_a_batch_bigger_than_the_space_goes_in_parts_and_nothing_is_lost(tmp_path):
    """
    The writer's file size limit stands in for a full disk (EFBIG, as
    ENOSPC): relaying pauses, space that comes back in steps smaller
    than the waiting batch is used at once (recovery is not wedged), and
    after the disk takes everything the session verifies whole.
    """
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1, maxUnsealed=8 << 20,
                        storeTimeout=120)
    seen = Observer(store)
    await store.start()
    rec = store.openSession("s", {})
    rec.frame(TO_CLIENT, b"first")
    segment = tmp_path / "segments" / "00000001.seg"
    await until(lambda: store.backlog() == 0 and segment.exists(), what="durable")
    pid = store.writerPid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (segment.stat().st_size + 64 * 1024, hard))
    sent = [b"first"]
    for i in range(200):  # 3.2 MiB in one go: one batch far bigger than the space left
        data = b"%04d" % i + os.urandom(16380)
        sent.append(data)
        rec.frame(TO_CLIENT, data)
    await until(lambda: store.pressure() == "the disk is full", what="disk full")
    assert store.healthy() == "the disk is full" and store.status()["disk_full"]
    before = store.backlog()
    # 1 MiB more space: less than the batch waiting, yet part of it goes in.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (segment.stat().st_size + (1 << 20), hard))
    await until(lambda: store.backlog() < before, what="a part written")
    assert store.pressure() == "the disk is full"
    assert _writerRss(pid) < 64 << 20  # the writer holds the waiting batch once, not per attempt
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    await until(lambda: store.pressure() is None and store.backlog() == 0, what="all written")
    assert seen.seen[-1] == ("flowing", None)
    assert store.writerPid == pid  # paused, not restarted
    await rec.close("done", {})
    await store.stop()
    frames, _, result = _frames(tmp_path, "s")
    assert [d for _, d in frames] == sent and result.ok


@pytest_twisted.ensureDeferred
async def test_a_disk_full_longer_than_the_store_timeout_fails_the_store(tmp_path):
    store = SQLiteStore(tmp_path, ORIGIN, _reactor(), checkpointInterval=0.1, storeTimeout=1.0)
    await store.start()
    rec = store.openSession("s", {})
    rec.frame(TO_CLIENT, b"first")
    segment = tmp_path / "segments" / "00000001.seg"
    await until(lambda: store.backlog() == 0 and segment.exists(), what="durable")
    pid = store.writerPid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (segment.stat().st_size + 1000, hard))
    big = os.urandom(50_000)
    rec.frame(TO_CLIENT, big)
    await until(lambda: store.pressureState() == "failed", what="failed")
    assert store.pressure() == "the recording store failed: the disk stayed full for 1 s"
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    await until(lambda: store.pressureState() == "flowing", what="recovered")
    await store.stop()
    frames, _, result = _frames(tmp_path, "s")
    assert b"".join(d for _, d in frames) == b"first" + big and result.ok


# -- the machine alone, on a fake clock ----------------------------------------


def _machine(timeout=10.0):
    from sealgate.recording._pressure import Pressure

    clock = task.Clock()
    failed: list = []
    p = Pressure(clock, timeout, onFailed=failed.append)
    seen: list = []
    p.addObserver(lambda state, reason: seen.append((state, reason)))
    return p, clock, seen, failed


def test_the_first_condition_in_the_table_decides_and_observers_hear_each_change_once():
    p, clock, seen, _ = _machine()
    p.over = True
    p.update()
    p.update()
    p.diskProblem = "the disk is full"
    p.update()
    p.writerUp = False
    p.update()
    p.writerUp, p.diskProblem, p.over = True, None, False
    p.update()
    assert seen == [("paused", "the recording backlog is over max_unsealed"),
                    ("paused", "the disk is full"),
                    ("paused", "the recording store is restarting"),
                    ("flowing", None)]


def test_a_pause_without_progress_for_the_timeout_is_a_failure_and_progress_holds_it_off():
    p, clock, seen, failed = _machine(timeout=10.0)
    p.diskProblem = "the disk is full"
    p.update()
    clock.advance(9)
    p.progress()  # something was still written
    clock.advance(9)
    assert p.state == "paused" and not failed
    clock.advance(1.5)
    assert p.state == "failed" and seen[-1] == ("failed", "the recording store failed: the disk stayed full for 10 s")
    assert failed == [p.failure]
    # A failure stays until the store clears it, whatever else changes.
    p.diskProblem = None
    p.update()
    assert p.state == "failed"
    p.failure = None
    p.update()
    assert seen[-1] == ("flowing", None) and not clock.getDelayedCalls()


def test_flowing_again_cancels_the_timer():
    p, clock, seen, failed = _machine(timeout=1.0)
    p.writerUp = False
    p.update()
    p.writerUp = True
    p.update()
    clock.advance(5)
    assert not failed and seen == [("paused", "the recording store is restarting"), ("flowing", None)]


def test_an_observer_that_raises_is_logged_and_the_others_still_hear(logs):
    p, clock, seen, _ = _machine()

    def broken(state, reason):
        raise RuntimeError("observer bug")

    p.removeObserver(p._observers[0])
    p.addObserver(broken)
    p.addObserver(lambda state, reason: seen.append(state))
    p.over = True
    p.update()
    assert seen == ["paused"]
    assert any("pressure observer failed" in line for line in logs)


@pytest_twisted.ensureDeferred
async def test_the_store_provides_the_pressure_interface(tmp_path):
    from zope.interface.verify import verifyObject

    from sealgate.interfaces import IRecordingStore

    store = SQLiteStore(tmp_path, ORIGIN, _reactor())
    await store.start()
    try:
        assert verifyObject(IRecordingStore, store)
        assert store.pressure() is None and store.pressureState() == "flowing"
        status = store.status()
        assert status["writer_up"] and not status["disk_full"] and status["max_unsealed"] == 64 << 20
    finally:
        await store.stop()
    assert not store.status()["writer_up"]


# -- the writer's loop alone, with an engine whose disk fills -----------------


class _FullDisk:
    """An engine stand-in that takes batches of at most C{room} items, like a disk with that much space."""

    stateDir = "/nonexistent"

    def __init__(self, room):
        self.room = room
        self.applied: list = []

    def apply(self, items, forceCheckpoint=False, meta=None):
        if len(items) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(items)
        self.applied += items
        return []


@pytest.mark.parametrize("room", [1, 7, 100])
def test_the_writer_loop_gets_a_big_batch_through_a_disk_with_less_room(room):
    import threading

    from sealgate.recording._writer import Writer

    sent: list = []
    engine = _FullDisk(room)
    w = Writer(engine, sent.append, 0.01)
    w.queue.extend((None, 0.0, 0, 1, b"x%d" % i) for i in range(120))
    done = threading.Event()

    def grow():
        # Space comes back a little at a time, each step smaller than the batch.
        while len(engine.applied) < 120:
            if engine.room == 0:
                engine.room = room
            done.wait(0.001)
        w.stopping = w.orphaned = True
        w.wake.set()

    t = threading.Thread(target=grow)
    t.start()
    w.run()
    t.join()
    assert [i[4] for i in engine.applied] == [b"x%d" % i for i in range(120)]
    durable = [m for m in sent if m[0] == "durable"]
    assert durable[-1][1] == 120
    assert ("problem", "the disk is full") in sent
