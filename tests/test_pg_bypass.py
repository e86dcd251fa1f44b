"""Attempts to destroy or move a table past the SQL guardrails, through a real gateway and a real PostgreSQL."""

import os
import socket

import attrs
import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, threads

from sealgate.protocols.postgres import _wire as w
from sealgate.testing import startGateway
from tests.harness.postgres import SCRAM_USER

_ENV = "SEALGATE_TEST_PG_PASSWORD"
_DB = "bypass"

_CONFIG = f"""
[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "words"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={{port}}"
[connections.options]
database = "{_DB}"
username = "{SCRAM_USER}"
password_env = "{_ENV}"
allow_cleartext_on_loopback = true

[[connections]]
name = "preset"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={{port}}"
[connections.options]
database = "{_DB}"
username = "{SCRAM_USER}"
password_env = "{_ENV}"
allow_cleartext_on_loopback = true

[[rules]]
name = "issue-13"
connections = ["words"]
action = "deny"
statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE", "ALTER", "HIGH RISK"]

[[rules]]
name = "safe"
connections = ["preset"]
action = "deny"
preset = "production-safe"
"""

#: The table every attempt tries to destroy, and the code an attacker is
#: assumed to have planted beforehand by other means.
_RESET = """
DROP TABLE IF EXISTS victim, gone, victim_copy, made CASCADE;
DROP SCHEMA IF EXISTS elsewhere CASCADE;
DROP FUNCTION IF EXISTS f_del, f_dyn, f_pl, f_ok, lower(int) CASCADE;
DROP PROCEDURE IF EXISTS p_del CASCADE;
CREATE SCHEMA elsewhere;
CREATE TABLE victim (id int PRIMARY KEY, v text);
INSERT INTO victim VALUES (1, 'a'), (2, 'b'), (3, 'c');
CREATE OR REPLACE FUNCTION evil() RETURNS int LANGUAGE sql AS 'DELETE FROM victim RETURNING 1';
CREATE OR REPLACE PROCEDURE evilproc() LANGUAGE sql AS 'DELETE FROM victim';
CREATE OR REPLACE FUNCTION trig_del() RETURNS trigger LANGUAGE plpgsql
  AS $$BEGIN DELETE FROM victim WHERE id <= 3; RETURN NULL; END$$;
CREATE OR REPLACE FUNCTION public.lower(text) RETURNS text LANGUAGE plpgsql
  AS $$BEGIN DELETE FROM victim; RETURN 'x'; END$$;
"""
_ROWS = [(1, "a"), (2, "b"), (3, "c")]
_HIDE = "SELECT 'a\\''; DROP TABLE victim; --'"
_SCS_OFF = "SET standard_conforming_strings = off"
#: One statement (for the extended protocol) that deletes every row when
#: backslash escapes and reads as a harmless SELECT of a string when not.
_HIDE_ONE = ("WITH x AS (SELECT 'a\\''), d AS (DELETE FROM victim RETURNING 1) SELECT 1 "
             "/*') SELECT 2 -- */")


@attrs.frozen
class Case:
    """
    One attempt: its steps run in order on one session (a step is SQL, or
    (SQL, params) for the extended protocol).  C{mode}: how they are sent.
    """

    id: str
    steps: tuple
    mode: str = "simple"
    only: str | None = None


def _c(id, *steps, mode="simple", only=None) -> Case:
    return Case(id, steps, mode, only)


