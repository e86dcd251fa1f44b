"""The console in a fleet (headless Chromium): a login works on every node and after a restart; a ticket held on node 1 is approved in node 2's console."""

import os
import signal

import pytest

from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import clientDSN
from tests.harness.twistd import GatewayProcess
from tests.test_console_e2e import Browser
from tests.test_fleet_ctl_e2e import DB_ENV, LEASE, Held, fleetConfig, ticketOf, until


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.quit()


def test_console_login_and_approval_across_nodes(tmp_path, postgres, browser):
    os.environ[DB_ENV] = fleetDatabase(postgres)
    gw1, gw2 = (GatewayProcess(tmp_path / f"n{i}", fleetConfig(postgres, f"n{i}")) for i in (1, 2))
    key = gw1.cli("keys", "create", "--name", "ci-bot", "--group", "eng").stdout.strip().splitlines()[-1]
    lead = gw1.cli("keys", "create", "--name", "lead-bob", "--group", "leads").stdout.strip().splitlines()[-1]
    try:
        gw1.start()
        gw2.start()
        # One login through node 2's login page (API key form).
        browser.driver.get(f"http://127.0.0.1:{gw2.adminPort}/login")
        browser.wait("#key").send_keys(lead)
        browser.wait("#key-login").click()
        browser.wait("body.ready")
        assert browser.waitText("#whoami", "apikey:lead-bob").startswith("apikey:lead-bob")

        # Node 2 restarts: the login (a cookie for 127.0.0.1) still holds there and on node 1.
        assert gw2.stop() == 0
        gw2.start()
        for gw in (gw2, gw1):
            browser.driver.get(f"http://127.0.0.1:{gw.adminPort}/console/")
            browser.wait("body.ready")
            assert browser.waitText("#whoami", "apikey:lead-bob").startswith("apikey:lead-bob")

        # Held on node 1, shown and approved in node 2's console.
        postgres.psql("REVOKE SELECT ON customers FROM PUBLIC")
        held = Held(clientDSN(gw1, key), "GRANT SELECT ON customers TO PUBLIC")
        held.start()
        ticket = until(lambda: ticketOf(gw2, lead, "n1"), 20, "node 1's ticket listed on node 2")
        browser.driver.get(f"http://127.0.0.1:{gw2.adminPort}/console/#queue")
        assert browser.waitText(f"#node-{ticket['id']}", "n1") == "n1"
        status = browser.decide(ticket["id"], "approve", "fine from node 2")
        assert "approved" in status, status
        held.join(20)
        assert held.result == (True,), held.result

        # Node 1 dies: node 2's console lists it down within the lease (3 s).
        browser.driver.get(f"http://127.0.0.1:{gw2.adminPort}/console/#nodes")
        assert browser.waitText("#node-row-n1 .state", "up") == "up"
        gw1.stop(signal.SIGKILL)
        assert browser.waitText("#node-row-n1 .state", "down", timeout=LEASE + 5) == "down"
        assert browser.waitText("#node-row-n1", "lease expired")
        assert browser.waitText("#node-row-n2 .state", "up") == "up"
    finally:
        for gw in (gw1, gw2):
            gw.stop(signal.SIGTERM)
    for gw in (gw1, gw2):
        assert lead not in gw.log() and key not in gw.log()
