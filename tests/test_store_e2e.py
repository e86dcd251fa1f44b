"""
No byte without a record, end to end: the store's writer killed -9 under
pgbench, scp and curl, a writer that cannot come back, memory measured.
Real gateway in-process, real PostgreSQL, sshd and HTTP backend, real clients.
"""

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task, threads

from sealgate.recording.reader import StoreReader
from sealgate.recording.verify import verifyStore
from sealgate.testing import startGateway
from tests.test_store_pressure import until

MAX_UNSEALED = 16 << 20
#: What the gateway and a writer may hold beyond max_unsealed: buffers of
#: the legs already read, a batch being sealed, the interpreter's arenas.
OVERHEAD = 96 << 20
SIZE = int(os.environ.get("SEALGATE_TEST_STORE_E2E_BYTES", 200_000_000))


def _rss(pid="self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0  # it just died


class Watch:
    """The store's announced states, and the peak memory of the gateway (this process) and each writer."""

    def __init__(self, store):
        self.store = store
        self.states: list = []
        store.addPressureObserver(lambda state, reason: self.states.append((state, reason)))
        self.baseline = _rss()
        self.gateway = 0
        self.writer = 0
        self._loop = task.LoopingCall(self.sample)
        self._loop.start(0.05)

    def sample(self):
        self.gateway = max(self.gateway, _rss() - self.baseline)
        pid = self.store.writerPid
        if pid:
            self.writer = max(self.writer, _rss(pid))

    def stop(self):
        if self._loop.running:
            self._loop.stop()
        print(f"peak gateway growth {self.gateway >> 20} MiB, peak writer RSS {self.writer >> 20} MiB, "
              f"states {self.states}")
        assert self.gateway < MAX_UNSEALED + OVERHEAD
        assert self.writer < MAX_UNSEALED + OVERHEAD


async def killWriter(store, when):
    """kill -9 the writer once C{when()} holds; return once a new writer is back."""
    await until(when, what="traffic")
    pid = store.writerPid
    os.kill(pid, signal.SIGKILL)
    await until(lambda: store.writerPid not in (None, pid) and store.pressure() is None, what="writer back")


def _liveBytes(g) -> int:
    return sum(s.bytesToClient for s in g.gateway.sessions.values())


def _checkSessions(g, protocol):
    """Every session verifies and holds exactly the bytes its CLOSE says the client got."""
    with StoreReader(g.stateDir) as r:
        assert verifyStore(r, r.verifier()).ok
        out = []
        for s in r.sessions():
            if s["info"].get("protocol") != protocol:
                continue
            frames = list(r.frames(s["id"]))
            toClient = sum(len(f.data) for f in frames if f.direction == 1)
            close = [e for e in r.events(s["id"]) if e["type"] == "close"][-1]
            assert close["bytes"]["to_client"] == toClient
            out.append((s, frames, r.events(s["id"])))
        return out


def _config(extra=""):
    return f'[gateway]\nmax_unsealed = "{MAX_UNSEALED >> 20}MiB"\n{extra}'


# -- HTTP --------------------------------------------------------------------


def _dechunk(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        n = int(body[at:end].split(b";")[0], 16)
        if n == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + n])
        at = end + 2 + n + 2


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_writer_killed_during_an_http_download_pauses_and_every_byte_is_recorded(tmp_path, http_backend):
    from tests.test_http_proxy import _ENV, BACKEND_SECRET
    from tests.test_http_proxy import _config as httpConfig

    os.environ[_ENV] = BACKEND_SECRET
    # The download is binary: a masked connection would hold it back to vet it.
    g = await startGateway(httpConfig(http_backend, head=_config(), extra='unknown_content = "pass"'),
                           tmp_path)
    key = g.createKey("ci-bot", ["eng"])
    store = g.service.store
    watch = Watch(store)
    try:
        url = f"http://127.0.0.1:{g.port('web')}/stream?bytes={SIZE}&chunk=65536"
        curl = threads.deferToThread(
            subprocess.run, f"curl -sS --max-time 240 -D {tmp_path}/h -H 'Authorization: Bearer {key}' "
            f"'{url}' | sha256sum", shell=True, capture_output=True, timeout=260)
        await killWriter(store, lambda: _liveBytes(g) > SIZE // 5)
        r = await curl
    finally:
        watch.stop()
        await g.stop()
    expected = (tmp_path / "h").read_bytes().lower().split(b"x-content-sha256: ")[1].split(b"\r\n")[0]
    assert r.returncode == 0 and r.stdout.split()[0] == expected, r.stderr
    assert ("paused", "the recording store is restarting") in watch.states
    [(_, frames, _)] = _checkSessions(g, "http")
    seen = b"".join(f.data for f in frames if f.direction == 1)
    head, body = seen.split(b"\r\n\r\n", 1)
    # What the store holds is what curl got: the same body, byte for byte.
    assert hashlib.sha256(_dechunk(body) if b"chunked" in head.lower() else body).hexdigest().encode() == expected


# -- SSH ---------------------------------------------------------------------


async def _sshEnv(sshd, tmp: Path, extra=""):
    from sealgate.identity.sshkeys import SSHKeyStore
    from tests.test_ssh_e2e import Env, _keygen
    from tests.test_ssh_e2e import _config as sshConfig

    text = sshConfig(sshd, tmp).replace("[gateway]\n", _config(extra), 1)
    g = await startGateway(text, tmp)
    userKey = _keygen(tmp / "alice")
    SSHKeyStore.forStateDir(g.stateDir).add("alice", Path(str(userKey) + ".pub").read_text(), ["ops"])
    return Env(sshd, g, tmp, userKey)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_writer_killed_during_a_200MB_scp_pauses_and_the_copy_verifies(sshd, tmp_path):
    env = await _sshEnv(sshd, tmp_path)
    g, store = env.gw, env.gw.service.store
    src, back = tmp_path / "big.src", tmp_path / "big.back"
    with open(src, "wb") as f:
        for _ in range(SIZE // 1_000_000):
            f.write(os.urandom(1_000_000))
    watch = Watch(store)
    try:
        down = env.run(["scp", "-q"] + env.clientOptions() + [f"web-1@127.0.0.1:{src}", str(back)],
                       timeout=240)
        await killWriter(store, lambda: _liveBytes(g) > SIZE // 5)
        r = await down
    finally:
        watch.stop()
        await g.stop()
    try:
        assert r.returncode == 0, r.stderr
        assert _sha256(back) == _sha256(src)
    finally:
        src.unlink()
        back.unlink(missing_ok=True)
    assert ("paused", "the recording store is restarting") in watch.states
    sessions = _checkSessions(g, "ssh")
    assert sum(f.data.__len__() for _, frames, _ in sessions for f in frames if f.direction == 1) > SIZE


# -- PostgreSQL ----------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_writer_killed_during_pgbench_pauses_and_every_transaction_is_recorded(tmp_path, postgres):
    from tests.harness.postgres import SCRAM_USER
    from tests.test_pg_proxy import _ENV, _run
    from tests.test_pg_proxy import _config as pgConfig

    os.environ[_ENV] = postgres.password(SCRAM_USER)
    g = await startGateway(_config() + pgConfig(postgres), tmp_path)
    key = g.createKey("ci-bot", ["eng"])
    store = g.service.store
    env = dict(os.environ, PGPASSWORD=postgres.password(SCRAM_USER), PGSSLMODE="disable")
    init = await _run([postgres._bin("pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1",
                       "-p", str(postgres.port), "-U", SCRAM_USER, "app"], env, timeout=120)
    assert init.returncode == 0, init.stderr
    env["PGPASSWORD"] = key
    clients, each = 4, 1500
    watch = Watch(store)
    try:
        bench = _run([postgres._bin("pgbench"), "-S", "-c", str(clients), "-t", str(each), "-n",
                      "-h", "127.0.0.1", "-p", str(g.port("app")), "-U", "ci-bot", "app"], env, timeout=240)
        await killWriter(store, lambda: _liveBytes(g) > 200_000)
        r = await bench
    finally:
        watch.stop()
        await g.stop()
    assert r.returncode == 0, r.stderr
    assert f"number of transactions actually processed: {clients * each}/{clients * each}" in r.stdout
    assert ("paused", "the recording store is restarting") in watch.states
    sessions = _checkSessions(g, "postgres")
    selects = [e for _, _, events in sessions for e in events
               if e.get("event") == "statement" and "FROM pgbench_accounts" in str(e["fields"].get("text"))
               and e["fields"].get("outcome") == "completed"]
    assert len(selects) == clients * each


# -- a writer that cannot come back --------------------------------------------


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_a_writer_that_cannot_restart_closes_every_session_in_its_protocols_words(
        tmp_path, postgres, sshd, http_backend):
    import fcntl

    from sealgate.recording._engine import lockPath
    from tests.harness.postgres import SCRAM_USER
    from tests.test_http_proxy import _ENV as HTTP_ENV
    from tests.test_http_proxy import BACKEND_SECRET
    from tests.test_http_proxy import _config as httpConfig
    from tests.test_pg_proxy import _ENV as PG_ENV
    from tests.test_pg_proxy import _config as pgConfig

    os.environ[PG_ENV] = postgres.password(SCRAM_USER)
    os.environ[HTTP_ENV] = BACKEND_SECRET
    env = await _sshEnv(sshd, tmp_path, 'store_timeout = "2s"\n')
    g = env.gw
    await g.stop()  # the same state dir, now with every protocol on it
    text = (tmp_path / "sealgate.toml").read_text()
    # Each protocol its own listener (ssh has 127.0.0.1).
    web = httpConfig(http_backend).split("[[connections]]", 1)[1].split("[[rules]]", 1)[0].replace(
        "interface=127.0.0.1", "interface=127.0.0.2")
    db = pgConfig(postgres).split("[[connections]]", 1)[1].split("[[rules]]", 1)[0].replace(
        "interface=127.0.0.1", "interface=127.0.0.3")
    text = text.replace('connections = ["web-1"', 'connections = ["web", "app", "web-1"', 1)
    text += f"\n[[connections]]{web}\n[[connections]]{db}"
    # The download is binary: a masked connection would hold it back to vet it.
    text = text.replace('[masking]\ndetectors = ["credit_card"]',
                        '[masking]\ndetectors = ["credit_card"]\nunknown_content = "pass"', 1)
    g = await startGateway(text, tmp_path)
    env = type(env)(sshd, g, tmp_path, env.userKey)  # the new gateway's ports
    key = g.createKey("ci-bot", ["ops"])
    store = g.service.store
    penv = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    fd = os.open(lockPath(g.stateDir), os.O_RDWR)
    try:
        psql = threads.deferToThread(subprocess.run, [
            postgres._bin("psql"), "-X", "-A", "-t", "-h", "127.0.0.3", "-p", str(g.port("app")),
            "-U", "ci-bot", "-d", "app", "-c", "SELECT 1", "-c", "SELECT pg_sleep(60)"],
            capture_output=True, text=True, env=penv, timeout=120)
        ssh = env.run(env.sshArgs() + ["echo started; sleep 60"], timeout=120)
        url = f"http://127.0.0.2:{g.port('web')}/stream?bytes={SIZE}&chunk=65536"
        curl = threads.deferToThread(subprocess.run, ["curl", "-sS", "--max-time", "120", "--limit-rate", "2M",
                                                     "-H", f"Authorization: Bearer {key}", "-o", os.devnull, url],
                                     capture_output=True, text=True, timeout=130)
        await until(lambda: len(g.gateway.sessions) == 3 and _liveBytes(g) > 1 << 20,
                    what=lambda: f"three sessions: {[(s.connection.name, s.bytesToClient) for s in g.gateway.sessions.values()]}")
        pid = store.writerPid
        os.kill(pid, signal.SIGKILL)
        await until(lambda: store.writerPid != pid, what="writer gone")
        fcntl.flock(fd, fcntl.LOCK_EX)  # every restart is refused from now on
        await until(lambda: store.pressureState() == "failed", what="failed")
        p, s, c = await psql, await ssh, await curl
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    await until(lambda: store.pressureState() == "flowing" and store.backlog() == 0, what="back")
    await g.stop()
    assert p.returncode != 0 and "FATAL" in p.stderr and "recording store failed" in p.stderr, p.stderr
    assert s.returncode == 255 and b"recording store failed" in s.stderr, s.stderr
    assert c.returncode != 0, c.stderr
    with StoreReader(g.stateDir) as r:
        assert verifyStore(r, r.verifier()).ok
        closed = [x for x in r.sessions() if x["info"].get("connection") in ("app", "web", "web-1")]
        assert len(closed) == 3 and all(x["reason"] == "store failed" for x in closed), closed
        # Their last words to the client were recorded too.
        pg = [x for x in closed if x["info"]["connection"] == "app"][0]
        assert b"58030" in b"".join(f.data for f in r.frames(pg["id"]) if f.direction == 1)


# -- a full disk ---------------------------------------------------------------


@pytest.fixture
def smallDisk(tmp_path):
    """A 128 MiB tmpfs for the state directory (the test runs as root to mount it)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m,mode=0700", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.timeout(300)
@pytest_twisted.ensureDeferred
async def test_a_full_disk_during_an_scp_pauses_it_and_it_resumes_when_space_returns(sshd, tmp_path, smallDisk):
    size = 64_000_000
    env = await _sshEnv(sshd, tmp_path, f'state_dir = "{smallDisk}/state"\nstore_timeout = "60s"\n')
    g, store = env.gw, env.gw.service.store
    ballast = smallDisk / "ballast"
    with open(ballast, "wb") as f:  # leaves about 28 MiB: the disk fills a third of the way in
        f.write(bytes(100 << 20))
    src, back = tmp_path / "big.src", tmp_path / "big.back"
    with open(src, "wb") as f:
        for _ in range(size // 1_000_000):
            f.write(os.urandom(1_000_000))
    watch = Watch(store)
    try:
        down = env.run(["scp", "-q"] + env.clientOptions() + [f"web-1@127.0.0.1:{src}", str(back)],
                       timeout=240)
        await until(lambda: store.pressure() == "the disk is full", what="disk full")
        stalled = _liveBytes(g)
        await task.deferLater(_reactor(), 1.0, lambda: None)  # the client really waits
        assert _liveBytes(g) - stalled < MAX_UNSEALED + (4 << 20)
        assert not down.called
        ballast.unlink()
        r = await down
    finally:
        watch.stop()
        await g.stop()
    try:
        assert r.returncode == 0, r.stderr
        assert _sha256(back) == _sha256(src)
    finally:
        src.unlink()
        back.unlink(missing_ok=True)
    assert ("paused", "the disk is full") in watch.states and watch.states[-1] == ("flowing", None)
    sessions = _checkSessions(g, "ssh")
    assert sum(len(f.data) for _, frames, _ in sessions for f in frames if f.direction == 1) > size


def _reactor():
    from twisted.internet import reactor

    return reactor