CASES = [
    # quoting, comments, case
    _c("drop", "DROP TABLE victim"),
    _c("drop-case", "dRoP tAbLe ViCtIm"),
    _c("drop-comments", "/* x */ DROP /* y */ TABLE victim"),
    _c("drop-line-comment", "-- hi\nDROP TABLE victim"),
    _c("drop-quoted", 'DROP TABLE "victim"'),
    _c("drop-qualified", "DROP TABLE public.victim"),
    _c("drop-if-exists", "DROP TABLE IF EXISTS victim CASCADE"),
    _c("drop-schema", "DROP SCHEMA public CASCADE"),
    _c("drop-owned", "DROP OWNED BY CURRENT_USER"),
    _c("drop-owned-cascade", "DROP OWNED BY CURRENT_USER CASCADE"),
    _c("truncate", "TRUNCATE victim"),
    _c("truncate-only", "TRUNCATE TABLE ONLY victim RESTART IDENTITY CASCADE"),
    _c("delete", "DELETE FROM victim"),
    _c("delete-only-alias", "DELETE FROM ONLY victim AS v"),
    _c("delete-true", "DELETE FROM victim WHERE true"),
    _c("delete-1=1", "DELETE FROM victim WHERE 1=1"),
    _c("delete-strings-equal", "DELETE FROM victim WHERE 'a' = 'a'"),
    _c("delete-id=id", "DELETE FROM victim WHERE id = id"),
    _c("delete-or-true", "DELETE FROM victim WHERE id > 100 OR true"),
    _c("delete-not-null", "DELETE FROM victim WHERE id IS NOT NULL"),
    _c("delete-not-false", "DELETE FROM victim WHERE NOT false"),
    _c("delete-subquery-true", "DELETE FROM victim WHERE (SELECT true)"),
    _c("delete-coalesce", "delete from victim where coalesce(null, true)"),
    _c("delete-using", "DELETE FROM victim USING (SELECT 1) s"),
    _c("delete-is-true", "DELETE FROM victim WHERE (1 < 2) IS TRUE"),
    # multi-statement strings
    _c("multi-drop", "SELECT 1; DROP TABLE victim"),
    _c("multi-nospace", "SELECT 1;DROP TABLE victim;SELECT 2"),
    _c("multi-transaction", "BEGIN; DELETE FROM victim; COMMIT"),
    _c("multi-string-semicolon", "SELECT 'a;'; DROP TABLE victim"),
    _c("multi-doubled-quote", "SELECT 'it''s'; DROP TABLE victim"),
    _c("multi-dollar", "SELECT $$;$$; TRUNCATE victim"),
    _c("multi-dollar-tag", "SELECT $a$ $$ $a$; DROP TABLE victim"),
    _c("multi-nested-comment", "SELECT 1 /* a /* b */ */; DROP TABLE victim"),
    _c("multi-comment-newline", "SELECT 1 -- x\n; DROP TABLE victim"),
    _c("multi-e-string", "SELECT E'\\''; DROP TABLE victim; --'"),
    _c("multi-unicode-escape", "SELECT U&'\\0027'; DROP TABLE victim"),
    _c("multi-quoted-ident", 'SELECT 1 AS "x;"; DROP TABLE victim'),
    _c("multi-select-into", "SELECT * INTO victim_copy FROM victim; DROP TABLE victim"),
    _c("multi-ctas", "CREATE TABLE made AS SELECT 1; DROP TABLE victim"),
    # CTEs
    _c("cte-delete", "WITH d AS (DELETE FROM victim RETURNING *) SELECT count(*) FROM d"),
    _c("cte-second", "WITH a AS (SELECT 1), d AS (DELETE FROM victim WHERE true RETURNING 1) "
       "SELECT * FROM a"),
    _c("cte-insert-select", "WITH d AS (DELETE FROM victim RETURNING id) INSERT INTO made "
       "SELECT id FROM d", only="words"),
    # EXPLAIN forms
    _c("explain-analyze", "EXPLAIN ANALYZE DELETE FROM victim"),
    _c("explain-analyze-paren", "EXPLAIN (ANALYZE) DELETE FROM victim"),
    _c("explain-analyze-true", "EXPLAIN (ANALYZE true) DELETE FROM victim"),
    _c("explain-analyze-on-string", "EXPLAIN (ANALYZE 'on') DELETE FROM victim"),
    _c("explain-analyze-1", "EXPLAIN (ANALYZE 1) DELETE FROM victim"),
    _c("explain-analyze-last-wins", "EXPLAIN (ANALYZE off, ANALYZE on) DELETE FROM victim"),
    _c("explain-analyze-json", "EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM victim WHERE true"),
    _c("explain-cache-primed", "EXPLAIN (ANALYZE 'off') DELETE FROM victim",
       "EXPLAIN (ANALYZE 'on') DELETE FROM victim"),
    _c("explain-cache-primed-int", "EXPLAIN (ANALYZE 0) DELETE FROM victim",
       "EXPLAIN (ANALYZE 1) DELETE FROM victim"),
    # prepared statements
    _c("prepare-delete", "PREPARE p1 AS DELETE FROM victim", "EXECUTE p1"),
    _c("prepare-swap", "PREPARE p2 AS SELECT 1", "DEALLOCATE p2",
       "PREPARE p2 AS DELETE FROM victim", "EXECUTE p2"),
    _c("prepare-explain-execute", "PREPARE p3 AS TRUNCATE victim", "EXPLAIN ANALYZE EXECUTE p3"),
    _c("execute-unknown", "EXECUTE nosuch"),
    _c("prepare-param-where", "PREPARE p4(bool) AS DELETE FROM victim WHERE $1", "EXECUTE p4(true)"),
    # extended protocol
    _c("extended-param-where", ("DELETE FROM victim WHERE %s", (True,))),
    _c("extended-param-and", ("DELETE FROM victim WHERE id = id AND %s", (True,))),
    _c("extended-drop", ("DROP TABLE victim", ())),
    _c("extended-prepared", "DROP TABLE victim", mode="prepare"),
    _c("extended-prepared-truncate", "TRUNCATE victim", mode="prepare"),
    _c("extended-cte", ("WITH d AS (DELETE FROM victim RETURNING %s::int) SELECT * FROM d", (1,))),
    # pipeline mode
    _c("pipeline-drop", "SELECT 1", "DROP TABLE victim", mode="pipeline"),
    _c("pipeline-param", ("DELETE FROM victim WHERE %s", (True,)), mode="pipeline"),
    _c("pipeline-scs-off", _SCS_OFF, (_HIDE_ONE, ()), mode="pipeline"),
    _c("pipeline-truncate-last", "SELECT 1", "SELECT 2", "TRUNCATE victim", mode="pipeline"),
    # functions and procedures
    _c("function-planted", "SELECT evil()"),
    _c("function-from", "SELECT * FROM evil()"),
    _c("function-qualified", "SELECT public.evil()"),
    _c("function-in-where", "SELECT count(*) FROM victim WHERE evil() IS NULL"),
    _c("function-values", "VALUES (evil())"),
    _c("function-in-view", "CREATE VIEW vv AS SELECT evil()", "SELECT * FROM vv"),
    _c("procedure-planted", "CALL evilproc()"),
    _c("function-sql-body", "CREATE FUNCTION f_del() RETURNS void LANGUAGE sql AS "
       "'DELETE FROM victim'", "SELECT f_del()"),
    _c("function-plpgsql-body", "CREATE FUNCTION f_pl() RETURNS void LANGUAGE plpgsql AS "
       "$$BEGIN TRUNCATE victim; END$$", "SELECT f_pl()"),
    _c("function-dynamic", "CREATE FUNCTION f_dyn() RETURNS void LANGUAGE plpgsql AS "
       "$$BEGIN EXECUTE 'DROP ' || 'TABLE victim'; END$$", "SELECT f_dyn()"),
    _c("function-benign-then-call", "CREATE FUNCTION f_ok() RETURNS int LANGUAGE sql AS "
       "'SELECT 1'", "CREATE OR REPLACE FUNCTION f_ok() RETURNS int LANGUAGE sql AS "
       "'DELETE FROM victim RETURNING 1'", "SELECT f_ok()"),
    _c("procedure-atomic", "CREATE PROCEDURE p_del() LANGUAGE sql BEGIN ATOMIC DELETE FROM victim; "
       "END", "CALL p_del()"),
    _c("do-block", "DO $$BEGIN DROP TABLE victim; END$$"),
    _c("do-dynamic", "DO $$BEGIN EXECUTE 'DROP' || ' TABLE victim'; END$$"),
    _c("query-to-xml", "SELECT query_to_xml('DELETE FROM victim RETURNING 1', true, true, '')"),
    _c("overload-created", "CREATE FUNCTION lower(int) RETURNS int LANGUAGE sql AS "
       "'DELETE FROM victim RETURNING 1'", "SELECT lower(1)"),
    # triggers and rules
    _c("trigger-planted-function", "CREATE TRIGGER tdel AFTER INSERT ON victim FOR EACH STATEMENT "
       "EXECUTE FUNCTION trig_del()", "INSERT INTO victim VALUES (10, 'x')"),
    _c("rule-delete-all", "CREATE RULE rdel AS ON INSERT TO victim DO ALSO DELETE FROM victim",
       "INSERT INTO victim VALUES (11, 'x')"),
    _c("rule-delete-where", "CREATE RULE rdel2 AS ON INSERT TO victim DO ALSO DELETE FROM victim "
       "WHERE id <= 3", "INSERT INTO victim VALUES (12, 'x')"),
    _c("rule-instead", "CREATE RULE rup AS ON UPDATE TO victim DO INSTEAD DELETE FROM victim "
       "WHERE true", "UPDATE victim SET v = v WHERE id = 1"),
    # search_path
    _c("search-path-shadow", "SET search_path = public, pg_catalog", "SELECT lower('X')"),
    _c("search-path-same-string", "SET search_path = public, pg_catalog; SELECT lower('X')"),
    _c("search-path-set-config", "SELECT set_config('search_path', 'public, pg_catalog', false)",
       "SELECT lower('X')"),
    # session settings: standard_conforming_strings
    _c("scs-off-set", _SCS_OFF, _HIDE),
    _c("scs-off-startup", _HIDE, mode="options"),
    _c("scs-off-local", "BEGIN", "SET LOCAL standard_conforming_strings = off", _HIDE, "COMMIT"),
    _c("scs-off-set-config", "SELECT set_config('standard_conforming_strings', 'off', false)", _HIDE),
    _c("scs-off-same-string", f"{_SCS_OFF}; {_HIDE}"),
    _c("scs-on-same-string-under-off", _SCS_OFF, f"SET standard_conforming_strings = on; {_HIDE}"),
    _c("scs-off-extended", _SCS_OFF, (_HIDE_ONE, ())),
    _c("scs-off-simple-one-statement", _SCS_OFF, _HIDE_ONE),
    # encodings
    _c("sjis-backslash-byte", _SCS_OFF, "SET client_encoding = 'SJIS'",
       "SELECT '表'; DROP TABLE victim; --'"),
    _c("big5-backslash-byte", _SCS_OFF, "SET client_encoding = 'BIG5'",
       "SELECT '許'; DROP TABLE victim; --'"),
    _c("gbk-backslash-byte", _SCS_OFF, "SET NAMES 'GBK'", "SELECT '乗'; DROP TABLE victim; --'"),
    _c("latin1", "SET client_encoding = 'LATIN1'", "SELECT 'é'; DROP TABLE victim"),
    # fastpath
    _c("fastpath-planted", "evil", mode="fastpath"),
    # COPY
    _c("copy-program", "COPY victim TO PROGRAM 'cat > /dev/null'"),
    _c("copy-from-program", "COPY victim FROM PROGRAM 'echo 9'"),
    _c("copy-delete-returning", "COPY (DELETE FROM victim RETURNING *) TO STDOUT", mode="copy"),
    _c("copy-to-file", "COPY victim TO '/tmp/sealgate-victim'", only="preset"),
    # kind words that missed the intent
    _c("merge-self-delete", "MERGE INTO victim USING victim s ON victim.id = s.id "
       "WHEN MATCHED THEN DELETE"),
    _c("merge-true-delete", "MERGE INTO victim USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE"),
    _c("rename", "ALTER TABLE victim RENAME TO gone"),
    _c("rename-if-exists", "ALTER TABLE IF EXISTS victim RENAME TO gone"),
    _c("rename-column", "ALTER TABLE victim RENAME COLUMN v TO w"),
    _c("set-schema", "ALTER TABLE victim SET SCHEMA elsewhere"),
    _c("drop-column", "ALTER TABLE victim DROP COLUMN v"),
    _c("owner", "ALTER TABLE victim OWNER TO CURRENT_USER", only="words"),
    _c("reassign-owned", "REASSIGN OWNED BY CURRENT_USER TO postgres", only="preset"),
    _c("update-all", "UPDATE victim SET v = 'gone'", only="preset"),
    _c("update-true", "UPDATE victim SET v = 'gone' WHERE true", only="preset"),
    _c("merge-update", "MERGE INTO victim USING victim s ON victim.id = s.id "
       "WHEN MATCHED THEN UPDATE SET v = 'gone'", only="preset"),
]


