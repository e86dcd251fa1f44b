"""API keys and SSH keys in the fleet database: the same rules as identity.sqlite, shared by every node."""

import pytest
from twisted.conch.ssh import keys as conchkeys
from zope.interface.verify import verifyObject

from sealgate.fleet.interfaces import IAPIKeyStore, ISSHKeyStore
from sealgate.fleet.keys import PGAPIKeyStore, PGSSHKeyStore
from sealgate.identity import AuthenticationFailed
from sealgate.identity.apikeys import APIKeyError, APIKeyStore
from sealgate.identity.sshkeys import SSHKeyStore
from tests.fleetpg import fleetDatabase


@pytest.fixture
def url(postgres):
    return fleetDatabase(postgres)


def test_both_backends_provide_the_interfaces(tmp_path, url):
    verifyObject(IAPIKeyStore, APIKeyStore(tmp_path / "identity.sqlite"))
    verifyObject(IAPIKeyStore, PGAPIKeyStore(url))
    verifyObject(ISSHKeyStore, SSHKeyStore(tmp_path / "identity.sqlite"))
    verifyObject(ISSHKeyStore, PGSSHKeyStore(url))


def test_a_key_made_through_one_store_verifies_through_another_until_revoked(url):
    made, other = PGAPIKeyStore(url), PGAPIKeyStore(url)
    key = made.create("ci-bot", ["eng"], 3600)
    who = other.verify(key)
    assert who.id == "apikey:ci-bot" and who.groups == {"eng"}
    assert other.status(who.credential) == "active"
    with pytest.raises(APIKeyError, match="an active key named 'ci-bot' exists"):
        other.create("ci-bot", ["eng"])
    with pytest.raises(AuthenticationFailed, match="unknown API key"):
        other.verify(key[:-2] + ("AA" if not key.endswith("AA") else "BB"))
    assert made.revoke("ci-bot") == 1
    with pytest.raises(AuthenticationFailed, match="revoked"):
        other.verify(key)
    assert [k.status(0) for k in other.list()] == ["revoked"]
    assert "sgk_" not in repr(other.list()) and "password" not in repr(other)


def test_ssh_keys_bind_fleet_wide(url):
    key = conchkeys.Key.fromString(
        conchkeys.Key(__import__("cryptography.hazmat.primitives.asymmetric.ed25519",
                                 fromlist=["x"]).Ed25519PrivateKey.generate())
        .public().toString("openssh"))
    a, b = PGSSHKeyStore(url), PGSSHKeyStore(url)
    rec = a.add("alice", key.toString("openssh") + b" laptop", groups=["eng"])
    found = b.lookup(key.blob())
    assert found is not None and found.identity == "alice" and found.comment == "laptop"
    assert b.status(rec.fingerprint) == "active"
    # Re-binding to the same identity replaces the row; to another is refused.
    a.add("alice", key.toString("openssh"), groups=["ops"])
    assert b.lookup(key.blob()).groups == ("ops",)
    assert [r.fingerprint for r in b.revoke("alice")] == [rec.fingerprint]
    assert a.status(rec.fingerprint) == "revoked"


def test_a_node_off_its_fleet_database_refuses_new_logins(url):
    from sealgate.config import IdentityConfig
    from sealgate.fleetdb import FleetConfig
    from sealgate.identity.service import IdentityService

    key = PGAPIKeyStore(url).create("ci-bot", ["eng"])
    service = IdentityService(IdentityConfig(), "/nonexistent", reactor=object(),
                              fleet=FleetConfig(url, "n1"))
    service.fleetUp = lambda: False
    failures: list = []
    service.authenticate(key).addErrback(failures.append)
    assert failures[0].check(AuthenticationFailed)
    assert "cannot reach its fleet database" in failures[0].value.reason
    service.fleetUp = lambda: True
    # Back: the key checks again (in the thread pool, so only started here).
    assert service.keys.verify(key).id == "apikey:ci-bot"


def test_the_cli_reports_an_unreachable_fleet_database_in_one_line_without_the_password(tmp_path):
    from tests.harness._proc import freePort
    from tests.harness.twistd import environment, runCLI

    conf = tmp_path / "s.toml"
    conf.write_text('[gateway]\nstore_env = "SG_CLI_DB"\nnode = "gw-1"\n')
    env = dict(environment(), SG_CLI_DB=f"postgresql://gw:t0psecret@127.0.0.1:{freePort()}/fleet")
    r = runCLI("--config", str(conf), "keys", "list", env=env, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot connect to the fleet database postgresql://gw:***@127.0.0.1" in r.stderr
    assert "t0psecret" not in r.stderr + r.stdout
