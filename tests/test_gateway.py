"""The gateway core in-process: identity to session, access, audit of failures, sealed frames."""

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from sealgate.chain.verdicts import CONTINUE, Deny
from sealgate.config import ConnectionConfig
from sealgate.identity import AuthenticationFailed
from sealgate.interfaces import IGateway, IRecordingStore
from sealgate.recording.reader import StoreReader
from sealgate.session import FROM_CLIENT, TO_CLIENT, SessionRefused
from sealgate.testing import startGateway

CONFIG = """
[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[rules]]
name = "no-drop"
action = "deny"
statements = ["DROP"]
reason = "not here"
"""

DB = ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=127.0.0.1:port=1")


@pytest_twisted.ensureDeferred
async def test_identity_to_recorded_session_and_audited_refusals(tmp_path):
    running = await startGateway(CONFIG, tmp_path)
    gateway = running.gateway
    verifyObject(IGateway, gateway)
    verifyObject(IRecordingStore, running.service.store)
    key = running.createKey("ci-deploy", ["eng"])
    sales = running.createKey("eve", ["sales"])
    try:
        identity = await gateway.authenticate(DB, key, "127.0.0.1:5000")
        assert (identity.subject, identity.groups, identity.method) == ("ci-deploy", {"eng"}, "apikey")

        with pytest.raises(AuthenticationFailed):
            await gateway.authenticate(DB, key[:-2] + "xx", "127.0.0.1:5001", claimed="mallory")

        other = await gateway.authenticate(DB, sales, "127.0.0.1:5002")
        with pytest.raises(SessionRefused, match="no role that grants connection db"):
            gateway.openSession(DB, other, "127.0.0.1:5002")

        session = gateway.openSession(DB, identity, "127.0.0.1:5000", {"database": "app"})
        assert gateway.sessions == {session.id: session}
        session.received(b"select 1;")
        assert session.decide("sql", "select 1", {"statements": ("SELECT",)}).verdict is CONTINUE
        assert session.emit(b"1 row") == b"1 row"
        denied = session.decide("sql", "drop table t", {"statements": ("DROP",)})
        assert denied.verdict == Deny("no-drop", "not here")
        await session.end("client closed")
        assert gateway.sessions == {}
    finally:
        await running.stop()

    with StoreReader(running.stateDir) as reader:
        frames = list(reader.frames(session.id))
        assert [(f.direction, f.data) for f in frames] == [(FROM_CLIENT, b"select 1;"), (TO_CLIENT, b"1 row")]
        commands = [e for e in reader.events(session.id) if "verdict" in str(e)]
        text = repr(commands)
        assert "allow" in text and "deny" in text and "no-drop" in text
        nodeEvents = repr(reader.events(None))
        assert "login_failed" in nodeEvents and "mallory" in nodeEvents
        assert "access_denied" in nodeEvents and "eve" in nodeEvents
        assert key not in nodeEvents and key[-10:] not in nodeEvents


@pytest_twisted.ensureDeferred
async def test_store_refusing_new_sessions_refuses_with_the_reason(tmp_path):
    running = await startGateway(CONFIG, tmp_path)
    try:
        identity = await running.gateway.authenticate(DB, running.createKey("ci", ["eng"]), "c")
        running.service.store.healthy = lambda: "the disk is full"
        with pytest.raises(SessionRefused, match="cannot be recorded: the disk is full"):
            running.gateway.openSession(DB, identity, "c")
    finally:
        del running.service.store.healthy
        await running.stop()