def _params():
    for case in CASES:
        for conn in ("words", "preset"):
            if case.only in (None, conn):
                yield pytest.param(case, conn, id=f"{conn}-{case.id}")


@pytest.fixture(scope="module")
def gateway(postgres, tmp_path_factory):
    postgres.psql(f"CREATE DATABASE {_DB} OWNER {SCRAM_USER}", database="postgres", check=False)
    os.environ[_ENV] = postgres.password(SCRAM_USER)
    g = pytest_twisted.blockon(defer.ensureDeferred(startGateway(
        _CONFIG.replace("{port}", str(postgres.port)), tmp_path_factory.mktemp("bypass"))))
    key = g.createKey("ci-bot", ["eng"])
    yield g, key
    pytest_twisted.blockon(defer.ensureDeferred(g.stop()))


def _direct(postgres):
    return psycopg.connect(postgres.dsn(SCRAM_USER, database=_DB), autocommit=True)


def _intact(postgres) -> tuple:
    with _direct(postgres) as c:
        rows = c.execute("SELECT id, v FROM public.victim WHERE id <= 3 ORDER BY id").fetchall()
        owner = c.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public' "
                          "AND tablename = 'victim'").fetchone()
    return rows, owner


def _dsn(g, key, conn) -> str:
    return (f"host=127.0.0.1 port={g.port(conn)} user=ci-bot dbname={conn} password={key} "
            "sslmode=disable connect_timeout=20")


