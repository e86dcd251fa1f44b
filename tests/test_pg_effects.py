"""What a statement does (effects), rule vocabularies and presets, and a verdict cache that cannot be poisoned."""

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.chain.policy import RuleMatcher
from sealgate.config import ConfigError, loadConfig
from sealgate.protocols.postgres import classify as cl
from sealgate.protocols.postgres.effects import EFFECTS, PRESETS
from sealgate.protocols.postgres.plugin import plugin as pgPlugin


@pytest.mark.parametrize("sql, effects", [
    ("DELETE FROM t WHERE true", {"writes-rows", "deletes-all-rows"}),
    ("DELETE FROM t WHERE 1 = 1", {"writes-rows", "deletes-all-rows"}),
    ("delete from t where id = 3 or true", {"writes-rows", "deletes-all-rows"}),
    ("delete from t where id = id", {"writes-rows", "deletes-all-rows"}),
    ("delete from t where id is not null", {"writes-rows", "deletes-all-rows"}),
    ("delete from t where (select count(*) from u) > 0", {"writes-rows", "deletes-all-rows"}),
    ("delete from t where id = 3", {"writes-rows"}),
    ("update t set a = 1 where not false", {"writes-rows", "updates-all-rows"}),
    ("update t set a = 1 where a > 2 and true", {"writes-rows"}),
    ("MERGE INTO t USING t s ON t.id = s.id WHEN MATCHED THEN DELETE",
     {"writes-rows", "merge-deletes", "deletes-all-rows"}),
    ("DROP OWNED BY bob", {"drops-object"}),
    ("ALTER TABLE t DROP COLUMN a", {"drops-object", "defines-objects"}),
    ("ALTER TABLE t RENAME TO u", {"renames", "defines-objects"}),
    ("ALTER TABLE t SET SCHEMA s", {"changes-schema", "defines-objects"}),
    ("ALTER TABLE t OWNER TO bob", {"changes-owner", "defines-objects"}),
    ("REASSIGN OWNED BY a TO b", {"changes-owner", "defines-objects"}),
    ("GRANT admin TO bob", {"changes-roles", "changes-privileges"}),
    ("SET ROLE admin", {"changes-roles"}),
    ("CALL p()", {"runs-server-code", "high-risk"}),
    ("SELECT myfunc(1)", {"runs-server-code", "high-risk"}),
    ("SELECT public.lower('a')", {"runs-server-code", "high-risk"}),
    ("SELECT pg_catalog.lower('a'), count(*), now()", set()),
    ("COPY t TO PROGRAM 'sh'", {"runs-os-command", "high-risk"}),
    ("COPY t FROM '/etc/passwd'", {"writes-rows", "reads-server-files"}),
    ("COPY t TO '/tmp/x'", {"writes-server-files"}),
    ("SELECT lo_export(1, '/tmp/x')", {"writes-server-files"}),
    ("SELECT pg_read_file('/etc/passwd')", {"reads-server-files"}),
    ("SELECT query_to_xml('DELETE FROM t', true, true, '')", {"runs-server-code", "high-risk"}),
    ("SET standard_conforming_strings = off", {"changes-parsing"}),
    ("SET NAMES 'SJIS'", {"changes-parsing"}),
    ("RESET ALL", {"changes-parsing"}),
    ("ALTER SYSTEM SET work_mem = '1MB'", {"writes-server-files", "defines-objects"}),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM t'",
     {"defines-objects", "runs-server-code", "writes-rows", "deletes-all-rows"}),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
     {"defines-objects", "runs-server-code"}),
    ("CREATE PROCEDURE p() LANGUAGE plpgsql AS $$BEGIN TRUNCATE t; END$$",
     {"defines-objects", "runs-server-code", "truncates"}),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$BEGIN EXECUTE 'DROP TABLE t'; END$$",
     {"defines-objects", "runs-server-code", "high-risk"}),
    ("CREATE FUNCTION f() RETURNS void LANGUAGE c AS 'lib', 'sym'",
     {"defines-objects", "runs-server-code", "high-risk"}),
    ("CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM t",
     {"defines-objects", "runs-server-code", "writes-rows", "deletes-all-rows", "high-risk"}),
    ("SET search_path = public, pg_catalog; SELECT lower('x')",
     {"changes-parsing", "runs-server-code", "high-risk"}),
    ("CREATE TRIGGER g AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
     {"defines-objects", "runs-server-code", "high-risk"}),
    ("WITH d AS (DELETE FROM t WHERE true RETURNING 1) SELECT 1", {"writes-rows", "deletes-all-rows"}),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", {"writes-rows", "deletes-all-rows"}),
    ("EXPLAIN (ANALYZE 'on') DELETE FROM t", {"writes-rows", "deletes-all-rows"}),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", {"writes-rows", "deletes-all-rows"}),
    ("EXPLAIN (ANALYZE 'off') DELETE FROM t", set()),
    ("EXPLAIN (ANALYZE off, ANALYZE) DELETE FROM t", {"writes-rows", "deletes-all-rows"}),
    ("EXPLAIN (ANALYZE 'maybe') DELETE FROM t", {"writes-rows", "deletes-all-rows"}),
])
def test_effects_come_from_the_parse_tree(sql, effects):
    assert set(cl.classify(sql).effects) == effects


