"""fleetdb: the [gateway] store_env/store_file/node keys, schema steps, the runner and LISTEN."""

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from sealgate.config import ConfigError, parseConfig
from sealgate.fleetdb import FleetDB, FleetDBError, hostNode, migrate, redactURL
from tests.fleetpg import fleetDatabase


def gatewayOf(text_gateway: dict):
    return parseConfig({"gateway": text_gateway}, "/etc/sealgate.toml", {}).gateway


def test_no_store_key_keeps_the_embedded_default_and_its_node_name():
    g = gatewayOf({})
    assert g.fleet is None and g.node == "sealgate"


def test_store_env_selects_the_fleet_and_the_node_defaults_to_the_host(monkeypatch):
    monkeypatch.setenv("SG_DB", "postgresql://gw:s3cret-pw@db.example:5432/sealgate")
    g = gatewayOf({"store_env": "SG_DB"})
    assert g.fleet is not None and g.fleet.url.endswith("/sealgate")
    assert g.node == g.fleet.node == hostNode()
    assert "s3cret-pw" not in repr(g) and "s3cret-pw" not in str(g.fleet)
    assert "gw:***@db.example" in repr(g.fleet)


def test_store_file_and_an_explicit_node(tmp_path):
    f = tmp_path / "db.url"
    f.write_text("postgresql://gw:pw@127.0.0.1/fleet\n")
    g = gatewayOf({"store_file": str(f), "node": "gw-2"})
    assert g.fleet.url == "postgresql://gw:pw@127.0.0.1/fleet" and g.node == "gw-2"


@pytest.mark.parametrize("gateway, key, words", [
    ({"store_env": "A", "store_file": "/x"}, "gateway.store_env", "keep one of them"),
    ({"store_env": "SG_MISSING_VAR"}, "gateway.store_env", "is not set"),
    ({"store_file": "/nonexistent/db.url"}, "gateway.store_file", "cannot read"),
    ({"node": "Gateway_1"}, "gateway.node", "lower-case letters"),
    ({"node": "a" * 64}, "gateway.node", "1 to 63"),
])
def test_bad_keys_name_the_file_the_key_and_the_fix(monkeypatch, gateway, key, words):
    monkeypatch.delenv("SG_MISSING_VAR", raising=False)
    with pytest.raises(ConfigError) as e:
        gatewayOf(gateway)
    assert str(e.value).startswith(f"/etc/sealgate.toml: {key}:") and words in str(e.value)


@pytest.mark.parametrize("url, words", [
    ("mysql://gw:topsecret@db/x", "scheme 'mysql'"),
    ("postgresql://gw:topsecret@/x", "no host"),
    ("postgresql://gw:topsecret@db:5432/", "names no database"),
    ("postgresql://gw:topsecret@db:99999999/x", "not a valid URL"),
])
def test_a_bad_url_is_refused_without_its_password(monkeypatch, url, words):
    monkeypatch.setenv("SG_DB", url)
    with pytest.raises(ConfigError) as e:
        gatewayOf({"store_env": "SG_DB"})
    assert words in str(e.value) and "topsecret" not in str(e.value)
    assert "environment variable SG_DB" in str(e.value)


def test_redaction_hides_the_password_in_userinfo_and_parameters():
    assert redactURL("postgresql://u:p%40ss@h:1/d?sslmode=require&password=zz") == \
        "postgresql://u:***@h:1/d?sslmode=require&password=***"
    assert redactURL("postgresql://h/d") == "postgresql://h/d"


def test_schema_steps_are_idempotent_and_versioned(postgres):
    import psycopg

    url = fleetDatabase(postgres)
    steps = ["CREATE TABLE IF NOT EXISTS a (x int)", "CREATE TABLE IF NOT EXISTS b (y int)"]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        assert migrate(cur, "t", steps[:1]) == 1
        assert migrate(cur, "t", steps[:1]) == 1
        # The second step alone runs: a re-run of the first would fail on this insert's table.
        cur.execute("INSERT INTO a VALUES (1)")
        assert migrate(cur, "t", steps) == 2
        cur.execute("SELECT version FROM schema_version WHERE component = 't'")
        assert cur.fetchone() == (2,)
        cur.execute("SELECT count(*) FROM a")
        assert cur.fetchone() == (1,)


@pytest_twisted.ensureDeferred
async def test_listen_calls_back_on_the_reactor_within_a_second(postgres):
    import threading

    db = FleetDB(fleetDatabase(postgres), reactor)
    got: list = []
    threads: set = set()

    def heard(payload):
        threads.add(threading.current_thread() is threading.main_thread())
        got.append(payload)

    try:
        db.listen("sealgate_test", heard)
        await poll(lambda: None in got)
        t0 = time.monotonic()
        await db.notify("sealgate_test", "ticket-1")
        await poll(lambda: "ticket-1" in got)
        assert time.monotonic() - t0 < 1.0
        assert threads == {True}
        rows = await db.runQuery("SELECT %s::int + 1", (41,))
        assert rows == [(42,)]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_database_fails_with_the_password_taken_out(postgres):
    from tests.harness._proc import freePort

    db = FleetDB(f"postgresql://gw:hunter2-secret@127.0.0.1:{freePort()}/x", reactor)
    try:
        with pytest.raises(FleetDBError) as e:
            await db.runQuery("SELECT 1")
        assert "hunter2-secret" not in str(e.value) and "gw:***@127.0.0.1" in str(e.value)
    finally:
        db.close()


async def poll(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0.02, d.callback, None)
        await d


@pytest_twisted.ensureDeferred
async def test_closing_with_a_query_in_flight_keeps_the_reactor_running_until_it_is_answered(postgres):
    """
    The database behind a proxy that this reactor runs (as in the outage
    tests): a close while a query waits for its answer must leave the reactor
    free to relay that answer, and fire once the pool is gone.  (adbapi's own
    close joins the pool's threads on the reactor: this hung for good.)
    """
    from twisted.protocols.portforward import ProxyFactory

    port = reactor.listenTCP(0, ProxyFactory(postgres.host, postgres.port), interface="127.0.0.1")
    url = fleetDatabase(postgres).replace(f":{postgres.port}/", f":{port.getHost().port}/")
    db = FleetDB(url, reactor)
    try:
        assert await db.runQuery("SELECT 1") == [(1,)]
        inFlight = db.runQuery("SELECT pg_sleep(0.3), 7")
        await db.close()
        assert inFlight.called and inFlight.result == [("", 7)]
    finally:
        await port.stopListening()
