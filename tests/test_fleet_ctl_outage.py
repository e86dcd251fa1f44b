"""The fleet database goes away under a running node: new logins refused, /readyz 503, a held command denied."""

import os

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import threads

from sealgate.approvals import ApprovalError
from sealgate.fleet.keys import PGAPIKeyStore
from sealgate.identity import Identity
from sealgate.testing import startGateway
from tests.fleetpg import fleetDatabase
from tests.harness.pggateway import clientDSN, gatewayConfig
from tests.harness.postgres import PostgresServer
from tests.test_fleet_ctl_db import poll

DB_ENV = "SEALGATE_TEST_FLEET_OUTAGE_DB"
POLICY = """
[[rules]]
name = "grants-wait"
action = "approve"
statements = ["GRANT"]
approvers = ["leads"]
expires = "3s"
"""


def connect(dsn):
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            return c.execute("SELECT 1").fetchone()
    except psycopg.Error as e:
        return e


@pytest_twisted.ensureDeferred
async def test_a_node_off_its_database_refuses_new_sessions_and_denies_what_it_holds(
        tmp_path, postgres, logs):
    fleetPG = PostgresServer().start()
    gw = None
    try:
        os.environ[DB_ENV] = fleetDatabase(fleetPG)
        text = (f'[gateway]\nstore_env = "{DB_ENV}"\nnode = "o1"\nlease = "1.5s"\n\n'
                + gatewayConfig(postgres, POLICY))
        postgres.psql("REVOKE SELECT ON customers FROM PUBLIC")
        gw = await startGateway(text, tmp_path)
        key = PGAPIKeyStore(os.environ[DB_ENV]).create("ci-bot", ["eng"])
        assert await threads.deferToThread(connect, clientDSN(gw, key)) == (1,)
        held = threads.deferToThread(lambda: _run(clientDSN(gw, key), "GRANT SELECT ON customers TO PUBLIC"))
        await poll(lambda: gw.gateway.approvals.pending())
        ticket = gw.gateway.approvals.pending()[0]

        await threads.deferToThread(fleetPG.stop)
        lease = gw.service.fleet.lease
        # The next renewal (every lease / 3 = 0.5 s) fails.
        await poll(lambda: not lease.renewed, timeout=10)

        refused = await threads.deferToThread(connect, clientDSN(gw, key))
        assert isinstance(refused, psycopg.Error), refused
        response = await treq.get(f"http://127.0.0.1:{gw.adminPort}/readyz")
        body = await response.json()
        # This node's lease, or (with the fleet's recording store) its store, says why.
        assert response.code == 503 and "fleet database" in body["reason"], body
        with pytest.raises(ApprovalError) as e:
            await gw.gateway.approvals.decide(ticket.id, Identity("bob", {"leads"}), "approve")
        assert e.value.status == 503
        # Undecidable: the held GRANT never runs. It is denied when its ticket expires
        # (or, with the fleet's recording store, its session closes as the store fails first).
        outcome = await held
        assert isinstance(outcome, psycopg.Error), outcome
        assert ticket.state in ("expired", "cancelled"), ticket.state
        granted = postgres.psql("SELECT has_table_privilege('public', 'customers', 'select')")
        assert granted.strip() == "f"
    finally:
        if gw is not None:
            await gw.stop()
        fleetPG.stop()
    password = fleetPG.password(fleetPG.superuser)
    assert logs and not [line for line in logs if password in line]


def _run(dsn, sql):
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql)
            return "ran"
    except psycopg.Error as e:
        return e