def _isDenial(e: psycopg.Error) -> bool:
    return e.sqlstate == "42501" and "sealgate: denied by rule" in str(e)


def _run(case: Case, dsn: str) -> tuple[int, object]:
    """Run C{case}'s steps; return (denials, the answer to SELECT 1 after them)."""
    denials = 0
    options = {"options": "-c standard_conforming_strings=off"} if case.mode == "options" else {}
    with psycopg.connect(dsn, autocommit=True, **options) as c:
        if case.mode == "pipeline":
            try:
                with c.pipeline() as p:
                    for step in case.steps:
                        sql, params = step if isinstance(step, tuple) else (step, None)
                        c.execute(sql, params)
                    p.sync()
            except psycopg.Error as e:
                denials += _isDenial(e)
        else:
            for step in case.steps:
                sql, params = step if isinstance(step, tuple) else (step, None)
                try:
                    if case.mode == "copy":
                        with c.cursor().copy(sql) as cp:
                            for _ in cp:
                                pass
                    else:
                        c.execute(sql, params, prepare=case.mode == "prepare" or None)
                except psycopg.Error as e:
                    denials += _isDenial(e)
        if c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            c.execute("ROLLBACK")
        after = c.execute("SELECT 41 + 1").fetchone()
    return denials, after


def _fastpath(port: int, key: str, conn: str, oid: int) -> tuple[int, object]:
    """Log in with a raw socket, send a FunctionCall, then a query."""
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    r = w.Reader(frontend=False)

    def until(kind):
        got = []
        while True:
            while (f := r.next_event()) is not w.NEED_DATA:
                m = w.decodeFrame(f, False)
                got.append(m)
                if isinstance(m, kind):
                    return got
            data = s.recv(65536)
            assert data, "the gateway hung up"
            r.receive_data(data)

    try:
        s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", conn))).encode()
                  + w.PasswordMessage.cleartext(key).encode())
        until(w.ReadyForQuery)
        s.sendall(w.FunctionCall(oid, (), (), 0).encode())
        got = until(w.ReadyForQuery)
        denials = sum(isinstance(m, w.ErrorResponse) and m.get("C") == "42501"
                      and "sealgate: denied" in (m.get("M") or "") for m in got)
        s.sendall(w.Query("SELECT 41 + 1").encode())
        rows = [m for m in until(w.ReadyForQuery) if isinstance(m, w.DataRow)]
        return denials, rows[0].values if rows else None
    finally:
        s.close()


