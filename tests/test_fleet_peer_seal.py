"""A dead fleet node's open sessions: cut off by the peer that declared it down, sealed by the node at its restart."""

import json
import os
import signal
import time

import psycopg
import pytest
from twisted.internet import defer, task

from sealgate.recording import _format as fmt
from sealgate.recording._engine import SessionState, StoreError
from sealgate.recording._pgengine import PgEngine
from sealgate.recording.peerseal import (
    LOCK_RETRY,
    LOCK_TRIES,
    NodeLocked,
    checkPeerCuts,
    cutPeer,
    peerReason,
    restartReason,
    sealPeer,
)
from sealgate.recording.pgreader import FleetReader, NodeReader
from sealgate.recording.records import SessionQuery
from sealgate.recording.verify import Report, trustedKey, verifyStore
from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import clientDSN
from tests.harness.twistd import GatewayProcess
from tests.test_fleet_ctl_e2e import DB_ENV, LEASE, api, fleetConfig, until


def _verified(url: str, node: str) -> list:
    with NodeReader(url, node) as r:
        report = Report()
        verifyStore(r, trustedKey(report, r), report=report)
        return report.problems


def _openSession(tmp_path, url, node: str) -> PgEngine:
    e = PgEngine(tmp_path / node, None, url, node, checkpointInterval=0.0)
    e.open()
    s = SessionState("s-open")
    e.apply([("open", s, {"identity": "alice", "protocol": "postgres"}, None, None, False),
             (s, 1.0, 0, 0, b"SELECT 1;")], forceCheckpoint=True)
    return e


def test_a_peer_cuts_only_a_dead_writers_sessions_and_the_restart_seals_them(tmp_path, postgres):
    url = fleetDatabase(postgres)
    engine = _openSession(tmp_path, url, "gw-2")
    # Its writer still holds the node's lock (not gone yet, or back): nothing is cut.
    with pytest.raises(NodeLocked):
        cutPeer(url, "gw-2", "gw-1")
    assert cutPeer(url, "gw-9", "gw-1") == []  # no such node
    engine.close()  # as a SIGKILLed writer: the lock goes with its connection

    cuts = cutPeer(url, "gw-2", "gw-1", now=1234.0)
    assert [(c["session"], c["size"], c["reason"]) for c in cuts] == [("s-open", 1, peerReason("gw-1", "gw-2"))]
    assert cuts[0]["log_size"] >= 2 and 0 < cuts[0]["checkpoint"] <= cuts[0]["log_size"]
    assert cutPeer(url, "gw-2", "gw-3") == []  # cut once
    with FleetReader(url, "gw-2") as fleet:
        (record,) = fleet.findSessions()
        assert (record.state, record.reason, record.closed, record.frames) == (
            "cut off", peerReason("gw-1", "gw-2"), 1234.0, 1)
        assert [r.id for r in fleet.findSessions(SessionQuery(state="cut off"))] == ["s-open"]
    assert _verified(url, "gw-2") == []  # its leaves are untouched
    # But no peer sealed that cut (cutPeer alone, no peer store): the fleet's verify names the row.
    report = Report()
    with NodeReader(url, "gw-2") as r:
        checkPeerCuts(report, r, url, ["gw-2"])
    assert report.problems == ["session s-open: the peer_cuts table says node gw-1 cut it off, but no peer-cut "
                               "event sealed in node gw-1's log says so: the row was forged or altered"]

    # The node comes back: its own log seals the CLOSE, naming the peer.
    engine = PgEngine(tmp_path / "gw-2", None, url, "gw-2", checkpointInterval=0.0)
    assert engine.open() == ["s-open"]
    engine.close()
    with NodeReader(url, "gw-2") as r:
        record = r.sessionRecord("s-open")
        assert (record.state, record.reason) == ("cut off", restartReason("gw-1", "gw-2"))
        assert record.sealLeaf == r.logSize() - 1  # a sealed CLOSE leaf, not the peer's row
    assert _verified(url, "gw-2") == []