@pytest.mark.parametrize("sql, kind", [
    ("ALTER TABLE t RENAME TO u", "ALTER TABLE"),
    ("ALTER TABLE t RENAME COLUMN a TO b", "ALTER TABLE"),
    ("ALTER TABLE t SET SCHEMA s", "ALTER TABLE"),
    ("ALTER TABLE t SET SCHEMA s", "ALTER"),
    ("DROP OWNED BY bob", "DROP"),
    ("MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", "DELETE WITHOUT WHERE"),
    ("DELETE FROM t WHERE 1 = 1", "DELETE WITHOUT WHERE"),
])
def test_kind_words_name_the_intent(sql, kind):
    assert kind in cl.classify(sql).statements


@pytest.mark.parametrize("sql", [
    "SELECT 1", "DROP TABLE t", "ALTER TABLE t RENAME TO u", "CREATE FUNCTION f() RETURNS int "
    "LANGUAGE sql AS 'SELECT 1'", "COPY t TO PROGRAM 'x'", "GRANT SELECT ON t TO bob", "not sql",
    "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", "DROP OWNED BY x", "EXPLAIN ANALYZE SELECT",
])
def test_every_reported_word_is_in_the_vocabulary(sql):
    c = cl.classify(sql)
    assert set(c.statements) <= cl.KINDS
    assert set(c.effects) <= set(EFFECTS)


def test_presets_name_only_known_effects():
    for matchers in PRESETS.values():
        assert set(matchers["effects"]) <= set(EFFECTS)


class _Hook:
    kind = "sql"
    text = ""

    def __init__(self, details):
        self.details = details


def test_an_effects_rule_matches_the_reported_effects():
    m = RuleMatcher({"effects": PRESETS["production-safe"]["effects"]})
    assert m.matches(_Hook(cl.classify("DELETE FROM t WHERE true").details()))
    assert not m.matches(_Hook(cl.classify("DELETE FROM t WHERE id = 1").details()))


_CONFIG = """
[gateway]
state_dir = "{state}"
admin = "tcp:0:interface=127.0.0.1"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["db"]

[[connections]]
name = "db"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port=5432"
[connections.options]
database = "app"
username = "app"

[[rules]]
name = "guard"
action = "deny"
"""


def _load(tmp_path, rule):
    path = tmp_path / "sealgate.toml"
    path.write_text(textwrap.dedent(_CONFIG).replace("{state}", str(tmp_path / "s")) + rule)
    return loadConfig(path, {"postgres": pgPlugin})


def _error(tmp_path, rule) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, rule)
    return str(e.value)