@pytest.mark.parametrize("case, conn", list(_params()))
@pytest_twisted.ensureDeferred
async def test_bypass_attempt_is_denied_and_the_table_survives(gateway, postgres, case, conn):
    g, key = gateway

    def go():
        with _direct(postgres) as c:
            c.execute(_RESET)
            oid = c.execute("SELECT 'evil'::regproc::oid").fetchone()[0]
        if case.mode == "fastpath":
            return _fastpath(g.port(conn), key, conn, oid)
        return _run(case, _dsn(g, key, conn))

    denials, after = await threads.deferToThread(go)
    rows, owner = await threads.deferToThread(_intact, postgres)
    assert rows == _ROWS
    assert owner == (SCRAM_USER,)
    assert denials >= 1, "the gateway denied nothing"
    assert after in ((42,), (b"42",)), "the session is not usable after the denial"


#: Disguised attempts that do destroy the table when sent straight to the
#: server: they are real bypasses, not texts the server would refuse.
_REAL = ["scs-off-set", "scs-off-startup", "scs-off-local", "scs-on-same-string-under-off",
         "sjis-backslash-byte", "big5-backslash-byte", "gbk-backslash-byte", "search-path-shadow",
         "function-planted", "explain-cache-primed", "merge-self-delete", "delete-id=id",
         "pipeline-scs-off", "rule-delete-where", "scs-off-extended", "scs-off-set-config",
         "search-path-same-string", "search-path-set-config", "trigger-planted-function",
         "function-benign-then-call", "copy-delete-returning", "explain-cache-primed-int",
         "delete-or-true", "rule-instead", "scs-off-simple-one-statement"]


@pytest.mark.parametrize("case", [c for c in CASES if c.id in _REAL], ids=lambda c: c.id)
@pytest_twisted.ensureDeferred
async def test_the_disguised_attempts_work_against_the_server_directly(postgres, case):
    def go():
        with _direct(postgres) as c:
            c.execute(_RESET)
        _run(case, postgres.dsn(SCRAM_USER, database=_DB) + " sslmode=disable")
        with _direct(postgres) as c:
            gone = c.execute("SELECT to_regclass('public.victim') IS NULL").fetchone()[0]
            rows = [] if gone else c.execute("SELECT id FROM victim WHERE id <= 3").fetchall()
        return rows

    assert await threads.deferToThread(go) != [(1,), (2,), (3,)]