def test_a_restart_before_any_peer_noticed_seals_as_a_plain_cut_off(tmp_path, postgres):
    url = fleetDatabase(postgres)
    _openSession(tmp_path, url, "gw-2").close()
    engine = PgEngine(tmp_path / "gw-2", None, url, "gw-2", checkpointInterval=0.0)
    assert engine.open() == ["s-open"]
    engine.close()
    assert cutPeer(url, "gw-2", "gw-1") == []  # nothing open any more
    with NodeReader(url, "gw-2") as r:
        assert r.sessionRecord("s-open").reason.startswith("cut off: the gateway stopped")


class _Store:
    """What L{sealPeer} uses of the store: its origin, reactor, URL, and the audit events it seals."""

    def __init__(self, clock):
        self.origin, self.reactor, self.databaseUrl = "sealgate/gw-1", clock, "postgresql://fleet"
        self.events: list = []

    def auditEvent(self, event: dict) -> None:
        self.events.append(event)


def test_a_cut_the_database_refused_is_tried_again_and_sealed_in_the_peers_log():
    clock = task.Clock()
    store = _Store(clock)
    answers = [StoreError("cannot connect to the fleet database"), StoreError("still down"),
               [{"session": "s1", "size": 3, "log_size": 9, "checkpoint": 9, "reason": "r", "time": 5.0}]]
    calls = []

    def inThread(f, *args):
        calls.append((f, args))
        answer = answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

    done = []
    sealPeer(store, "gw-2", inThread=inThread, delays=(1.0, 2.0)).addCallback(done.append)
    assert calls == [(cutPeer, ("postgresql://fleet", "gw-2", "gw-1"))] and not done
    clock.advance(1.0)
    assert len(calls) == 2 and not done and store.events == []
    clock.advance(2.0)
    assert done == [["s1"]]
    assert store.events == [{"kind": "peer-cut", "node": "gw-2", "session": "s1", "size": 3, "log_size": 9,
                             "checkpoint": 9, "reason": "r", "time": 5.0}]


def test_a_writer_still_holding_its_lock_is_waited_for_then_its_sessions_are_cut():
    # A SIGKILLed gateway's writer outlives it for a moment (it notices its parent is gone):
    # the peer tries again until the lock is free, instead of taking the node for alive.
    clock = task.Clock()
    store = _Store(clock)
    cut = {"session": "s1", "size": 3, "log_size": 9, "checkpoint": 9, "reason": "r", "time": 5.0}
    answers = [NodeLocked("held"), NodeLocked("held"), [cut]]

    def inThread(f, *args):
        answer = answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)

    done = []
    sealPeer(store, "gw-2", inThread=inThread, delays=()).addCallback(done.append)
    clock.advance(LOCK_RETRY)
    assert not done and store.events == []
    clock.advance(LOCK_RETRY)
    assert done == [["s1"]] and store.events == [{"kind": "peer-cut", "node": "gw-2", **cut}]


def test_a_node_that_keeps_its_lock_is_left_to_seal_its_own_sessions():
    clock = task.Clock()
    store = _Store(clock)
    done = []
    sealPeer(store, "gw-2", inThread=lambda f, *a: defer.fail(NodeLocked("back")), delays=()).addCallback(
        done.append)
    clock.pump([LOCK_RETRY] * LOCK_TRIES)
    assert done == [[]] and store.events == []


def test_no_retry_left_fails_the_hook_and_seals_nothing():
    store = _Store(task.Clock())
    failures = []
    sealPeer(store, "gw-2", inThread=lambda f, *a: defer.fail(StoreError("down")), delays=()).addErrback(
        failures.append)
    assert [f.value.args[0] for f in failures] == ["down"] and store.events == []


def test_an_embedded_store_has_no_peers_to_seal(tmp_path):
    from sealgate.recording.store import SQLiteStore

    done = []
    SQLiteStore(tmp_path, "sealgate/x", task.Clock()).sealPeer("gw-2").addCallback(done.append)
    assert done == [[]]


