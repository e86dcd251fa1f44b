"""[gateway] workers = 2: one twistd, two processes sharing the listening port, each a node of the fleet."""

import os
import signal
import time

import psycopg
import pytest

from sealgate.config import ConfigError, parseConfig
from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import clientDSN, gatewayConfig
from tests.harness.twistd import GatewayProcess
from tests.test_fleet_ctl_e2e import DB_ENV, POLICY, Held, api, until


def test_workers_need_a_fleet_and_plain_tcp_listeners(monkeypatch):
    with pytest.raises(ConfigError, match="gateway.workers: workers share their state"):
        parseConfig({"gateway": {"workers": 2}}, "/etc/s.toml", {})
    monkeypatch.setenv("SG_DB", "postgresql://u:p@h/d")
    with pytest.raises(ConfigError, match="gateway.admin: 'unix:/tmp/sg.sock' cannot be shared by workers"):
        parseConfig({"gateway": {"workers": 2, "store_env": "SG_DB",
                                 "admin": "unix:/tmp/sg.sock"}}, "/etc/s.toml", {})
    with pytest.raises(ConfigError, match="whole number from 1 to 64"):
        parseConfig({"gateway": {"workers": 1.5, "store_env": "SG_DB"}}, "/etc/s.toml", {})




def test_two_workers_share_the_port_and_both_serve(tmp_path, postgres):
    os.environ[DB_ENV] = fleetDatabase(postgres)
    text = (f'[gateway]\nstate_dir = "state"\nadmin = "tcp:0:interface=127.0.0.1"\n'
            f'store_env = "{DB_ENV}"\nnode = "w"\nworkers = 2\ndrain_timeout = "2s"\n\n'
            + gatewayConfig(postgres, POLICY))
    gw = GatewayProcess(tmp_path, text)
    key = gw.cli("keys", "create", "--name", "ci-bot", "--group", "eng").stdout.strip().splitlines()[-1]
    database = os.environ[DB_ENV].rsplit("/", 1)[1]
    gw.start()
    held: list = []
    try:
        until(lambda: "Worker 1 started" in gw.log(), 20, "worker 1 started")
        until(lambda: postgres.psql("SELECT name FROM nodes WHERE state = 'up' ORDER BY name",
                                    database=database).split() == ["w-0", "w-1"],
              30, "both workers up in the fleet")
        # Connections over the one port: the kernel spreads them over both
        # processes. Each holds a statement; its ticket names the worker.
        deadline = time.monotonic() + 60
        while True:
            h = Held(clientDSN(gw, key), "GRANT SELECT ON customers TO PUBLIC")
            h.start()
            held.append(h)
            until(lambda: len(ticketsOf(gw, key)) == len(held), 20, "the statement held")
            nodes = {t["node"] for t in ticketsOf(gw, key)}
            if nodes == {"w-0", "w-1"}:
                break
            assert time.monotonic() < deadline, f"connections reached only {nodes}"
        for t in ticketsOf(gw, key):
            code, body = api(gw, key, "POST", f"/api/approvals/{t['id']}/cancel", {})
            assert code == 200 and body["state"] == "cancelled", body
        for h in held:
            h.join(10)
            assert isinstance(h.result, psycopg.Error) and "cancelled by the requester" in str(h.result)
        print(f"\n{len(held)} connections reached both workers")
        worker1 = tmp_path / "state" / "worker-1"
        assert os.readlink(worker1 / "ssh") == str(tmp_path / "state" / "ssh")
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    # Worker 0 stopped worker 1 (draining it) before it exited; both left the fleet.
    assert "Worker 1 exited" not in gw.log()
    assert postgres.psql("SELECT name, down_reason FROM nodes ORDER BY name",
                         database=database).split() == ["w-0|stopped", "w-1|stopped"]
    gw.cli("verify")


def ticketsOf(gw, key):
    code, body = api(gw, key, "GET", "/api/approvals")
    assert code == 200, body
    return body["tickets"]


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_a_worker_dies_with_worker_0_even_by_sigkill(tmp_path, postgres, when):
    import subprocess

    os.environ[DB_ENV] = fleetDatabase(postgres)
    text = (f'[gateway]\nstate_dir = "state"\nadmin = "tcp:0:interface=127.0.0.1"\n'
            f'store_env = "{DB_ENV}"\nnode = "k"\nworkers = 2\n\n' + gatewayConfig(postgres, ""))
    gw = GatewayProcess(tmp_path, text).start()
    try:
        m = until(lambda: __import__("re").search(r"Worker 1 started \(pid (\d+)\)", gw.log()), 20,
                  "worker 1 started")
        child = int(m.group(1))
        if when == "serving":
            until(lambda: "Node k-1 joined" in gw.log(), 30, "worker 1 serving")
    finally:
        gw.stop(signal.SIGKILL)

    def gone():
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone too (its parent, now init, reaps it).
        stat = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True)
        return stat.stdout.strip().startswith("Z") or not stat.stdout.strip()
    until(gone, 30, "worker 1 ended after worker 0's SIGKILL")
