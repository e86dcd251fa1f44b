"""Calls of user-defined functions judged by their bodies, read from the server's catalog."""

import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, threads

from sealgate.protocols.postgres.catalog import FunctionCatalog, mayRedefineFunctions
from sealgate.protocols.postgres.classify import HIGH_RISK, classify
from sealgate.testing import startGateway
from tests.harness.pggateway import clientDSN, gatewayConfig
from tests.harness.postgres import SCRAM_USER

_ROWS = [
    ("ok_fn", "CREATE FUNCTION public.ok_fn() RETURNS integer LANGUAGE sql AS $f$SELECT 1$f$"),
    ("bad_fn", "CREATE FUNCTION public.bad_fn() RETURNS integer LANGUAGE plpgsql AS "
               "$f$BEGIN DELETE FROM t; RETURN 1; END$f$"),
    ("dyn_fn", "CREATE FUNCTION public.dyn_fn() RETURNS void LANGUAGE plpgsql AS "
               "$f$BEGIN EXECUTE 'x'; END$f$"),
    ("lower", "CREATE FUNCTION public.lower(integer) RETURNS integer LANGUAGE sql AS "
              "$f$DELETE FROM t RETURNING 1$f$"),
    ("agg", None),
]


def _loaded() -> FunctionCatalog:
    c = FunctionCatalog()
    c.load(_ROWS)
    return c


def test_a_call_is_judged_by_the_body_of_the_function_it_names():
    cat = _loaded()
    ok = cat.refine(classify("SELECT ok_fn()"))
    assert ok.statements == ("SELECT",) and ok.effects == ("runs-server-code",)
    bad = cat.refine(classify("SELECT x FROM u WHERE bad_fn() > 0"))
    assert "DELETE WITHOUT WHERE" in bad.statements and HIGH_RISK not in bad.statements
    assert HIGH_RISK in cat.refine(classify("SELECT dyn_fn()")).statements
    assert HIGH_RISK in cat.refine(classify("SELECT agg(x) FROM u")).statements
    assert HIGH_RISK in cat.refine(classify("SELECT nowhere_fn()")).statements
    assert HIGH_RISK in cat.refine(classify("CALL ok_fn()")).statements  # CALL is risky itself


def test_a_user_function_sharing_a_builtin_name_is_judged_too():
    cat = _loaded()
    assert "DELETE WITHOUT WHERE" in cat.refine(classify("SELECT lower(1)")).statements
    assert cat.refine(classify("SELECT pg_catalog.lower('A')")).statements == ("SELECT",)
    assert cat.refine(classify("SELECT upper('a')")).statements == ("SELECT",)


def test_a_shared_builtin_name_stays_suspect_while_the_catalog_is_read_again():
    cat = _loaded()
    cat.invalidate()
    assert HIGH_RISK in cat.refine(classify("SELECT lower(1)")).statements
    assert cat.refine(classify("SELECT upper('a')")).statements == ("SELECT",)


def test_other_risk_is_never_lifted_by_a_benign_body():
    cat = _loaded()
    c = cat.refine(classify("SELECT ok_fn(); COPY t TO PROGRAM 'sh'"))
    assert HIGH_RISK in c.statements


def test_until_read_and_after_invalidation_calls_stay_high_risk():
    reads: list[defer.Deferred] = []
    cat = FunctionCatalog(lambda: reads.append(defer.Deferred()) or reads[-1], lambda: 0.0)
    assert HIGH_RISK in cat.refine(classify("SELECT ok_fn()")).statements
    cat.ensure()
    cat.ensure()
    assert len(reads) == 1, "one read at a time"
    reads[0].callback(_ROWS)
    assert HIGH_RISK not in cat.refine(classify("SELECT ok_fn()")).statements
    cat.ensure()
    assert len(reads) == 1, "a fresh snapshot is not read again"
    cat.ensure()
    cat.invalidate()
    assert HIGH_RISK in cat.refine(classify("SELECT ok_fn()")).statements
    cat.ensure()
    assert len(reads) == 2
    # A read that began before an invalidation does not count.
    cat.invalidate()
    reads[1].callback(_ROWS)
    assert HIGH_RISK in cat.refine(classify("SELECT ok_fn()")).statements
    cat.ensure()
    reads[2].callback(_ROWS)
    assert HIGH_RISK not in cat.refine(classify("SELECT ok_fn()")).statements


@pytest.mark.parametrize("sql, redefines", [
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", True),
    ("DROP FUNCTION f", True), ("ALTER FUNCTION f() RENAME TO g", True),
    ("ALTER FUNCTION f() SET SCHEMA s", True), ("DROP SCHEMA s CASCADE", True),
    ("CREATE EXTENSION hstore", True), ("DROP OWNED BY bob", True),
    ("DO $$BEGIN EXECUTE 'CREATE FUNCTION g() ...'; END$$", True),
    ("CREATE TABLE t (a int)", False), ("CREATE INDEX ON t (a)", False), ("SELECT 1", False),
])
def test_statements_that_may_change_a_function_are_told_apart(sql, redefines):
    assert mayRedefineFunctions(classify(sql)) is redefines


_PLANT = """
DROP TABLE IF EXISTS cat_victim CASCADE;
CREATE TABLE cat_victim (id int);
INSERT INTO cat_victim VALUES (1), (2);
CREATE OR REPLACE FUNCTION cat_ok() RETURNS int LANGUAGE sql AS 'SELECT 7';
CREATE OR REPLACE FUNCTION cat_bad() RETURNS int LANGUAGE sql AS 'DELETE FROM cat_victim RETURNING 1';
CREATE OR REPLACE FUNCTION public.lower(int) RETURNS int LANGUAGE sql
  AS 'DELETE FROM cat_victim RETURNING 1';
"""


def _until(fn, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except psycopg.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise AssertionError(f"still denied after {timeout}s: {what}")
            time.sleep(0.05)  # poll interval: the wait is on the catalog being read


@pytest_twisted.ensureDeferred
async def test_calls_through_a_real_gateway_are_judged_by_the_catalog(tmp_path, postgres):
    with psycopg.connect(postgres.dsn(SCRAM_USER), autocommit=True) as c:
        c.execute(_PLANT)
    g = await startGateway(gatewayConfig(postgres, """
[[rules]]
name = "issue-13"
action = "deny"
statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE", "ALTER", "HIGH RISK"]
"""), tmp_path)
    key = g.createKey("ci-bot", ["eng"])
    dsn = clientDSN(g, key)
    try:
        def go():
            out = {}
            with psycopg.connect(dsn, autocommit=True) as c:
                out["ok"] = _until(lambda: c.execute("SELECT cat_ok()").fetchone(), "cat_ok()")
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute("SELECT cat_bad()")
                out["bad"] = str(e.value)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute("SELECT lower(1)")
                # Replaced through the gateway: read again once committed.
                c.execute("CREATE OR REPLACE FUNCTION cat_ok() RETURNS int LANGUAGE sql AS 'SELECT 8'")
                out["new"] = _until(lambda: c.execute("SELECT cat_ok()").fetchone(), "new cat_ok()")
            with psycopg.connect(postgres.dsn(SCRAM_USER), autocommit=True) as c:
                out["rows"] = c.execute("SELECT count(*) FROM cat_victim").fetchone()
                c.execute("DROP FUNCTION public.lower(int)")
            return out
        out = await threads.deferToThread(go)
    finally:
        await g.stop()
    assert out["ok"] == (7,) and out["new"] == (8,)
    assert "issue-13" in out["bad"]
    assert out["rows"] == (2,)
