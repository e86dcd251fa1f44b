"""Revoked keys and expired tokens end live sessions: kept-alive HTTP, a long psql query, a long ssh command."""

import http.client
import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from sealgate.identity.apikeys import APIKeyStore
from sealgate.identity.sshkeys import SSHKeyStore
from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.test_prelogin_e2e import config as listeners


def config(postgres, sshd, http_backend, issuer, recheck="1s") -> str:
    """The listeners of the pre-login tests, re-checked every C{recheck}, no HTTP cache."""
    return listeners(postgres, sshd, http_backend, f"""
[identity]
oidc_issuer = "{issuer.issuer}"
leeway = "0s"

[limits]
recheck_interval = "{recheck}"
credential_cache = "0s"
""")


@pytest.fixture
def gateway(tmp_path, postgres, sshd, http_backend, oidc_issuer):
    g = pytest_twisted.blockon(defer.ensureDeferred(
        startGateway(config(postgres, sshd, http_backend, oidc_issuer), tmp_path)))
    yield g
    pytest_twisted.blockon(g.stop())


@pytest.fixture
def perRequest(tmp_path, postgres, sshd, http_backend, oidc_issuer):
    """The periodic pass far off: what the HTTP tests see is the per-request check alone."""
    g = pytest_twisted.blockon(defer.ensureDeferred(
        startGateway(config(postgres, sshd, http_backend, oidc_issuer, "1h"), tmp_path)))
    yield g
    pytest_twisted.blockon(g.stop())


async def until(predicate, timeout=30.0):
    """Wait (without blocking the reactor) until C{predicate()} is truthy."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.05, lambda: None)
    return value


def closeReasons(g) -> list:
    with StoreReader(g.stateDir) as r:
        return [s["reason"] for s in r.sessions()]


def get(conn: http.client.HTTPConnection, credential: str) -> tuple[int, dict]:
    conn.request("GET", "/json", headers={"Authorization": f"Bearer {credential}"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


@pytest_twisted.ensureDeferred
async def test_a_key_revoked_mid_connection_gets_401_on_the_next_kept_alive_request(perRequest):
    gateway = perRequest
    key = gateway.createKey("ci", ["eng"])
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("api"), timeout=30)
    try:
        assert (await threads.deferToThread(get, conn, key))[0] == 200
        sock = conn.sock
        APIKeyStore(gateway.stateDir / "identity.sqlite").revoke("ci")
        status, body = await threads.deferToThread(get, conn, key)
        assert conn.sock is sock  # the same kept-alive connection
        assert status == 401 and body["detail"] == "API key revoked"
    finally:
        conn.close()
    assert await until(lambda: "credential revoked" in closeReasons(gateway))


@pytest_twisted.ensureDeferred
async def test_a_token_that_expires_mid_connection_gets_401_on_the_next_request(perRequest,
                                                                                oidc_issuer):
    gateway = perRequest
    expires = int(time.time()) + 2
    token = oidc_issuer.mint(sub="alice", groups=["eng"], exp=expires)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("api"), timeout=30)
    try:
        assert (await threads.deferToThread(get, conn, token))[0] == 200
        await until(lambda: time.time() > expires + 0.5)
        status, body = await threads.deferToThread(get, conn, token)
        assert status == 401 and body["detail"] == "token has expired"
    finally:
        conn.close()
    assert await until(lambda: "credential expired" in closeReasons(gateway))


@pytest_twisted.ensureDeferred
async def test_a_long_postgres_query_is_ended_with_28000_when_its_key_is_revoked(gateway):
    key = gateway.createKey("ci", ["eng"])
    dsn = (f"host=127.0.0.1 port={gateway.port('app')} dbname=app user=ci password={key} "
           "sslmode=disable connect_timeout=10")

    def longQuery():
        start = time.monotonic()
        with psycopg.connect(dsn) as c:
            try:
                c.execute("select pg_sleep(60)")
            except psycopg.OperationalError as e:
                return str(e), getattr(e.diag, "sqlstate", None), time.monotonic() - start
        return "finished", None, time.monotonic() - start

    running = threads.deferToThread(longQuery)
    await until(lambda: gateway.gateway.sessions)
    APIKeyStore(gateway.stateDir / "identity.sqlite").revoke("ci")
    message, code, took = await running
    assert "sealgate: your API key was revoked" in message and code == "28000"
    assert took < 30
    assert await until(lambda: "credential revoked" in closeReasons(gateway))


@pytest_twisted.ensureDeferred
async def test_a_long_ssh_command_is_disconnected_when_its_ssh_key_is_revoked(gateway, tmp_path):
    key = tmp_path / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    keys = SSHKeyStore.forStateDir(gateway.stateDir)
    keys.add("alice", Path(f"{key}.pub").read_text(), ["eng"])
    argv = ["ssh", "-F", "/dev/null", "-p", str(gateway.port("web-1")), "-i", str(key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "web-1@127.0.0.1", "sleep 60"]
    start = time.monotonic()
    running = threads.deferToThread(subprocess.run, argv, capture_output=True, text=True,
                                    timeout=90, stdin=subprocess.DEVNULL)
    await until(lambda: gateway.gateway.sessions)
    keys.revoke("alice")
    r = await running
    assert r.returncode == 255 and "sealgate: your SSH key was revoked" in r.stderr
    assert time.monotonic() - start < 40
    assert await until(lambda: "credential revoked" in closeReasons(gateway))
