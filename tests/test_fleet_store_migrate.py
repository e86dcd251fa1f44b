"""`sealgate store migrate` and `sealgate verify` over a fleet database: proofs intact, every node checked."""

import json
import os

import pytest
import pytest_twisted

from sealgate.recording import _pgdb
from sealgate.recording.pgreader import NodeReader
from sealgate.recording.reader import StoreReader
from sealgate.recording.store import SQLiteStore
from sealgate.session import FROM_CLIENT, TO_CLIENT
from tests.fleetpg import fleetDatabase
from tests.test_store import cli


@pytest.fixture
def url(postgres, monkeypatch):
    u = fleetDatabase(postgres)
    monkeypatch.setenv("FLEET_URL", u)
    return u


async def _embedded(state, origin="sealgate/mig", prefix=""):
    from twisted.internet import reactor

    store = SQLiteStore(state, origin, reactor, checkpointInterval=0.1)
    await store.start()
    big = os.urandom(2_500_000)  # several runs and chunks
    for sid, payload in ((prefix + "m1", b"SELECT 1;"), (prefix + "m2", big)):
        rec = store.openSession(sid, {"identity": "alice", "protocol": "postgres"})
        rec.frame(FROM_CLIENT, b"password=hunter2")
        rec.frame(TO_CLIENT, payload)
        await rec.close("client closed", {})
    await store.redact(prefix + "m1", 0, "leaked", "auditor")
    await store.stop()
    return big


@pytest_twisted.ensureDeferred
async def test_migrated_store_verifies_with_the_same_proofs_before_and_after(tmp_path, url):
    state = tmp_path / "state"
    big = await _embedded(state)
    assert cli("verify", "--state-dir", str(state), "--checkpoint-dir", "none")[0] == 0
    code, out = cli("store", "migrate", "--state-dir", str(state), "--to-env", "FLEET_URL")
    assert code == 0, out
    assert "as node mig" in out and "hunter2" not in out
    code, out = cli("verify", "--store-env", "FLEET_URL", "--node", "mig", "--checkpoint-dir", "none")
    assert code == 0, out
    # 16 KiB frames: 2 + 153; every byte of both sessions, one frame redacted.
    assert out.startswith("OK: fleet database, node mig: 2 session(s), 156 frames (2500041 bytes, 1 redacted)")
    # Verify of the embedded store still passes: migration copies, it does not move.
    assert cli("verify", "--state-dir", str(state), "--checkpoint-dir", "none")[0] == 0
    with StoreReader(state) as old, NodeReader(url, "mig") as new:
        assert new.checkpoints() == old.checkpoints()
        assert new.verifier() == old.verifier() == new.pinnedVerifier()
        close = [n for n, _, kind, _ in old.logLeaves() if kind == "close"][-1]
        assert new.inclusionProof(close) == old.inclusionProof(close)
        assert new.consistencyProof(1) == old.consistencyProof(1)
        assert b"".join(f.data for f in new.frames("m2") if f.direction == TO_CLIENT) == big
        assert [f.data for f in new.frames("m1")][0] is None  # the redaction came along


@pytest_twisted.ensureDeferred
async def test_migrating_twice_is_refused_and_leaves_the_first_copy(tmp_path, url):
    state = tmp_path / "state"
    await _embedded(state)
    assert cli("store", "migrate", "--state-dir", str(state), "--to-env", "FLEET_URL")[0] == 0
    assert cli("store", "migrate", "--state-dir", str(state), "--to-env", "FLEET_URL")[0] == 2
    assert cli("verify", "--store-env", "FLEET_URL", "--checkpoint-dir", "none")[0] == 0


@pytest_twisted.ensureDeferred
async def test_verify_checks_every_node_and_names_the_one_that_was_altered(tmp_path, url):
    await _embedded(tmp_path / "a", "sealgate/node-a")
    await _embedded(tmp_path / "b", "sealgate/node-b")
    for node in ("a", "b"):
        assert cli("store", "migrate", "--state-dir", str(tmp_path / node), "--to-env", "FLEET_URL")[0] == 0
    code, out = cli("verify", "--store-env", "FLEET_URL", "--checkpoint-dir", "none")
    assert code == 0, out
    assert "OK: fleet database, node node-a" in out and "OK: fleet database, node node-b" in out
    code, out = cli("verify", "--store-env", "FLEET_URL", "--checkpoint-dir", "none", "--json")
    assert code == 0
    assert [(n["subject"], n["ok"], n["sessions"]) for n in json.loads(out)] == [
        ("fleet database, node node-a", True, 2), ("fleet database, node node-b", True, 2)]
    conn = _pgdb.connectURL(url)
    conn.execute('UPDATE "sealgate_rec_node-b".log SET leaf = leaf || \'\\x20\'::bytea WHERE n = 1')
    conn.close()
    code, out = cli("verify", "--store-env", "FLEET_URL", "--checkpoint-dir", "none")
    assert code == 1
    assert "OK: fleet database, node node-a" in out
    assert "verification FAILED" in out and "node node-b" in out
    assert cli("verify", "--store-env", "FLEET_URL", "--node", "node-a", "--checkpoint-dir", "none")[0] == 0


@pytest_twisted.ensureDeferred
async def test_verify_of_one_session_checks_the_log_of_the_node_that_recorded_it(tmp_path, url):
    await _embedded(tmp_path / "a", "sealgate/node-a")
    await _embedded(tmp_path / "b", "sealgate/node-b", prefix="b-")
    for node in ("a", "b"):
        assert cli("store", "migrate", "--state-dir", str(tmp_path / node), "--to-env", "FLEET_URL")[0] == 0
    code, out = cli("verify", "--store-env", "FLEET_URL", "--session", "b-m1", "--checkpoint-dir", "none")
    assert code == 0, out
    assert "OK: fleet database, node node-b: 1 session(s)" in out and "node-a" not in out
    assert cli("verify", "--store-env", "FLEET_URL", "--session", "nope", "--checkpoint-dir", "none")[0] == 2