def _peerCutEvents(url: str, node: str) -> list:
    with psycopg.connect(url) as c:
        leaves = c.execute(f"SELECT leaf FROM sealgate_rec_{node}.log WHERE type = 'event' ORDER BY n").fetchall()
    bodies = [fmt.parseLogLeaf(bytes(leaf)) for (leaf,) in leaves]
    return [b["fields"] for b in bodies if b.get("event") == "peer-cut"]


@pytest.fixture
def pair(tmp_path, postgres):
    os.environ[DB_ENV] = fleetDatabase(postgres)
    config = '\n[admin]\nauditors = ["audit"]\n'
    gws = [GatewayProcess(tmp_path / f"n{i}", fleetConfig(postgres, f"n{i}") + config) for i in (1, 2)]
    yield gws
    for gw in gws:
        gw.stop(signal.SIGKILL)


def test_a_node_killed_mid_session_is_cut_off_by_its_peer_and_every_log_verifies(pair, postgres):
    gw1, gw2 = pair
    url = os.environ[DB_ENV]
    key = gw1.cli("keys", "create", "--name", "ci-bot", "--group", "eng").stdout.strip().splitlines()[-1]
    auditor = gw1.cli("keys", "create", "--name", "audit-ann", "--group", "audit").stdout.strip().splitlines()[-1]
    for gw in pair:
        gw.start()

    def sessionsOn(gw, **filters):
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        code, body = api(gw, auditor, "GET", "/api/sessions?" + query)
        assert code == 200, body
        return [s for s in body["sessions"] if s.get("node") == "n2"]

    client = psycopg.connect(clientDSN(gw2, key), autocommit=True)
    assert client.execute("select 40 + 2").fetchone() == (42,)
    (opened,) = until(lambda: sessionsOn(gw1), 20, "node 2's session listed on node 1")
    assert opened["state"] == "open"
    gw2.stop(signal.SIGKILL)
    killedAt = time.monotonic()

    (cut,) = until(lambda: sessionsOn(gw1, state="cut%20off"), LEASE + 3, "node 2's session cut off on node 1")
    elapsed = time.monotonic() - killedAt
    print(f"\nnode 2's open session read as cut off by peer n1 {elapsed:.1f} s after kill -9 (lease {LEASE:g} s)")
    assert cut["id"] == opened["id"] and cut["reason"] == peerReason("n1", "n2"), cut
    with pytest.raises(psycopg.OperationalError):
        client.execute("select 1")
    client.close()
    # The peer's statement of the cut, sealed in its own log.
    (event,) = until(lambda: _peerCutEvents(url, "n1"), 10, "node 1's peer-cut event")
    assert (event["node"], event["session"], event["reason"]) == ("n2", opened["id"], peerReason("n1", "n2"))
    assert event["size"] >= 1 and event["checkpoint"] <= event["log_size"]
    verdicts = json.loads(gw1.cli("verify", "--json").stdout)
    assert len(verdicts) == 2 and all(v["ok"] for v in verdicts), verdicts

    # Node 2 restarts: its own log seals the CLOSE, naming the peer; every log still verifies.
    gw2.start()
    (sealed,) = until(lambda: [s for s in sessionsOn(gw1) if s["reason"] == restartReason("n1", "n2")],
                      20, "node 2's own CLOSE read on node 1")
    assert sealed["id"] == opened["id"] and sealed["state"] == "cut off"
    assert gw2.stop() == 0 and gw1.stop() == 0
    verdicts = json.loads(gw2.cli("verify", "--json").stdout)
    assert len(verdicts) == 2 and all(v["ok"] for v in verdicts), verdicts
    # A cut shown by readers is what the peer sealed: an altered row fails verify.
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE sealgate_rec_n2.peer_cuts SET by_node = 'n9'")
    tampered = gw1.cli("verify", check=False)
    assert tampered.returncode == 1, tampered.stdout
    assert "the peer_cuts table says node n9 cut it off" in tampered.stdout
    assert "node n1's log seals that it cut this session off" in tampered.stdout
    for gw in pair:
        for secret in (key, auditor, postgres.password(postgres.superuser)):
            assert secret not in gw.log()
