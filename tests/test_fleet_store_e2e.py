"""Two twistd gateways recording into one fleet database: psql through each, the fleet in one list, verify."""

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import gatewayConfig
from tests.harness.twistd import GatewayProcess

URL_ENV = "SEALGATE_TEST_FLEET_URL"


def _config(postgres, directory, node) -> str:
    return (f'[gateway]\nstore_env = "{URL_ENV}"\nnode = "{node}"\nstate_dir = "{directory / "state"}"\n'
            'admin = "tcp:0:interface=127.0.0.1"\ncheckpoint_interval = "200ms"\n\n'
            '[admin]\nauditors = ["audit"]\n\n' + gatewayConfig(postgres, ""))


def _psql(postgres, gw, user, key, sql):
    env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return subprocess.run([postgres.binary("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(gw.port("app")),
                           "-U", user, "-d", "app", "-c", sql], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def fleet(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv(URL_ENV, fleetDatabase(postgres))
    gateways = {}
    for node in ("gw-1", "gw-2"):
        gw = GatewayProcess(tmp_path / node, _config(postgres, tmp_path / node, node))
        gateways[node] = gw
    yield gateways
    for gw in gateways.values():
        gw.stop()


def test_sessions_of_both_nodes_are_listed_on_either_and_every_log_verifies(fleet, postgres):
    keys = {}
    for node, gw in fleet.items():
        # A name per node: with fleet-wide keys both exist everywhere, with local ones each where it is used.
        keys[node] = gw.cli("keys", "create", "--name", f"ci-{node}", "--group", "eng").stdout.strip().splitlines()[-1]
        keys[node + "-audit"] = gw.cli("keys", "create", "--name", f"audit-{node}", "--group", "audit"
                                       ).stdout.strip().splitlines()[-1]
        gw.start()
    for node, gw in fleet.items():
        r = _psql(postgres, gw, f"ci-{node}", keys[node], f"SELECT 'through {node}', name FROM customers WHERE id = 1")
        assert r.returncode == 0 and f"through {node}|Ada Lovelace" in r.stdout, r.stderr

    gw1 = fleet["gw-1"]
    request = urllib.request.Request(f"http://127.0.0.1:{gw1.adminPort}/api/sessions",
                                     headers={"authorization": f"Bearer {keys['gw-1-audit']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        listed = json.loads(response.read())
    sessions = listed["sessions"] if isinstance(listed, dict) else listed
    assert sorted(s["node"] for s in sessions) == ["gw-1", "gw-2"]
    assert all(s["state"] == "closed" for s in sessions)

    # Each node's log, through any node's API: the checkpoint of gw-2's own log, signed with gw-2's key.
    def log(path):
        req = urllib.request.Request(f"http://127.0.0.1:{gw1.adminPort}/api/log/{path}",
                                     headers={"authorization": f"Bearer {keys['gw-1-audit']}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    status, other = log("checkpoint?node=gw-2")
    assert status == 200 and other["origin"] == "sealgate/gw-2" and other["note"].startswith("sealgate/gw-2\n")
    assert log("checkpoint")[1]["origin"] == "sealgate/gw-1"
    assert log(f"inclusion?node=gw-2&index=0&size={other['size']}")[0] == 200
    assert log("checkpoint?node=gw-9")[0] == 404

    # The CLI reads the fleet too: the transcript of gw-2's session, read through gw-1's config.
    other = next(s["id"] for s in sessions if s["node"] == "gw-2")
    shown = gw1.cli("sessions", "show", other, "--json")
    assert "through gw-2" in shown.stdout

    for gw in fleet.values():
        assert gw.stop() == 0
    out = gw1.cli("verify", "--checkpoint-dir", "none").stdout
    assert "OK: fleet database, node gw-1: 1 session(s)" in out
    assert "OK: fleet database, node gw-2: 1 session(s)" in out
    one = gw1.cli("verify", "--node", "gw-2", "--checkpoint-dir", "none").stdout
    assert "node gw-2" in one and "node gw-1" not in one
    # Redaction with the gateway stopped: the node's own log in the database, its proofs still valid.
    own = next(s["id"] for s in sessions if s["node"] == "gw-1")
    gw1.cli("redact", own, "--frame", "0", "--reason", "test", "--by", "auditor")
    out = gw1.cli("verify", "--node", "gw-1", "--checkpoint-dir", "none").stdout
    assert "OK: fleet database, node gw-1" in out and "1 redacted" in out
    for gw in fleet.values():
        assert not (gw.directory / "state" / "recordings.sqlite").exists()
        for secret in keys.values():
            assert secret not in gw.log()
        assert postgres.password(postgres.superuser) not in gw.log()
