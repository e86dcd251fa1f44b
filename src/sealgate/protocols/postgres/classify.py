"""Classify SQL by what it does, with the Postgres grammar itself (pglast), cached by text."""

import re

import attrs
import pglast
from pglast import ast
from pglast.enums import ObjectType

HIGH_RISK = "HIGH RISK"

#: Statement node names whose kind words are not just their split name.
_NAMES = {
    "SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE", "MergeStmt": "MERGE", "TruncateStmt": "TRUNCATE",
    "CreateStmt": "CREATE TABLE", "CreateTableAsStmt": "CREATE TABLE AS",
    "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW", "CreatedbStmt": "CREATE DATABASE",
    "DropdbStmt": "DROP DATABASE", "CreateRoleStmt": "CREATE ROLE", "DropRoleStmt": "DROP ROLE",
    "AlterRoleStmt": "ALTER ROLE", "AlterRoleSetStmt": "ALTER ROLE",
    "CreateFunctionStmt": "CREATE FUNCTION", "CreateSchemaStmt": "CREATE SCHEMA",
    "CreateSeqStmt": "CREATE SEQUENCE", "CreateTrigStmt": "CREATE TRIGGER",
    "VariableSetStmt": "SET", "VariableShowStmt": "SHOW", "CopyStmt": "COPY",
    "DoStmt": "DO", "CallStmt": "CALL", "ListenStmt": "LISTEN", "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY", "PrepareStmt": "PREPARE", "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE", "ExplainStmt": "EXPLAIN", "VacuumStmt": "VACUUM",
    "DeclareCursorStmt": "DECLARE CURSOR", "FetchStmt": "FETCH", "ClosePortalStmt": "CLOSE",
    "LockStmt": "LOCK", "RenameStmt": "ALTER", "ReindexStmt": "REINDEX",
    "ClusterStmt": "CLUSTER", "CheckPointStmt": "CHECKPOINT", "DiscardStmt": "DISCARD",
    "LoadStmt": "LOAD", "AlterSystemStmt": "ALTER SYSTEM",
}
_TRANSACTION = {0: "BEGIN", 1: "BEGIN", 2: "COMMIT", 3: "ROLLBACK", 4: "SAVEPOINT",
                5: "RELEASE", 6: "ROLLBACK", 7: "PREPARE TRANSACTION",
                8: "COMMIT PREPARED", 9: "ROLLBACK PREPARED"}
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


@attrs.frozen
class Classification:
    """
    What a SQL text does.

    @ivar statements: kind words, in order, without repeats ("SELECT",
        "DELETE", "DELETE WITHOUT WHERE", "DROP", "DROP TABLE", "HIGH RISK"...).
    @ivar relations: relation names touched, as written (schema-qualified
        when written so), lower-cased by the parser unless quoted.
    @ivar prepares: (name, statements) for each PREPARE, so a later EXECUTE
        of that name is judged by what it runs.
    @ivar executes: names run by EXECUTE.
    @ivar count: the number of statements in the text.
    """

    statements: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    prepares: tuple[tuple[str, tuple[str, ...]], ...] = ()
    executes: tuple[str, ...] = ()
    count: int = 0

    def details(self) -> dict:
        return {"statements": self.statements, "relations": self.relations}


