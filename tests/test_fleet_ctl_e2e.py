"""Three twistd gateways sharing one real PostgreSQL: one key for all, a hold released across nodes, a kill -9 noticed."""

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import psycopg
import pytest

from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import clientDSN, gatewayConfig
from tests.harness.twistd import GatewayProcess

DB_ENV = "SEALGATE_TEST_FLEET_DB"
LEASE = 3.0

POLICY = """
[[rules]]
name = "grants-need-a-lead"
action = "approve"
statements = ["GRANT"]
approvers = ["leads"]
expires = "120s"
"""


def fleetConfig(postgres, node: str) -> str:
    head = (f'[gateway]\nstate_dir = "state"\nadmin = "tcp:0:interface=127.0.0.1"\n'
            f'store_env = "{DB_ENV}"\nnode = "{node}"\nlease = "{LEASE:g}s"\n'
            'drain_timeout = "2s"\n\n')
    return head + gatewayConfig(postgres, POLICY)


def api(gw, token, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{gw.adminPort}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {token}",
                                          "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class Held(threading.Thread):
    """A psql-like client whose statement the gateway holds; it records how it ended."""

    def __init__(self, dsn: str, sql: str):
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, sql
        self.result: object = None
        self.finished: float | None = None

    def run(self):
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                c.execute(self.sql)
                self.result = c.execute("select has_table_privilege('public', 'customers', "
                                        "'select')").fetchone()
        except Exception as e:
            self.result = e
        self.finished = time.monotonic()


def ticketOf(gw, token, node: str, everything: bool = False):
    code, body = api(gw, token, "GET", "/api/approvals" + ("?all=1" if everything else ""))
    assert code == 200, body
    return next((t for t in body["tickets"] if t["node"] == node), None)


@pytest.fixture
def fleet(tmp_path, postgres):
    os.environ[DB_ENV] = fleetDatabase(postgres)
    gws = [GatewayProcess(tmp_path / f"n{i}", fleetConfig(postgres, f"n{i}")) for i in (1, 2, 3)]
    yield gws
    for gw in gws:
        gw.stop(signal.SIGKILL)


def test_three_gateways_share_keys_tickets_and_liveness(fleet, postgres):
    gw1, gw2, gw3 = fleet
    key = gw1.cli("keys", "create", "--name", "ci-bot", "--group", "eng").stdout.strip().splitlines()[-1]
    lead = gw2.cli("keys", "create", "--name", "lead-bob", "--group", "leads").stdout.strip().splitlines()[-1]
    for gw in fleet:
        gw.start()

    # One key, created through node 1's config, logs in on all three.
    for gw in fleet:
        with psycopg.connect(clientDSN(gw, key), autocommit=True) as c:
            assert c.execute("select 40 + 2").fetchone() == (42,)

    # Held on node 1, approved through node 2's admin API, completes on node 1.
    postgres.psql("REVOKE SELECT ON customers FROM PUBLIC")
    held = Held(clientDSN(gw1, key), "GRANT SELECT ON customers TO PUBLIC")
    held.start()
    ticket = until(lambda: ticketOf(gw2, lead, "n1"), 20, "node 1's ticket listed on node 2")
    assert ticket["state"] == "pending" and ticket["command"] == "GRANT SELECT ON customers TO PUBLIC"
    code, own = api(gw2, key, "POST", f"/api/approvals/{ticket['id']}/approve", {})
    assert code == 403 and "own" in own["detail"]
    approvedAt = time.monotonic()
    code, body = api(gw2, lead, "POST", f"/api/approvals/{ticket['id']}/approve", {"reason": "ok"})
    assert code == 200 and body["state"] == "approved", body
    held.join(10)
    assert held.result == (True,), held.result
    releasedIn = held.finished - approvedAt
    assert releasedIn < 3.0, releasedIn
    print(f"\nrelease on node 1 after approval on node 2: {releasedIn * 1000:.0f} ms")

    # Node 3 holds a statement, then dies by SIGKILL.
    doomed = Held(clientDSN(gw3, key), "GRANT SELECT ON customers TO PUBLIC")
    doomed.start()
    pending = until(lambda: ticketOf(gw1, lead, "n3"), 20, "node 3's ticket listed on node 1")

    def recorded():
        # Mid-session means the session is in the store: what a writer had not
        # yet committed at a kill -9 is the store's documented loss window.
        code, body = api(gw1, lead, "GET", "/api/sessions?state=open")
        return [s for s in body["sessions"] if s.get("node") == "n3"]

    until(recorded, 20, "node 3's session recorded in the fleet database")
    gw3.stop(signal.SIGKILL)
    killedAt = time.monotonic()

    def down(gw):
        code, body = api(gw, lead, "GET", "/api/nodes")
        states = {n["name"]: n["state"] for n in body["nodes"]}
        return states if states.get("n3") == "down" else None

    states = until(lambda: down(gw1), LEASE + 3, "node 3 listed down on node 1")
    assert states == {"n1": "up", "n2": "up", "n3": "down"}
    assert until(lambda: down(gw2), 2, "node 3 listed down on node 2")["n2"] == "up"
    print(f"node 3 listed down {time.monotonic() - killedAt:.1f} s after kill -9 (lease {LEASE:g} s)")

    def expired():
        t = ticketOf(gw2, lead, "n3", everything=True)
        return t if t and t["state"] == "expired" else None

    t = until(expired, LEASE + 3, "node 3's ticket expired")
    assert t["id"] == pending["id"] and t["reason"] == "node n3 down"
    code, body = api(gw1, lead, "POST", f"/api/approvals/{t['id']}/approve", {"reason": "late"})
    assert code == 409 and "already expired" in body["detail"]

    # Node 3's session (its statement was held) is cut off by whichever peer declared it down.
    def cutOff():
        code, body = api(gw1, lead, "GET", "/api/sessions?state=cut%20off")
        return [s for s in body["sessions"] if s.get("node") == "n3"]

    (cut,) = until(cutOff, LEASE + 3, "node 3's session cut off, read on node 1")
    assert re.fullmatch(r"cut off by peer n[12]: node n3 went down \(its lease ran out\)", cut["reason"]), cut
    print(f"node 3's session read as cut off by a peer {time.monotonic() - killedAt:.1f} s after kill -9")

    assert gw1.stop() == 0 and gw2.stop() == 0
    for gw in (gw1, gw2):
        gw.cli("verify")  # every node's log, n3's with its peer cut
        for secret in (key, lead, postgres.password(postgres.superuser)):
            assert secret not in gw.log()
