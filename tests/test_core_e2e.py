"""The core's steps end to end: real gateway, real PostgreSQL and sshd, real psql, psycopg, ssh and sftp.

Output hooks see every byte a client gets; a rewrite sftp cannot apply is
refused; store pressure pauses, resumes and ends sessions.  The store's own
signal (backlog, writer restart, disk full) is the store's to test; here
the gateway's pressure observer is called as the store calls it, and real
clients show what each protocol does with it.
"""

from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from sealgate import CANNOT_REWRITE, Chain, Rewrite
from sealgate.protocols.postgres import _wire as w
from sealgate.recording.reader import StoreReader
from sealgate.testing import CommandInterceptor, OutputRecorder
from tests.test_pg_proxy import _dsn, _psql, _start
from tests.test_ssh_e2e import _newClosedSession, _sessionIds, _until
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


def _withInterceptor(gateway, interceptor):
    """New sessions get the gateway's chain plus C{interceptor}; returns the undo."""
    old = gateway.chain
    gateway.chain = Chain([*old.interceptors, interceptor])
    return lambda: setattr(gateway, "chain", old)


def _sentTo(stateDir, sessionId) -> bytes:
    with StoreReader(stateDir) as r:
        return b"".join(f.data or b"" for f in r.frames(sessionId) if f.direction == 1)


@pytest_twisted.ensureDeferred
async def test_output_hooks_see_every_byte_psql_received(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    hook = OutputRecorder()
    _withInterceptor(g.gateway, hook)
    try:
        sql = ("select 1 as one; select repeat('x', 70000); "
               "do $$ begin raise notice 'hello from the server'; end $$; select 1/0")
        r = await _psql(postgres, g, key, sql)
        assert "division by zero" in r.stderr and "hello from the server" in r.stderr
    finally:
        await g.stop()
    with StoreReader(g.stateDir) as reader:
        [row] = [s for s in reader.sessions() if s["info"].get("protocol") == "postgres"]
    sent = _sentTo(g.stateDir, row["id"])
    # All but the password request (sent before the session existed, kept
    # by the Preamble) passed the output step, and the hooks saw it all.
    assert sent == w.Authentication(w.AUTH_CLEARTEXT).encode() + hook.shown()
    assert b"hello from the server" in hook.shown() and b"x" * 70000 in hook.shown()


@pytest_twisted.ensureDeferred
async def test_sftp_rewrite_is_refused_with_the_reason_and_the_file_stays(env):  # noqa: F811
    rewriter = CommandInterceptor(
        lambda hook: Rewrite(hook.text.replace("keep.txt", "other.txt"))
        if hook.kind == "sftp" and hook.text.startswith("remove ") else None,
        name="rewriter")
    undo = _withInterceptor(env.gw.gateway, rewriter)
    d = env.tmp / "rewrite"
    d.mkdir()
    (d / "keep.txt").write_text("keep me")
    (d / "other.txt").write_text("and me")
    batch = env.tmp / "rewrite-batch"
    batch.write_text(f"rm {d}/keep.txt\n")
    before = _sessionIds(env)
    try:
        r = await env.run(["sftp", "-b", str(batch)] + env.clientOptions() + ["web-1@127.0.0.1"])
    finally:
        undo()
    assert r.returncode != 0
    assert CANNOT_REWRITE.encode() in r.stderr
    assert Path(d / "keep.txt").exists() and Path(d / "other.txt").exists()
    sessionId = await _newClosedSession(env, before)
    with StoreReader(env.gw.stateDir) as reader:
        events = [e["fields"] for e in reader.events(sessionId) if e.get("event") == "command"]
    assert [(e["verdict"], e["rule"], e["reason"]) for e in events
            if e["command"].startswith("remove")] == [("deny", "rewriter", CANNOT_REWRITE)]


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
        assert b"58030" in _sentTo(g.stateDir, session.id)  # the FATAL the client got is in the recording
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
