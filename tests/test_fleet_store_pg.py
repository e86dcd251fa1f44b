"""The recording store on a fleet's PostgreSQL: recording, reading every node, verify, redaction, refusals."""

import os

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from sealgate.interfaces import IRecordingReader
from sealgate.recording import _pgdb
from sealgate.recording._engine import SessionState, StoreError
from sealgate.recording._pgengine import PgEngine
from sealgate.recording.checkpoint import openCheckpoint
from sealgate.recording.pgreader import FleetReader, NodeReader
from sealgate.recording.store import SQLiteStore
from sealgate.recording.verify import Report, trustedKey, verifyStore
from sealgate.session import FROM_CLIENT, TO_CLIENT
from tests.fleetpg import fleetDatabase


@pytest.fixture
def url(postgres):
    return fleetDatabase(postgres)


async def _record(store, sessionId, payloads, identity="alice"):
    rec = store.openSession(sessionId, {"identity": identity, "protocol": "postgres", "password": "hunter2"})
    for direction, data in payloads:
        rec.frame(direction, data)
    rec.event("command", {"command": "SELECT 1", "verdict": "allow"})
    await rec.close("client closed", {})


def _engineWith(tmp_path, url, node, *payloads, keepOpen=False) -> PgEngine:
    """A node's engine holding one closed session "s1" of C{payloads} (direction, bytes), in one batch."""
    e = PgEngine(tmp_path, None, url, node, checkpointInterval=0.0)
    e.open()
    s = SessionState("s1")
    e.apply([("open", s, {"identity": "alice"}, None, None, False),
             *[(s, 1.0 + i / 10, 0, d, data) for i, (d, data) in enumerate(payloads)],
             ("close", s, "done", {}, None, False)], forceCheckpoint=True)
    if not keepOpen:
        e.close()
    return e


def _verified(reader) -> Report:
    report = Report()
    key = trustedKey(report, reader)
    return verifyStore(reader, key, report=report)


@pytest_twisted.ensureDeferred
async def test_two_nodes_write_their_own_logs_and_a_fleet_reader_shows_both(tmp_path, url):
    from twisted.internet import reactor

    big = os.urandom(300_000)  # more than one run: bulk frames go to blobs beside the sealing
    stores = {}
    for node in ("gw-1", "gw-2"):
        stores[node] = SQLiteStore(tmp_path / node, f"sealgate/{node}", reactor, checkpointInterval=0.2,
                                   databaseUrl=url)
        await stores[node].start()
    await _record(stores["gw-1"], "s-one", [(FROM_CLIENT, b"SELECT 1;"), (TO_CLIENT, big)])
    await _record(stores["gw-2"], "s-two", [(FROM_CLIENT, b"SELECT 2;"), (TO_CLIENT, b"two")], identity="bob")
    for store in stores.values():
        await store.stop()
    # Nothing of the embedded store was written: the state_dir holds only the key, its pin and the lock.
    assert not (tmp_path / "gw-1" / "recordings.sqlite").exists()

    with FleetReader(url, "gw-1") as fleet:
        assert verifyObject(IRecordingReader, fleet)
        found = {r.id: r for r in fleet.findSessions()}
        assert {sid: r.node for sid, r in found.items()} == {"s-one": "gw-1", "s-two": "gw-2"}
        assert found["s-two"].identity == "bob" and found["s-two"].state == "closed"
        assert found["s-one"].asJSON()["node"] == "gw-1"
        frames = list(fleet.frames("s-one"))
        assert b"".join(f.data for f in frames if f.direction == TO_CLIENT) == big
        assert b"".join(f.data for f in fleet.frames("s-two")) == b"SELECT 2;two"
        assert [e["type"] for e in fleet.events("s-two")] == ["open", "event", "close"]
        assert fleet.sessionRecord("s-two").node == "gw-2"
        # The log is the local node's, signed with its own key for its own origin.
        size, _, note = fleet.latestCheckpoint()
        assert openCheckpoint(note, fleet.verifier(), "sealgate/gw-1").size == size
        raw = b"".join(bytes(leaf) for _, _, _, leaf in fleet.logLeaves())
        assert b"hunter2" not in raw
    for node in ("gw-1", "gw-2"):
        with NodeReader(url, node) as r:
            assert r.origin == f"sealgate/{node}"
            report = _verified(r)
            assert report.ok, report.problems
            assert report.sessions == 1


def test_an_altered_payload_row_fails_verify_naming_the_frame(tmp_path, url):
    _engineWith(tmp_path, url, "gw-a", (0, b"secret payload"), (1, b"answer"))
    with NodeReader(url, "gw-a") as r:
        assert _verified(r).ok
    conn = _pgdb.connectURL(url)
    conn.execute("UPDATE \"sealgate_rec_gw-a\".blobs SET data = overlay(data placing '\\x58'::bytea from 80)")
    conn.close()
    with NodeReader(url, "gw-a") as r:
        report = _verified(r)
    assert not report.ok
    assert any("frame" in p and "s1" in p for p in report.problems), report.problems


def test_redaction_erases_the_payload_row_and_every_proof_stays_valid(tmp_path, url):
    e = _engineWith(tmp_path, url, "gw-r", (0, b"password=hunter2"), (1, b"ok"), keepOpen=True)
    e.redact("s1", 0, "leaked secret", "auditor")
    e.close()
    with NodeReader(url, "gw-r") as r:
        frames = list(r.frames("s1"))
        assert frames[0].data is None and frames[1].data == b"ok"
        assert _verified(r).ok
    conn = _pgdb.connectURL(url)
    blobs = b"".join(bytes(d) for (d,) in conn.execute('SELECT data FROM "sealgate_rec_gw-r".blobs'))
    conn.close()
    assert b"hunter2" not in blobs


