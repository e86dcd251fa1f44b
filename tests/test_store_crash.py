"""kill -9 in the middle of sessions: the next start recovers a verifiable store; a second opener is refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sealgate
from sealgate.recording._engine import Engine, StoreLocked
from sealgate.recording.reader import StoreReader
from tests.test_store import cli

ORIGIN = "sealgate/crash"

WRITER = """
import sys
from twisted.internet import defer, reactor, task
from sealgate.recording.store import SQLiteStore

store = SQLiteStore(sys.argv[1], "sealgate/crash", reactor, checkpointInterval=0.2)

async def main():
    await store.start()
    done = store.openSession("finished", {"identity": "alice"})
    done.frame(0, b"hello")
    await done.close("client closed", {})
    live = store.openSession("running", {"identity": "bob"})
    count = [0]

    def tick():
        for _ in range(50):
            live.frame(count[0] % 2, b"%d:" % count[0] + b"x" * 100)
            count[0] += 1

    task.LoopingCall(tick).start(0.01)
    print("running", flush=True)

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
reactor.run()
"""


def _waitFor(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def _sealedSize(state):
    try:
        with StoreReader(state) as r:
            s = r.session("running")
            progress = [e for e in r.events("running") if e["type"] == "progress"]
            return s and s["size"] >= 2000 and len(progress) >= 2 and s["size"]
    except Exception:
        return None


def _lockFree(state) -> bool:
    import fcntl

    from sealgate.recording._engine import lockPath

    fd = os.open(lockPath(state), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases it
    return True


@pytest.fixture
def writer(tmp_path):
    source = str(Path(sealgate.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "state")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, tmp_path / "state"
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_kill_9_mid_session_recovers_everything_flushed(writer):
    proc, state = writer
    assert proc.stdout.readline().strip() == "running", proc.stderr.read()
    seen = _waitFor(lambda: _sealedSize(state))

    # While it runs, a second gateway on the same state_dir is refused, naming the lock and the holder.
    with pytest.raises(StoreLocked, match=f"{state / 'store.lock'} is held by process {proc.pid}"):
        Engine(state, ORIGIN).open()

    # verify reads one consistent snapshot while the gateway goes on writing.
    for _ in range(3):
        code, out = cli("verify", "--state-dir", str(state))
        assert code == 0, out

    writers = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
               for pid in (task / "children").read_text().split()]
    assert writers  # the store writes from its own process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # The writer dies with the gateway: nothing is left behind holding the store.
    for pid in writers:
        _waitFor(lambda pid=pid: not Path(f"/proc/{pid}").exists()
                 or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])
    # A zombie leader's other threads may still be ending (one in fdatasync
    # holds the files): the lock is free once the last of them is gone.
    _waitFor(lambda: _lockFree(state))

    e = Engine(state, ORIGIN)
    assert e.open() == ["running"]
    e.close()

    code, out = cli("verify", "--state-dir", str(state))
    assert code == 0, out
    with StoreReader(state) as r:
        running, finished = r.session("running"), r.session("finished")
        assert finished["state"] == "closed" and finished["size"] == 1
        assert running["state"] == "cut off" and running["size"] >= seen
        close = r.events("running")[-1]
        assert close["type"] == "close" and close["cutoff"] and "cut off" in close["reason"]
        frames = list(r.frames("running"))
        assert [int(f.data.split(b":")[0]) for f in frames] == list(range(len(frames)))
        assert r.latestCheckpoint()[0] == r.logSize()
    # A second recovery finds nothing left to do.
    e = Engine(state, ORIGIN)
    assert e.open() == []
    e.close()


FULL_DISK = """
import resource, sys, time
from pathlib import Path
from twisted.internet import defer, reactor, task
from sealgate.recording.store import SQLiteStore

store = SQLiteStore(sys.argv[1], "sealgate/crash", reactor)
segment = Path(sys.argv[1]) / "segments" / "00000001.seg"

def until(predicate):
    d = defer.Deferred()
    def check():
        if predicate():
            loop.stop()
            d.callback(None)
    loop = task.LoopingCall(check)
    loop.start(0.02)
    return d

async def main():
    await store.start()
    rec = store.openSession("s", {"identity": "alice"})
    rec.frame(0, b"before")
    await until(lambda: segment.exists() and segment.stat().st_size > 0)
    # The writer process is the one that writes: the limit is set on it.
    limit = resource.prlimit(store.writerPid, resource.RLIMIT_FSIZE)
    resource.prlimit(store.writerPid, resource.RLIMIT_FSIZE, (segment.stat().st_size + 100_000, limit[1]))
    sent = 1
    while store.healthy() is None and sent < 100_000:
        rec.frame(1, b"y" * 16384)
        sent += 1
        await task.deferLater(reactor, 0.001, lambda: None)  # the writer's reply comes through the reactor
    print("unhealthy:", store.healthy(), flush=True)
    resource.prlimit(store.writerPid, resource.RLIMIT_FSIZE, limit)
    await until(lambda: store.healthy() is None)
    await rec.close("closed", {})
    await store.stop()
    print("sent:", sent, flush=True)
    reactor.stop()

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()))
reactor.run()
"""


def test_full_disk_makes_the_store_unhealthy_and_loses_nothing(tmp_path):
    source = str(Path(sealgate.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # RLIMIT_FSIZE stands in for the full disk: a segment write sees EFBIG
    # (disk full), an SQLite write only an I/O error; whichever comes first.
    assert lines[0] in ("unhealthy: the disk is full",
                        "unhealthy: the recording store cannot write to its disk")
    sent = int(lines[1].split()[1])
    code, text = cli("verify", "--state-dir", str(tmp_path))
    assert code == 0, text
    with StoreReader(tmp_path) as r:
        assert r.session("s")["size"] == sent
