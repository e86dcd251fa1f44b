"""A PostgreSQL session through the gateway behaves as a direct one: backend pid, cancel keys, sealed statement events."""

import socket

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from sealgate.protocols.postgres import _wire as w
from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.harness.pggateway import clientDSN, gatewayConfig
from tests.harness.postgres import SCRAM_USER

_POLICY = """
[[rules]]
name = "safe"
action = "deny"
preset = "production-safe"
"""


async def _start(tmp_path, postgres):
    g = await startGateway(gatewayConfig(postgres, _POLICY), tmp_path)
    return g, g.createKey("ci-bot", ["eng"])


def _dsn(g, key) -> str:
    return clientDSN(g, key)


@pytest_twisted.ensureDeferred
async def test_the_client_is_told_the_real_backend_pid(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                told = c.info.backend_pid
                real = c.execute("SELECT pg_backend_pid()").fetchone()[0]
                c.execute("LISTEN fid")
                c.execute("NOTIFY fid, 'x'")
                note = next(c.notifies(timeout=10, stop_after=1))
                with psycopg.connect(_dsn(g, key), autocommit=True) as other:
                    killed = other.execute("SELECT pg_terminate_backend(%s)", (told,)).fetchone()[0]
                with pytest.raises(psycopg.OperationalError):
                    c.execute("SELECT 1")
            return told, real, note.pid, killed
        told, real, notified, killed = await threads.deferToThread(go)
        assert told == real == notified
        assert killed is True
    finally:
        await g.stop()


def _cancel(port: int, pid: int, secret: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        s.sendall(w.CancelRequest(pid, secret).encode())
        s.recv(1)
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_a_cancel_needs_the_gateway_secret_not_just_the_pid(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            import threading
            import time

            outcome = []
            with psycopg.connect(_dsn(g, key)) as c, \
                    psycopg.connect(postgres.dsn(SCRAM_USER), autocommit=True) as watch:
                pid = c.info.backend_pid

                def run():
                    try:
                        c.execute("SELECT pg_sleep(2)")
                        outcome.append("completed")
                    except psycopg.Error as e:
                        outcome.append(type(e).__name__)
                t = threading.Thread(target=run)
                t.start()
                deadline = time.monotonic() + 30
                while watch.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND "
                                    "query LIKE 'SELECT pg_sleep%%'", (pid,)).fetchone()[0] == 0:
                    assert time.monotonic() < deadline, "the query never started"
                    time.sleep(0.02)  # poll interval only: the wait is on the condition
                # The right pid with a guessed secret: the gateway has handled
                # it once it hangs up, while the query still runs.
                _cancel(g.port("app"), pid, 12345)
                t.join()
            return outcome
        assert await threads.deferToThread(go) == ["completed"]
    finally:
        await g.stop()


def _statementEvents(g) -> list[dict]:
    with StoreReader(g.stateDir) as reader:
        events = []
        for s in reader.sessions():
            events += [e for e in reader.events(s["id"]) if e.get("type") == "event"]
    return events


@pytest_twisted.ensureDeferred
async def test_each_statement_event_names_effects_rule_and_settings(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                c.execute("SET standard_conforming_strings = off")
                c.execute("CREATE TEMP TABLE fx (id int)")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute("DELETE FROM fx WHERE 1 = 1")
        await threads.deferToThread(go)
    finally:
        await g.stop()
    text = repr(_statementEvents(g))
    events = _statementEvents(g)
    allowed = [e for e in events if "CREATE TEMP TABLE" in repr(e)]
    denied = [e for e in events if "DELETE FROM fx" in repr(e)]
    assert allowed and denied, text
    a, d = repr(allowed[0]), repr(denied[0])
    assert "'effects': ['defines-objects']" in a, a
    assert "standard_conforming_strings=off client_encoding=UTF8" in a, a
    assert "'rule': 'safe'" in d and "deletes-all-rows" in d and "'deny'" in d, d
    assert "standard_conforming_strings=off" in d, d
