"""The PostgreSQL proxy end to end: real gateway in-process, real PostgreSQL, psql, psycopg, pgbench."""

import os
import subprocess

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import globalLogPublisher

from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.harness.postgres import MD5_USER, SCRAM_USER, TRUST_USER

_ENV = "SEALGATE_TEST_PG_PASSWORD"


def _config(postgres, user=SCRAM_USER, options: str = "", extra: str = "", name="app") -> str:
    return f"""
[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "{name}"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={postgres.port}"
[connections.options]
database = "app"
username = "{user}"
{'password_env = "' + _ENV + '"' if postgres.password(user) else ''}
allow_cleartext_on_loopback = true
{options}

[[rules]]
name = "no-drop"
action = "deny"
statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE"]
reason = "dropping tables is not allowed"

[[rules]]
name = "grants-need-a-lead"
action = "approve"
statements = ["GRANT"]
approvers = ["leads"]
expires = "60s"

[[rules]]
name = "revokes-expire"
action = "approve"
statements = ["REVOKE"]
approvers = ["leads"]
expires = "1s"
{extra}
"""


@pytest.fixture
def logs():
    from twisted.logger import formatEvent

    seen: list[str] = []

    def observer(event):
        seen.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


async def _start(tmp_path, postgres, user=SCRAM_USER, **kw):
    if postgres.password(user):
        os.environ[_ENV] = postgres.password(user)
    g = await startGateway(_config(postgres, user, **kw), tmp_path)
    return g, g.createKey("ci-bot", ["eng"])


def _dsn(g, key, conn="app", **extra):
    parts = dict(host="127.0.0.1", port=g.port(conn), user="ci-bot", dbname=conn,
                 password=key, sslmode="disable", connect_timeout="10")
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _run(argv, env=None, input=None, timeout=60):
    return threads.deferToThread(subprocess.run, argv, capture_output=True, text=True,
                                 env=env, input=input, timeout=timeout)


async def _psql(postgres, g, key, sql, conn="app", extra=()):
    env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    argv = [postgres._bin("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(g.port(conn)),
            "-U", "ci-bot", "-d", conn, *extra, "-c", sql]
    return await _run(argv, env)


def _sessions(g):
    with StoreReader(g.stateDir) as reader:
        return [(s, list(reader.frames(s["id"])), list(reader.events(s["id"])))
                for s in reader.sessions() if s["info"].get("protocol") == "postgres"]


@pytest_twisted.ensureDeferred
async def test_psql_runs_queries_through_the_gateway(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        r = await _psql(postgres, g, key, "select current_user, current_setting('application_name')")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"{SCRAM_USER}|sealgate:ci-bot (psql)"
    finally:
        await g.stop()
