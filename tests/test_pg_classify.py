"""SQL classification: statements judged by what they do, whatever their disguise."""

import pytest

from sealgate.protocols.postgres.classify import HIGH_RISK, classify


@pytest.mark.parametrize("sql, kinds", [
    ("SELECT 1", {"SELECT"}),
    ("select * from t; DELETE FROM users", {"SELECT", "DELETE", "DELETE WITHOUT WHERE"}),
    ("DeLeTe /* x */ FROM users -- all\n WHERE id = 1", {"DELETE"}),
    ("UPDATE t SET a = 1", {"UPDATE", "UPDATE WITHOUT WHERE"}),
    ("update t set a = 1 where id = 2", {"UPDATE"}),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d",
     {"SELECT", "DELETE", "DELETE WITHOUT WHERE"}),
    ("WITH u AS (UPDATE t SET a=1 WHERE b=2 RETURNING 1) SELECT 1", {"SELECT", "UPDATE"}),
    ("EXPLAIN ANALYZE DELETE FROM t", {"EXPLAIN", "EXPLAIN ANALYZE", "DELETE", "DELETE WITHOUT WHERE"}),
    ("EXPLAIN (ANALYZE true) UPDATE t SET a = 1", {"EXPLAIN", "EXPLAIN ANALYZE", "UPDATE", "UPDATE WITHOUT WHERE"}),
    ("EXPLAIN (ANALYZE off) DELETE FROM t", {"EXPLAIN"}),
    ("PREPARE p AS DELETE FROM t", {"PREPARE", "DELETE", "DELETE WITHOUT WHERE"}),
    ("dRoP TaBlE a.b, c", {"DROP", "DROP TABLE"}),
    ("DROP DATABASE x", {"DROP", "DROP DATABASE"}),
    ("truncate t", {"TRUNCATE"}),
    ("ALTER ROLE bob SUPERUSER", {"ALTER", "ALTER ROLE"}),
    ("ALTER USER bob SET search_path = x", {"ALTER", "ALTER ROLE"}),
    ("GRANT SELECT ON t TO bob", {"GRANT"}),
    ("REVOKE admin FROM bob", {"REVOKE"}),
    ("DO $$ BEGIN DELETE FROM t; END $$", {"DO", HIGH_RISK}),
    ("this is not sql", {HIGH_RISK}),
    ("COPY t TO PROGRAM 'rm -rf /'", {"COPY", "COPY TO", "COPY PROGRAM", HIGH_RISK}),
    ("COPY t FROM STDIN", {"COPY", "COPY FROM"}),
    ("begin; commit", {"BEGIN", "COMMIT"}),
    ("CREATE TABLE x (a int)", {"CREATE", "CREATE TABLE"}),
    ("CREATE EXTENSION hstore", {"CREATE", "CREATE EXTENSION", HIGH_RISK}),
    ("INSERT INTO t SELECT * FROM u", {"INSERT"}),
    ("SELECT * INTO newt FROM t", {"SELECT", "SELECT INTO"}),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
     {"MERGE", "DELETE", "MERGE DELETE", "DELETE WITHOUT WHERE"}),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED AND t.a > 1 THEN DELETE",
     {"MERGE", "DELETE", "MERGE DELETE"}),
    ("LISTEN ch", {"LISTEN"}),
    ("", set()),
])
def test_kinds(sql, kinds):
    assert set(classify(sql).statements) == kinds


def test_relations_exclude_cte_names_and_keep_schemas():
    c = classify("WITH d AS (DELETE FROM app.orders RETURNING *) SELECT * FROM d JOIN users u ON true")
    assert set(c.relations) == {"app.orders", "users"}
    assert set(classify("DROP TABLE a.b, c").relations) == {"a.b", "c"}
    assert classify('select * from "Weird"').relations == ("Weird",)


def test_plain_explain_runs_nothing_but_names_relations():
    c = classify("EXPLAIN DELETE FROM t")
    assert c.statements == ("EXPLAIN",)
    assert c.relations == ("t",)


def test_prepare_and_execute_are_linked_by_name():
    c = classify("PREPARE p(int) AS DELETE FROM t WHERE id = $1; EXECUTE p(1)")
    assert c.prepares == (("p", ("DELETE",), ("writes-rows",)),)
    assert c.executes == ("p",)
    assert c.count == 2


def test_results_are_cached_by_text():
    assert classify("SELECT 42 FROM t") is classify("SELECT 42 FROM t")
    assert classify("SELECT 42 FROM t").details() == {"statements": ("SELECT",), "effects": (),
                                                      "relations": ("t",)}


def test_literals_share_a_cache_entry():
    assert classify("SELECT abalance FROM a WHERE aid = 12") is classify("SELECT abalance FROM a WHERE aid = 9")
    assert classify("select 'x' from t") is classify("select 'yy' from t")


@pytest.mark.parametrize("benign, hidden", [
    ("select 2; -- a'x'", "select 1; -- a'\ndrop table t; --'"),
    ("select E'a' 'b'", "select E'\\''; drop table t; --'"),
    ('select "a\'b" from t', 'select "a\'" ; drop table t; --\'b" from t'),
    ("select $$x$$", "select $$x$$; drop table t"),
    ("select 1 /* '' */", "select 1 /* ' */; drop table t; /* ' */"),
])
def test_cache_cannot_be_primed_to_hide_a_statement(benign, hidden):
    classify(benign)
    assert "DROP" in classify(hidden).statements