def _words(name: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    base = name[:-4] if name.endswith("Stmt") else name
    return " ".join(w.upper() for w in re.findall(r"[A-Z][a-z]*|[a-z]+", base))


class _Walker:
    def __init__(self):
        self.kinds: dict[str, None] = {}
        self.relations: dict[str, None] = {}
        self.ctes: set[str] = set()
        self.prepares: list = []
        self.executes: list[str] = []

    def kind(self, *words: str) -> None:
        for w in words:
            self.kinds.setdefault(w)

    def statement(self, node) -> None:
        name = type(node).__name__
        # pglast types every node field Optional; the parser always fills
        # the ones read below, so the asserts only narrow the types.
        if isinstance(node, ast.TransactionStmt):
            assert node.kind is not None
            self.kind(_TRANSACTION.get(int(node.kind), "TRANSACTION"))
        elif isinstance(node, ast.DropStmt):
            assert node.removeType is not None
            what = ObjectType(node.removeType).name.removeprefix("OBJECT_").replace("_", " ")
            self.kind("DROP", f"DROP {what}")
            if node.objects and node.removeType in (
                    ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW,
                    ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_SEQUENCE,
                    ObjectType.OBJECT_FOREIGN_TABLE):
                for obj in node.objects:
                    if isinstance(obj, (tuple, list)):
                        self.relations.setdefault(".".join(s.sval for s in obj if hasattr(s, "sval")))
        elif isinstance(node, (ast.GrantStmt, ast.GrantRoleStmt)):
            self.kind("GRANT" if node.is_grant else "REVOKE")
        elif isinstance(node, ast.DoStmt):
            self.kind("DO", HIGH_RISK)
        elif isinstance(node, ast.ExplainStmt):
            self.kind("EXPLAIN")
            analyze = any(getattr(o, "defname", "") == "analyze" and _truthy(o)
                          for o in node.options or ())
            if analyze:
                self.kind("EXPLAIN ANALYZE")
                self.statement(node.query)
            else:
                # A plain EXPLAIN runs nothing: only the relations matter.
                sub = _Walker()
                sub.statement(node.query)
                self.relations.update(sub.relations)
            return
        elif isinstance(node, ast.PrepareStmt):
            self.kind("PREPARE")
            sub = _Walker()
            sub.statement(node.query)
            sub.finish()
            self.prepares.append((node.name, tuple(sub.kinds)))
            self.kinds.update(sub.kinds)
            self.relations.update(sub.relations)
            return
        elif isinstance(node, ast.ExecuteStmt):
            self.kind("EXECUTE")
            assert node.name is not None
            self.executes.append(node.name)
        elif isinstance(node, ast.CopyStmt):
            self.kind("COPY", "COPY FROM" if node.is_from else "COPY TO")
            if node.is_program:
                self.kind("COPY PROGRAM", HIGH_RISK)
        elif isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            self.kind("SELECT", "SELECT INTO")
        else:
            self.kind(_words(name))
        self.walk(node)

    def walk(self, node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, (tuple, list)):
                stack.extend(reversed(n))
                continue
            if not isinstance(n, ast.Node):
                continue
            if isinstance(n, ast.RangeVar):
                assert n.relname is not None
                rel = f"{n.schemaname}.{n.relname}" if n.schemaname else n.relname
                self.relations.setdefault(rel)
            elif isinstance(n, ast.CommonTableExpr):
                assert n.ctename is not None
                self.ctes.add(n.ctename)
                if isinstance(n.ctequery, _WRITES):
                    self.statement(n.ctequery)
                    continue
            elif n is not node and isinstance(n, _WRITES):
                self.statement(n)
                continue
            if isinstance(n, ast.UpdateStmt) and n.whereClause is None:
                self.kind("UPDATE WITHOUT WHERE")
            elif isinstance(n, ast.DeleteStmt) and n.whereClause is None:
                self.kind("DELETE WITHOUT WHERE")
            elif isinstance(n, ast.SelectStmt) and n.intoClause is not None and n is not node:
                self.kind("SELECT INTO")
            for attr in n.__slots__:
                v = getattr(n, attr, None)
                if isinstance(v, (ast.Node, tuple, list)):
                    stack.append(v)

    def finish(self) -> None:
        for c in self.ctes:
            self.relations.pop(c, None)


def _truthy(defelem) -> bool:
    arg = getattr(defelem, "arg", None)
    if arg is None:
        return True
    v = getattr(arg, "boolval", None)
    if v is None:
        v = getattr(arg, "sval", None) or getattr(arg, "ival", 1)
        return str(v).lower() not in ("false", "off", "0", "no")
    return bool(v)


_LITERALS = re.compile(r"'[^']*'|\b\d+(?:\.\d+)?\b")
#: Texts with these may hide code from a simple literal scan (comments,
#: backslash escapes, dollar quoting, quoted identifiers): cached verbatim.
_UNSAFE = ("\\", "$", "--", "/*", '"')
_CACHE: dict[str, "Classification"] = {}
_CACHE_MAX = 8192


def cacheKey(text: str) -> str:
    """
    The text with literals replaced, so C{WHERE aid = 1} and C{WHERE aid = 2}
    share one entry: literals never change what a statement does.  Only
    texts a plain scan tokenizes exactly as the parser does are folded.
    """
    for u in _UNSAFE:
        if u in text:
            return text
    return _LITERALS.sub("?", text)


def classify(text: str) -> Classification:
    """
    Classify every statement in C{text} (a Query string or a Parse's
    statement), cached by L{cacheKey}.  Text the parser refuses is
    L{HIGH_RISK}: Postgres will refuse it too, but a rule must not let an
    unjudged statement through.
    """
    key = cacheKey(text)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if len(_CACHE) >= _CACHE_MAX:
        del _CACHE[next(iter(_CACHE))]
    c = _CACHE[key] = _classify(text)
    return c


def _classify(text: str) -> Classification:
    try:
        stmts = pglast.parse_sql(text)
    except Exception:
        return Classification((HIGH_RISK,), (), count=1)
    w = _Walker()
    for raw in stmts:
        w.statement(raw.stmt)
    w.finish()
    return Classification(tuple(w.kinds), tuple(w.relations), tuple(w.prepares),
                          tuple(w.executes), len(stmts))