def test_a_misspelt_kind_is_a_config_error_with_the_nearest_word(tmp_path):
    m = _error(tmp_path, 'statements = ["DROP TABLES"]\n')
    assert "rules[0] (guard).statements: unknown word 'DROP TABLES' (did you mean 'DROP TABLE'?)" in m
    assert "fix: use any of:" in m and "DELETE WITHOUT WHERE" in m


def test_a_misspelt_effect_is_a_config_error(tmp_path):
    m = _error(tmp_path, 'effects = ["drops-objects"]\n')
    assert "rules[0] (guard).effects: unknown word 'drops-objects' (did you mean 'drops-object'?)" in m


def test_an_unknown_preset_lists_the_presets(tmp_path):
    m = _error(tmp_path, 'preset = "production-saf"\n')
    assert "rules[0] (guard).preset: unknown preset 'production-saf' (did you mean 'production-safe'?)" in m
    assert "read-only" in m


def test_a_preset_expands_to_its_matchers_and_words_are_normalized(tmp_path):
    cfg = _load(tmp_path, 'preset = "production-safe"\nstatements = ["delete  without where"]\n')
    assert cfg.rules[0].matchers["effects"] == PRESETS["production-safe"]["effects"]
    cfg = _load(tmp_path, 'preset = "no-server-access"\neffects = ["truncates"]\n')
    assert cfg.rules[0].matchers["effects"][0] == "truncates"
    assert "runs-os-command" in cfg.rules[0].matchers["effects"]


# -- the verdict cache ---------------------------------------------------------------

_TEMPLATES = [
    "EXPLAIN (ANALYZE {s}) DELETE FROM t",
    "EXPLAIN (ANALYZE {n}) DELETE FROM t",
    "EXPLAIN (ANALYZE {s}, COSTS {s}) UPDATE t SET a = {n}",
    "SELECT * FROM t WHERE a = {n} LIMIT {n}",
    "DELETE FROM t WHERE {n} = {n}",
    "DELETE FROM t WHERE a = {n} OR {s} = {s}",
    "UPDATE t SET a = {s} WHERE id = {n}",
    "SET search_path = {s}, pg_catalog",
    "SELECT set_config({s}, {s}, false)",
    "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS {s}",
    "CREATE FUNCTION f() RETURNS void LANGUAGE {s} AS 'SELECT 1'",
    "COPY t TO {s}",
    "INSERT INTO t VALUES ({n}, {s})",
]
_WORDS = st.sampled_from(["'on'", "'off'", "'true'", "'false'", "'0'", "'1'", "'DELETE FROM t'",
                          "'SELECT 1'", "'plpgsql'", "'sql'", "'c'", "'search_path'", "'x'",
                          "'public'", "'pg_catalog'", "'standard_conforming_strings'", "''"])
_NUMBERS = st.sampled_from(["0", "1", "2", "10", "1.5", "42"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_TEMPLATES), st.lists(st.tuples(_WORDS, _NUMBERS), min_size=2, max_size=2))
def test_cached_verdicts_equal_fresh_ones_on_folded_variants(template, fills):
    """Whatever variant primed the cache, each text gets what a fresh parse gives it."""
    texts = [template.replace("{s}", s).replace("{n}", n) for s, n in fills]
    for t in texts:
        cl.classify(t)
    for t in reversed(texts):
        assert cl.classify(t) == cl._classify(t), t


def test_explain_analyze_off_does_not_vouch_for_on():
    cl.classify("EXPLAIN (ANALYZE 'off') DELETE FROM t")
    assert "DELETE WITHOUT WHERE" in cl.classify("EXPLAIN (ANALYZE 'on') DELETE FROM t").statements
    cl.classify("EXPLAIN (ANALYZE 0) DELETE FROM t")
    assert "DELETE WITHOUT WHERE" in cl.classify("EXPLAIN (ANALYZE 1) DELETE FROM t").statements


def test_verdicts_that_read_no_constant_are_shared_across_literals():
    a = cl.classify("SELECT abalance FROM acc WHERE aid = 12")
    assert not a.sensitive
    assert a is cl.classify("SELECT abalance FROM acc WHERE aid = 9")
