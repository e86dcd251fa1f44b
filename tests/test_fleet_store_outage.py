"""The fleet database unreachable for 5 s under a recording session: relaying pauses, nothing is lost, it verifies."""

import re
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.protocols.portforward import ProxyFactory, ProxyServer

from sealgate.recording.pgreader import NodeReader
from sealgate.recording.store import FAILED, FLOWING, PAUSED, SQLiteStore
from sealgate.recording.verify import Report, trustedKey, verifyStore
from sealgate.session import TO_CLIENT
from tests.fleetpg import fleetDatabase

OUTAGE = 5.0


class _Cuttable(ProxyServer):
    def connectionMade(self):
        if self.factory.cut:
            self.transport.abortConnection()  # the database is unreachable: every try fails at once
            return
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        super().connectionLost(reason)


class CuttableProxy(ProxyFactory):
    """A TCP proxy in front of PostgreSQL whose every connection can be cut, and new ones refused."""

    protocol = _Cuttable

    def __init__(self, host, port):
        super().__init__(host, port)
        self.cut = False
        self.live: set = set()

    def sever(self) -> None:
        self.cut = True
        for p in list(self.live):
            p.transport.abortConnection()
            if p.peer is not None:
                p.peer.transport.abortConnection()


async def _until(clock, predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await task.deferLater(clock, 0.05, lambda: None)


def _relay(store, rec, sent: list) -> task.LoopingCall:
    """
    Numbered frames to the client every 10 ms, as the gateway relays them:
    only while the store says flowing.  Each one sent is appended to C{sent}.
    """
    def relay():
        if store.pressureState() == FLOWING:
            for _ in range(20):
                data = b"%08d|" % len(sent) + b"x" * 200
                rec.frame(TO_CLIENT, data)
                sent.append(data)

    loop = task.LoopingCall(relay)
    loop.start(0.01)
    return loop


@pytest.fixture
def proxied(postgres):
    from twisted.internet import reactor

    url = fleetDatabase(postgres)
    proxy = CuttableProxy(postgres.host, postgres.port)
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    through = url.replace(f":{postgres.port}/", f":{port.getHost().port}/")
    yield url, through, proxy
    proxy.sever()
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest_twisted.ensureDeferred
async def test_a_5s_outage_pauses_relaying_and_loses_no_recorded_byte(tmp_path, proxied):
    from twisted.internet import reactor

    direct, through, proxy = proxied
    store = SQLiteStore(tmp_path / "state", "sealgate/gw-out", reactor, checkpointInterval=0.2,
                        storeTimeout=10.0, databaseUrl=through)
    await store.start()
    states: list = []
    store.addPressureObserver(lambda state, reason: states.append((state, reason)))
    rec = store.openSession("long", {"identity": "alice", "protocol": "ssh"})
    sent: list = []
    loop = _relay(store, rec, sent)
    await _until(reactor, lambda: len(sent) > 2000, what="first bytes")

    proxy.sever()
    cutAt = time.monotonic()
    await _until(reactor, lambda: store.pressureState() == PAUSED, what="pause")
    pausedAfter = len(sent)
    await task.deferLater(reactor, OUTAGE - (time.monotonic() - cutAt), lambda: None)
    assert store.pressureState() == PAUSED
    assert len(sent) - pausedAfter == 0  # nothing relayed while the store could not record it
    proxy.cut = False
    await _until(reactor, lambda: store.pressureState() == FLOWING, what="resume")
    resumed = len(sent)
    await _until(reactor, lambda: len(sent) > resumed + 2000, what="bytes after the outage")
    loop.stop()
    await rec.close("client closed", {})
    await store.stop()

    assert FAILED not in [s for s, _ in states]
    assert any(s == PAUSED and "fleet database" in (r or "") for s, r in states), states
    with NodeReader(direct, "gw-out") as r:
        got = [f.data for f in r.frames("long")]
        assert got == sent  # every byte, in order, none twice
        report = Report()
        assert verifyStore(r, trustedKey(report, r), report=report).ok, report.problems
        assert r.sessionRecord("long").state == "closed"


@pytest_twisted.ensureDeferred
async def test_a_writer_killed_mid_session_resumes_from_the_database_without_loss(tmp_path, proxied):
    import os
    import signal

    from twisted.internet import reactor

    direct, _, _ = proxied
    store = SQLiteStore(tmp_path / "state", "sealgate/gw-kill", reactor, checkpointInterval=0.2,
                        databaseUrl=direct)
    await store.start()
    rec = store.openSession("k", {"identity": "alice", "protocol": "ssh"})
    sent: list = []
    loop = _relay(store, rec, sent)
    await _until(reactor, lambda: len(sent) > 2000, what="first bytes")
    first = store.writerPid
    os.kill(first, signal.SIGKILL)
    await _until(reactor, lambda: store.writerPid not in (None, first) and store.pressureState() == FLOWING,
                 what="a new writer")
    resumed = len(sent)
    await _until(reactor, lambda: len(sent) > resumed + 2000, what="bytes after the restart")
    loop.stop()
    await rec.close("client closed", {})
    await store.stop()
    with NodeReader(direct, "gw-kill") as r:
        assert [f.data for f in r.frames("k")] == sent
        report = Report()
        assert verifyStore(r, trustedKey(report, r), report=report).ok, report.problems


@pytest_twisted.ensureDeferred
async def test_a_database_down_at_start_refuses_the_store_naming_it_without_the_password(tmp_path, postgres):
    from twisted.internet import reactor

    from sealgate.recording._errors import StoreError
    from tests.harness._proc import freePort

    secret = postgres.password(postgres.superuser)
    url = fleetDatabase(postgres).replace(f":{postgres.port}/", f":{freePort()}/")
    store = SQLiteStore(tmp_path / "state", "sealgate/gw-down", reactor, databaseUrl=url)
    with pytest.raises(StoreError) as caught:
        await store.start()
    assert "cannot connect to the fleet database postgresql://postgres:***@127.0.0.1" in str(caught.value)
    assert secret not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_postgres_session_through_the_gateway_outlives_a_5s_outage_with_every_row_recorded(
        tmp_path, proxied, postgres, monkeypatch):
    import psycopg
    from twisted.internet import reactor, threads

    from sealgate.testing import startGateway
    from tests.harness.pggateway import gatewayConfig
    from tests.harness.twistd import runCLI

    direct, through, proxy = proxied
    monkeypatch.setenv("SEALGATE_TEST_FLEET_URL", through)
    text = (f'[gateway]\nstore_env = "SEALGATE_TEST_FLEET_URL"\nnode = "gw-psql"\nstate_dir = "{tmp_path / "state"}"\n'
            'admin = "tcp:0:interface=127.0.0.1"\ncheckpoint_interval = "200ms"\n\n' + gatewayConfig(postgres, ""))
    (tmp_path / "sealgate.toml").write_text(text)
    # In a thread: with fleet-wide keys the CLI goes through the proxy, which this reactor runs.
    created = await threads.deferToThread(runCLI, "--config", str(tmp_path / "sealgate.toml"), "keys", "create",
                                          "--name", "ci-bot", "--group", "eng")
    key = created.stdout.strip().splitlines()[-1]
    g = await startGateway(text, tmp_path)
    received: list = []
    done = [False]

    def client():
        dsn = (f"host=127.0.0.1 port={g.port('app')} user=ci-bot dbname=app password={key} "
               "sslmode=disable connect_timeout=20")
        with psycopg.connect(dsn, autocommit=True) as c:
            while not done[0]:
                n = len(received)
                row = c.execute("SELECT %s::int, repeat('r', 500)", (n,)).fetchone()
                received.append(row[0])

    running = threads.deferToThread(client)
    try:
        await _until(reactor, lambda: len(received) > 200, what="rows before the outage")
        proxy.sever()
        await _until(reactor, lambda: g.service.store.pressureState() == PAUSED, what="pause")
        stalled = len(received)
        await task.deferLater(reactor, OUTAGE, lambda: None)
        assert len(received) - stalled <= 1  # at most the reply already in flight
        proxy.cut = False
        await _until(reactor, lambda: g.service.store.pressureState() == FLOWING, what="resume")
        resumed = len(received)
        await _until(reactor, lambda: len(received) > resumed + 200, what="rows after the outage")
    finally:
        done[0] = True
        await running  # the client's session ends normally: it never saw an error
    await g.stop()
    with NodeReader(direct, "gw-psql") as r:
        (record,) = r.findSessions()
        assert record.state == "closed"
        replies = b"".join(f.data for f in r.frames(record.id) if f.direction == TO_CLIENT)
        # Every DataRow the client received, in order, once: (2 columns, the number, 500 bytes of r).
        rows = [int(n) for n in re.findall(rb"D....\x00\x02\x00\x00\x00[\x01-\x09](\d+)\x00\x00\x01\xf4r{500}",
                                           replies, re.S)]
        assert rows == received
        report = Report()
        assert verifyStore(r, trustedKey(report, r), report=report).ok, report.problems
