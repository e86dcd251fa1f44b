"""The vocabulary of what a SQL statement does (effects), the rule presets, and predicate checks."""

from pglast import ast
from pglast.enums import A_Expr_Kind, BoolExprType, NullTestType, ObjectType
from pglast.stream import RawStream

from sealgate.protocols.postgres._builtins import NAMES as BUILTIN_FUNCTIONS

HIGH_RISK = "HIGH RISK"

#: Effect words a rule's C{effects} may name, each with what it means.  A
#: statement's effects are derived from its parse tree, every sub-statement
#: included (CTEs, EXPLAIN ANALYZE, PREPARE, rule actions, SQL function bodies).
EFFECTS: dict[str, str] = {
    "drops-object": "drops an object (DROP ..., DROP OWNED, ALTER TABLE ... DROP COLUMN/CONSTRAINT, "
                    "lo_unlink)",
    "truncates": "empties tables (TRUNCATE)",
    "deletes-all-rows": "DELETE, or a MERGE's DELETE action, with no effective predicate: none, "
                        "or one that cannot tell rows apart (WHERE true, WHERE 1=1, WHERE x OR true, "
                        "WHERE id = id, WHERE id IS NOT NULL)",
    "updates-all-rows": "UPDATE, or a MERGE's UPDATE action, with no effective predicate",
    "merge-deletes": "MERGE with a WHEN ... THEN DELETE action",
    "writes-rows": "inserts, updates, deletes or merges rows, COPY FROM, SELECT INTO",
    "renames": "renames a table, column or any other object",
    "changes-schema": "moves an object to another schema (ALTER ... SET SCHEMA)",
    "changes-owner": "changes who owns objects (ALTER ... OWNER TO, REASSIGN OWNED)",
    "changes-privileges": "grants or revokes privileges, default privileges or row-level security",
    "changes-roles": "creates, alters or drops roles, grants membership, switches the session's role",
    "defines-objects": "creates, alters or comments on any object (DDL)",
    "runs-server-code": "runs or installs code on the server: DO, CALL, a function that is not a "
                        "known built-in, fastpath FunctionCall, CREATE/ALTER FUNCTION, PROCEDURE, "
                        "TRIGGER, RULE, EVENT TRIGGER, LANGUAGE, EXTENSION, LOAD",
    "runs-os-command": "runs an operating-system command (COPY ... PROGRAM)",
    "reads-server-files": "reads files on the server (COPY FROM a file, pg_read_file, pg_ls_dir, "
                          "lo_import...)",
    "writes-server-files": "writes files on the server (COPY TO a file, lo_export, ALTER SYSTEM, "
                           "CREATE TABLESPACE)",
    "changes-parsing": "changes how the session parses or resolves text: standard_conforming_strings, "
                       "client_encoding, search_path, backslash_quote, escape_string_warning, RESET ALL",
    "high-risk": "the gateway cannot be sure what the server will run: a parse error, an unknown "
                 "encoding, SQL run from a string, a setting that changes under the statement",
}

_DESTRUCTIVE = ("drops-object", "truncates", "deletes-all-rows", "updates-all-rows", "merge-deletes",
                "renames", "changes-schema", "changes-owner", "changes-privileges", "changes-roles",
                "runs-server-code", "runs-os-command", "reads-server-files", "writes-server-files",
                "high-risk")

#: Named rule presets (C{preset = "production-safe"} in a rule): each is the
#: matchers it stands for.  docs/protocols/postgres.md lists them.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "production-safe": {"effects": _DESTRUCTIVE},
    "read-only": {"effects": _DESTRUCTIVE + ("writes-rows", "defines-objects", "changes-parsing")},
    "no-server-access": {"effects": ("runs-server-code", "runs-os-command", "reads-server-files",
                                     "writes-server-files", "high-risk")},
}

#: Settings that change how the server tokenizes or resolves the next text.
PARSE_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding", "search_path",
                            "backslash_quote", "escape_string_warning"})

