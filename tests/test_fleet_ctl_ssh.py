"""SSH keys in a fleet: one binding in the database lets the real OpenSSH client in through every node."""

import os
from pathlib import Path

import pytest_twisted

from sealgate.fleet.keys import PGSSHKeyStore
from sealgate.testing import startGateway
from tests.fleetpg import fleetDatabase
from tests.test_ssh_e2e import Env, _keygen

DB_ENV = "SEALGATE_TEST_FLEET_SSH_DB"


def config(sshd, node: str) -> str:
    return f"""
[gateway]
store_env = "{DB_ENV}"
node = "{node}"
{sshd.connection()}

[[roles]]
name = "ops"
groups = ["ops"]
connections = ["web-1"]
"""


@pytest_twisted.ensureDeferred
async def test_an_ssh_key_bound_once_logs_in_on_both_nodes_until_revoked(sshd, postgres, tmp_path):
    os.environ[DB_ENV] = fleetDatabase(postgres)
    nodes = []
    try:
        for name in ("s1", "s2"):
            nodes.append(await startGateway(config(sshd, name), tmp_path / name))
        userKey = _keygen(tmp_path / "alice")
        keys = PGSSHKeyStore(os.environ[DB_ENV])
        keys.add("alice", Path(str(userKey) + ".pub").read_text(), ["ops"])
        envs = [Env(sshd, gw, tmp_path / gw.service.config.gateway.node, userKey) for gw in nodes]
        for e in envs:
            r = await e.ssh("echo hello from $((40 + 2))")
            assert r.returncode == 0 and r.stdout == b"hello from 42\n", r.stderr
        keys.revoke("alice")
        for e in envs:
            r = await e.ssh("echo still here")
            assert r.returncode != 0 and b"still here" not in r.stdout
    finally:
        for gw in nodes:
            await gw.stop()
