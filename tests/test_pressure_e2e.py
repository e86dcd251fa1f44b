"""Store pressure, protocol side, end to end: real gateway, real PostgreSQL and sshd, real psycopg and ssh.

The store's own signal (backlog, writer restart, disk full) is the store's
to test; here the gateway's pressure observer is called as the store calls
it, and real clients show what each protocol does with it.
"""

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from sealgate.recording.reader import StoreReader
from tests.test_pg_proxy import _dsn, _start
from tests.test_ssh_e2e import _until
from tests.test_ssh_e2e import env as env  # noqa: F401  (the module's gateway and sshd)


def _reading(leg) -> bool:
    return leg.transport in reactor.getReaders()


async def _live(gateway, protocol):
    sessions = await _until(lambda: [s for s in gateway.sessions.values()
                                     if s.protocol == protocol and s.backendLeg is not None])
    return sessions[0]


async def _closedWith(stateDir, sessionId):
    def reason():
        with StoreReader(stateDir) as r:
            s = r.session(sessionId)
        return s is not None and s["closed"] is not None and s["reason"]

    return await _until(reason)


@pytest_twisted.ensureDeferred
async def test_postgres_pauses_both_legs_resumes_then_ends_with_58030_on_store_failure(
        tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    conn = await threads.deferToThread(psycopg.connect, _dsn(g, key), autocommit=True)
    try:
        session = await _live(g.gateway, "postgres")
        g.gateway.pressureChanged("paused", "the disk is full")
        assert session.clientLeg.paused and session.backendLeg.paused
        assert not _reading(session.clientLeg) and not _reading(session.backendLeg)
        g.gateway.pressureChanged("flowing", None)
        assert _reading(session.clientLeg) and _reading(session.backendLeg)
        row = await threads.deferToThread(lambda: conn.execute("select 'after'").fetchone())
        assert row == ("after",)

        g.gateway.pressureChanged("failed", "the recording store is restarting")

        def next():
            with pytest.raises(psycopg.OperationalError) as e:
                conn.execute("select 'gone'")
            return str(e.value)

        message = await threads.deferToThread(next)
        assert "recording store failed" in message
        assert await _closedWith(g.stateDir, session.id) == "store failed"
        with StoreReader(g.stateDir) as r:
            sent = b"".join(f.data or b"" for f in r.frames(session.id) if f.direction == 1)
        assert b"58030" in sent  # the FATAL the client got is in the recording
    finally:
        await threads.deferToThread(conn.close)
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_ssh_pauses_both_legs_resumes_then_disconnects_on_store_failure(env):  # noqa: F811
    running = env.run(env.sshArgs() + ["echo ready; sleep 60"], timeout=120)
    session = await _live(env.gw.gateway, "ssh")
    await _until(lambda: session.bytesToClient > 0)
    g = env.gw.gateway
    g.pressureChanged("paused", "the recording backlog is over max_unsealed")
    assert not _reading(session.clientLeg) and not _reading(session.backendLeg)
    g.pressureChanged("flowing", None)
    assert _reading(session.clientLeg) and _reading(session.backendLeg)
    g.pressureChanged("failed", "the disk is full")
    result = await running
    assert result.returncode == 255
    assert b"recording store failed" in result.stderr
    assert await _closedWith(env.gw.stateDir, session.id) == "store failed"