def test_a_second_writer_for_the_same_node_is_refused(tmp_path, url):
    first = PgEngine(tmp_path / "a", None, url, "gw-x")
    first.open()
    try:
        second = PgEngine(tmp_path / "b", None, url, "gw-x")
        with pytest.raises(StoreError, match="another gateway"):
            second.open()
    finally:
        first.close()


def test_a_reader_of_an_unknown_node_says_which_nodes_there_are(tmp_path, url):
    e = PgEngine(tmp_path, None, url, "gw-k")
    e.open()
    e.close()
    with pytest.raises(StoreError, match="gw-k"):
        NodeReader(url, "gw-nope")


AMBIGUOUS = """
import marshal, sys
from sealgate.recording._engine import SessionState
from sealgate.recording._pgdb import connectURL
from sealgate.recording._pgengine import PgEngine

state, url = sys.argv[1], sys.argv[2]
e = PgEngine(state, None, url, "gw-amb", checkpointInterval=0.0)
e.open()
s = SessionState("s")
e.apply([("open", s, {"identity": "alice"}, None, None, False), (s, 1.0, 0, 0, b"one")],
        meta={"writer_items": 2, "writer_cost": 10})
# The next commit landed, but its answer never came back: the database is ahead of this process.
other = connectURL(url)
other.execute('UPDATE "sealgate_rec_gw-amb".meta SET value = %s WHERE key = %s', (marshal.dumps(3), "writer_items"))
other.close()
e.db.conn.close()
e.apply([(s, 2.0, 0, 0, b"two")], meta={"writer_items": 3, "writer_cost": 20})
print("went on writing")
"""


def test_a_commit_of_unknown_outcome_ends_the_writer_instead_of_writing_twice(tmp_path, url):
    import subprocess
    import sys

    from sealgate.recording._pgengine import EX_COMMIT_UNKNOWN

    r = subprocess.run([sys.executable, "-c", AMBIGUOUS, str(tmp_path), url], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(["src", "."])})
    assert r.returncode == EX_COMMIT_UNKNOWN, r.stderr
    assert "went on writing" not in r.stdout
    # A writer restarted on the same node resumes from what the database holds, and the log verifies.
    e = PgEngine(tmp_path, None, url, "gw-amb")
    e.open(resume=True)
    assert "s" in e.sessions
    e.close()
    with NodeReader(url, "gw-amb") as reader:
        assert _verified(reader).ok


def test_a_session_bundle_from_the_fleet_database_verifies_offline(tmp_path, url):
    import io

    from sealgate.recording.bundle import verifyBundle

    _engineWith(tmp_path, url, "gw-b", (0, b"SELECT 1;"), (1, os.urandom(50_000)))
    out = io.BytesIO()
    with FleetReader(url, "gw-b") as fleet:
        fleet.recorded("s1").bundle(out)
        key = fleet.verifier()
    report, header = verifyBundle(out.getvalue(), key, (), 0)
    assert report.ok, report.problems
    assert header["session"] == "s1" and report.frames == 5
    tampered = bytearray(out.getvalue())
    tampered[-100] ^= 1
    assert not verifyBundle(bytes(tampered), key, (), 0)[0].ok


def test_a_reconnect_ends_our_own_connection_that_outlived_an_outage_at_the_server(tmp_path, url):
    e = _engineWith(tmp_path, url, "gw-st", (0, b"before"), keepOpen=True)
    stale = e.db.conn
    # A partition the server never saw: to it, our old connection is alive, holding the node's lock
    # and an unfinished transaction over the session row the next batch updates.
    stale.execute("BEGIN")
    stale.execute('UPDATE "sealgate_rec_gw-st".sessions SET size = size')
    e.db = _pgdb.PgConnection(_pgdb.connectURL(url), e.schema)  # what the writer sees: a fresh socket...
    e.db.conn.close()  # ... that broke
    s = SessionState("s2")
    e.apply([("open", s, {"identity": "bob"}, None, None, False), (s, 2.0, 0, 0, b"after")],
            forceCheckpoint=True)
    assert stale.closed or stale.broken or _gone(stale)
    e.close()
    with NodeReader(url, "gw-st") as r:
        assert [f.data for f in r.frames("s2")] == [b"after"]
        assert _verified(r).ok


def _gone(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except Exception:
        return True
    return False


def test_a_second_writer_is_still_refused_after_the_first_reconnected(tmp_path, url):
    first = _engineWith(tmp_path / "a", url, "gw-y", (0, b"x"), keepOpen=True)
    first.db.conn.close()
    first.apply([], forceCheckpoint=True)  # reconnects, takes the lock again
    try:
        with pytest.raises(StoreError, match="another gateway"):
            PgEngine(tmp_path / "b", None, url, "gw-y").open()
    finally:
        first.close()


def test_a_garbled_meta_row_is_a_verify_failure_not_a_crash(tmp_path, url):
    _engineWith(tmp_path, url, "gw-m", (0, b"x"))
    conn = _pgdb.connectURL(url)
    conn.execute("""UPDATE "sealgate_rec_gw-m".meta SET value = '\\xe3000000'::bytea WHERE key = 'log_size'""")
    conn.close()
    with NodeReader(url, "gw-m") as r:
        report = _verified(r)
    assert not report.ok
    assert any("log" in p for p in report.problems), report.problems