#: Built-in functions whose call does more than compute: effects (and
#: HIGH RISK where they run SQL given as a string, which is judged nowhere).
DANGEROUS_FUNCTIONS: dict[str, tuple[str, ...]] = {
    **{f: ("reads-server-files",) for f in (
        "pg_read_file", "pg_read_binary_file", "pg_read_file_old", "pg_ls_dir", "pg_stat_file",
        "pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir",
        "pg_ls_logicalmapdir", "pg_ls_logicalsnapdir", "pg_ls_replslotdir", "lo_import")},
    "lo_export": ("writes-server-files",),
    "lo_unlink": ("drops-object",),
    "set_config": ("changes-parsing",),
    **{f: ("runs-server-code", "high-risk") for f in (
        "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
        "cursor_to_xmlschema", "ts_stat", "ts_rewrite", "pg_reload_conf")},
}

#: Fastpath FunctionCall targets a client library may call: the large-object
#: functions libpq's lo_* API uses, by their fixed built-in OIDs.  Any other
#: OID is judged "runs-server-code" and HIGH RISK.
FASTPATH_SAFE_OIDS = frozenset({952, 953, 954, 955, 956, 957, 958, 715, 1004, 3170, 3171, 3172})

def _columnsOutsideSubqueries(node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (tuple, list)):
            stack.extend(n)
        elif isinstance(n, ast.ColumnRef):
            return True
        elif isinstance(n, ast.SubLink):
            stack.append(n.testexpr)
        elif isinstance(n, ast.Node):
            stack.extend(getattr(n, a) for a in getattr(n, "__slots__", ()) if a != "location")
    return False


def _same(a, b) -> bool:
    try:
        # A stream keeps state between calls: one per deparse.
        return RawStream()(a) == RawStream()(b)
    except Exception:
        return False


_TAUTOLOGY_OPS = frozenset({"=", ">=", "<="})


def effective(pred) -> bool:
    """
    Whether a WHERE (or MERGE action) predicate can tell rows apart.  It
    cannot when it is absent, names no column of the row (C{true}, C{1=1},
    a constant subquery), is an OR with such an arm, compares an expression
    with itself, or is C{IS NOT NULL}.  Only the tree's shape is read, never
    a constant's value, so folding literals cannot change the answer.
    """
    if pred is None:
        return False
    if isinstance(pred, ast.BoolExpr):
        args = pred.args or ()
        if pred.boolop == BoolExprType.AND_EXPR:
            return any(effective(a) for a in args)
        if pred.boolop == BoolExprType.OR_EXPR:
            return all(effective(a) for a in args)
        return all(effective(a) for a in args)
    if isinstance(pred, ast.NullTest):
        return pred.nulltesttype != NullTestType.IS_NOT_NULL and effective(pred.arg)
    if isinstance(pred, ast.BooleanTest):
        return effective(pred.arg)
    if isinstance(pred, ast.A_Expr):
        names = [getattr(n, "sval", "") for n in pred.name or ()]
        if (names and names[-1] in _TAUTOLOGY_OPS) or pred.kind == A_Expr_Kind.AEXPR_NOT_DISTINCT:
            if pred.lexpr is not None and _same(pred.lexpr, pred.rexpr):
                return False
    return _columnsOutsideSubqueries(pred)


def objectWords(objtype) -> str:
    """C{OBJECT_FOREIGN_TABLE} -> C{"FOREIGN TABLE"}."""
    return ObjectType(objtype).name.removeprefix("OBJECT_").replace("_", " ")


def isBuiltin(names: list[str], shadowed: bool) -> bool:
    """
    Whether a function name resolves to a built-in: qualified with
    pg_catalog, or unqualified while pg_catalog comes first on the path.
    """
    if len(names) == 2 and names[0] == "pg_catalog":
        return names[1] in BUILTIN_FUNCTIONS
    if len(names) == 1:
        return not shadowed and names[0] in BUILTIN_FUNCTIONS
    return False
