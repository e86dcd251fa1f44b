"""Classify SQL by what it does, with the Postgres grammar itself (pglast), cached safely."""

import re

import attrs
import pglast
from pglast import ast
from pglast.enums import AlterTableType, ObjectType, VariableSetKind

from sealgate.protocols.postgres import effects as fx
from sealgate.protocols.postgres.effects import HIGH_RISK, objectWords
from sealgate.protocols.postgres.plpgsql import Unjudgeable, embeddedSQL

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
    "LoadStmt": "LOAD", "AlterSystemStmt": "ALTER SYSTEM", "RuleStmt": "CREATE RULE",
    "CreateEventTrigStmt": "CREATE EVENT TRIGGER", "CreatePLangStmt": "CREATE LANGUAGE",
}
_TRANSACTION = {0: "BEGIN", 1: "BEGIN", 2: "COMMIT", 3: "ROLLBACK", 4: "SAVEPOINT",
                5: "RELEASE", 6: "ROLLBACK", 7: "PREPARE TRANSACTION",
                8: "COMMIT PREPARED", 9: "ROLLBACK PREPARED"}
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
#: Statements that install code the server later runs on its own (on an
#: event, a cast, an operator): what it will do is not judged, so HIGH RISK.
_HOOKS = ("CreateTrigStmt", "CreateEventTrigStmt", "RuleStmt", "CreatePLangStmt", "CreateExtensionStmt",
          "AlterExtensionStmt", "AlterExtensionContentsStmt", "CreateCastStmt", "DefineStmt",
          "CreateTransformStmt", "CreateConversionStmt", "CreateOpClassStmt", "LoadStmt",
          "AlterEventTrigStmt", "CreateFdwStmt", "CreateForeignServerStmt")
_CODE = _HOOKS + ("CreateFunctionStmt", "AlterFunctionStmt", "RuleStmt", "DoStmt", "CallStmt")
_ROLES = ("CreateRoleStmt", "AlterRoleStmt", "AlterRoleSetStmt", "DropRoleStmt", "GrantRoleStmt")
_PRIVILEGES = ("GrantStmt", "AlterDefaultPrivilegesStmt", "CreatePolicyStmt", "AlterPolicyStmt")
_AT_EFFECTS: dict[object, str] = {
    AlterTableType.AT_DropColumn: "drops-object", AlterTableType.AT_DropConstraint: "drops-object",
    AlterTableType.AT_ChangeOwner: "changes-owner",
    AlterTableType.AT_EnableRowSecurity: "changes-privileges",
    AlterTableType.AT_DisableRowSecurity: "changes-privileges",
    AlterTableType.AT_NoForceRowSecurity: "changes-privileges",
    **{t: "runs-server-code" for t in AlterTableType if "Trig" in t.name or "Rule" in t.name},
}


def _words(name: str) -> str:
    if name in _NAMES:
        return _NAMES[name]
    base = name[:-4] if name.endswith("Stmt") else name
    return " ".join(w.upper() for w in re.findall(r"[A-Z][a-z]*|[a-z]+", base))


def _vocabulary() -> frozenset[str]:
    words = {_words(n) for n in dir(ast) if n.endswith("Stmt")}
    objects = {objectWords(o) for o in ObjectType}
    words |= {f"DROP {o}" for o in objects} | {f"ALTER {o}" for o in objects}
    words |= set(_TRANSACTION.values()) | {
        "DROP", "ALTER", "CREATE", "GRANT", "REVOKE", "EXPLAIN ANALYZE", "COPY FROM", "COPY TO",
        "COPY PROGRAM", "SELECT INTO", "DELETE WITHOUT WHERE", "UPDATE WITHOUT WHERE", "RENAME",
        "SET SCHEMA", "MERGE DELETE", "MERGE UPDATE", "CREATE PROCEDURE", "FUNCTION CALL",
        "TRANSACTION", HIGH_RISK}
    return frozenset(words)


@attrs.frozen
class Classification:
    """
    What a SQL text does.

    @ivar statements: kind words, in order, without repeats ("SELECT",
        "DELETE", "DELETE WITHOUT WHERE", "DROP", "DROP TABLE", "HIGH RISK"...).
    @ivar effects: effect words (L{fx.EFFECTS}), in order, without repeats.
    @ivar relations: relation names touched, as written (schema-qualified
        when written so), lower-cased by the parser unless quoted.
    @ivar prepares: (name, statements, effects) for each PREPARE, so a later
        EXECUTE of that name is judged by what it runs.
    @ivar executes: names run by EXECUTE.
    @ivar deallocates: names dropped by DEALLOCATE (C{""} for ALL).
    @ivar calls: user-defined functions and procedures called, as written.
    @ivar count: the number of statements in the text.
    @ivar sensitive: the classification read a constant's value (an EXPLAIN
        option, a SET value, a function body): it is cached for this exact
        text only, never for a literal-folded one.
    @ivar changesSettings: it may change a setting the next text is parsed
        under (SET, RESET, DISCARD, set_config, transaction end, user code).
    @ivar shadows: it may put a schema before pg_catalog on search_path.
    """

    statements: tuple[str, ...] = ()
    effects: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    prepares: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    executes: tuple[str, ...] = ()
    deallocates: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    count: int = 0
    sensitive: bool = False
    changesSettings: bool = False
    shadows: bool = False

    def details(self) -> dict:
        return {"statements": self.statements, "effects": self.effects, "relations": self.relations}


def uncertain() -> Classification:
    """What the gateway says of a text it cannot be sure about."""
    return Classification((HIGH_RISK,), ("high-risk",), count=1)


def fastpath(oid: int) -> Classification:
    """A fastpath FunctionCall of the function with this OID."""
    if oid in fx.FASTPATH_SAFE_OIDS:
        return Classification(("FUNCTION CALL",), (), count=1)
    return Classification(("FUNCTION CALL", HIGH_RISK), ("runs-server-code", "high-risk"),
                          count=1, changesSettings=True)


class _Walker:
    def __init__(self, shadowed: bool = False):
        self.kinds: dict[str, None] = {}
        self.effects: dict[str, None] = {}
        self.relations: dict[str, None] = {}
        self.ctes: set[str] = set()
        self.prepares: list = []
        self.executes: list[str] = []
        self.deallocates: list[str] = []
        self.calls: dict[str, None] = {}
        self.shadowed = shadowed
        self.sensitive = False
        self.changesSettings = False
        self.shadows = False

    def kind(self, *words: str) -> None:
        for w in words:
            self.kinds.setdefault(w)
            if w.startswith(("DROP ", "ALTER ", "CREATE ")):
                self.kinds.setdefault(w.split(" ", 1)[0])

    def effect(self, *words: str) -> None:
        for w in words:
            self.effects.setdefault(w)
            if w == "high-risk":
                self.kinds.setdefault(HIGH_RISK)

    def sub(self, node) -> "_Walker":
        s = _Walker(self.shadowed)
        s.statement(node)
        s.finish()
        self.sensitive |= s.sensitive
        self.changesSettings |= s.changesSettings
        self.shadows |= s.shadows
        return s

    def merge(self, s: "_Walker") -> None:
        self.kinds.update(s.kinds)
        self.effects.update(s.effects)
        self.relations.update(s.relations)
        self.calls.update(s.calls)

    def value(self, node):
        """A constant's value: reading one makes the verdict depend on it."""
        self.sensitive = True
        v = getattr(node, "val", node)
        for attr in ("sval", "ival", "fval", "boolval", "bsval"):
            if hasattr(v, attr):
                return getattr(v, attr)
        return v

    def statement(self, node) -> None:
        name = type(node).__name__
        # pglast types every node field Optional; the parser always fills
        # the ones read below, so the asserts only narrow the types.
        if isinstance(node, ast.TransactionStmt):
            assert node.kind is not None
            self.kind(_TRANSACTION.get(int(node.kind), "TRANSACTION"))
            # Ending a transaction ends its SET LOCALs (and undoes its SETs).
            self.changesSettings |= int(node.kind) not in (0, 1, 4)
        elif isinstance(node, ast.ExplainStmt):
            return self.explain(node)
        elif isinstance(node, ast.PrepareStmt):
            self.kind("PREPARE")
            s = self.sub(node.query)
            self.prepares.append((node.name, tuple(s.kinds), tuple(s.effects)))
            self.merge(s)
            return
        elif isinstance(node, ast.ExecuteStmt):
            self.kind("EXECUTE")
            assert node.name is not None
            self.executes.append(node.name)
        elif isinstance(node, ast.DeallocateStmt):
            self.kind("DEALLOCATE")
            self.deallocates.append(node.name or "")
        elif isinstance(node, ast.CopyStmt):
            self.copy(node)
        elif isinstance(node, ast.VariableSetStmt):
            self.setting(node)
        elif isinstance(node, ast.CreateFunctionStmt):
            self.kind("CREATE PROCEDURE" if node.is_procedure else "CREATE FUNCTION")
            self.effect("defines-objects", "runs-server-code")
            self.functionBody(node)
        elif isinstance(node, ast.SelectStmt) and node.intoClause is not None:
            self.kind("SELECT", "SELECT INTO")
            self.effect("writes-rows", "defines-objects")
        else:
            self.generic(node, name)
        self.walk(node)

    def generic(self, node, name: str) -> None:
        if isinstance(node, (ast.GrantStmt, ast.GrantRoleStmt)):
            self.kind("GRANT" if node.is_grant else "REVOKE")
        else:
            self.kind(_words(name))
        if isinstance(node, ast.DropStmt):
            assert node.removeType is not None
            self.kind(f"DROP {objectWords(node.removeType)}")
            if node.removeType in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW,
                                   ObjectType.OBJECT_MATVIEW, ObjectType.OBJECT_SEQUENCE,
                                   ObjectType.OBJECT_FOREIGN_TABLE):
                for obj in node.objects or ():
                    if isinstance(obj, (tuple, list)):
                        self.relations.setdefault(".".join(s.sval for s in obj if hasattr(s, "sval")))
        elif isinstance(node, ast.RenameStmt):
            assert node.renameType is not None
            self.kind("RENAME", f"ALTER {objectWords(node.renameType)}")
            if node.relation is not None and node.renameType not in (
                    ObjectType.OBJECT_TABLE, ObjectType.OBJECT_VIEW, ObjectType.OBJECT_INDEX,
                    ObjectType.OBJECT_SEQUENCE, ObjectType.OBJECT_MATVIEW,
                    ObjectType.OBJECT_FOREIGN_TABLE):
                self.kind("ALTER TABLE")
            self.effect("renames")
        elif isinstance(node, ast.AlterObjectSchemaStmt):
            assert node.objectType is not None
            self.kind("ALTER", "SET SCHEMA", f"ALTER {objectWords(node.objectType)}")
            self.effect("changes-schema")
        elif isinstance(node, ast.AlterOwnerStmt):
            assert node.objectType is not None
            self.kind("ALTER", f"ALTER {objectWords(node.objectType)}")
            self.effect("changes-owner")
        elif isinstance(node, ast.AlterTableStmt):
            self.kind("ALTER", f"ALTER {objectWords(node.objtype or ObjectType.OBJECT_TABLE)}")
            for cmd in node.cmds or ():
                e = _AT_EFFECTS.get(getattr(cmd, "subtype", None))
                if e is not None:
                    self.effect(e)
        elif isinstance(node, ast.RuleStmt):
            for action in node.actions or ():
                self.merge(self.sub(action))
        if name.startswith("Drop") or isinstance(node, (ast.DropStmt, ast.DropOwnedStmt)):
            self.kind("DROP")
            self.effect("drops-object")
        elif name.startswith(("Alter", "Create", "Define", "Comment", "SecLabel", "Import",
                              "Rename", "Reassign")) or name in ("IndexStmt", "ViewStmt", "RuleStmt"):
            if name.startswith("Alter"):
                self.kind("ALTER")
            self.effect("defines-objects")
        if isinstance(node, ast.TruncateStmt):
            self.effect("truncates")
        if name == "ReassignOwnedStmt":
            self.effect("changes-owner")
        if name in _ROLES:
            self.effect("changes-roles")
        if name in _PRIVILEGES or isinstance(node, ast.GrantRoleStmt):
            self.effect("changes-privileges")
        if name in _CODE:
            self.effect("runs-server-code")
            self.changesSettings = True
        if name in _HOOKS or isinstance(node, (ast.DoStmt, ast.CallStmt)):
            self.effect("high-risk")
        if name in ("AlterSystemStmt", "CreateTableSpaceStmt"):
            self.effect("writes-server-files")
        if isinstance(node, ast.DiscardStmt):
            self.changesSettings = True

    def explain(self, node) -> None:
        self.kind("EXPLAIN")
        # EXPLAIN takes each option in order and the last one wins; a value
        # the server would refuse is taken as on, so a doubt runs the query.
        analyze = False
        for o in node.options or ():
            if getattr(o, "defname", "") == "analyze":
                analyze = o.arg is None or str(self.value(o.arg)).lower() not in (
                    "false", "off", "0", "False")
                if analyze:
                    break
        if analyze:
            self.kind("EXPLAIN ANALYZE")
            self.statement(node.query)
            return
        # A plain EXPLAIN runs nothing but what planning evaluates: relations
        # and the functions it may fold.
        s = self.sub(node.query)
        self.relations.update(s.relations)
        self.calls.update(s.calls)
        for e in ("runs-server-code", "reads-server-files", "high-risk"):
            if e in s.effects:
                self.effect(e)

    def copy(self, node) -> None:
        self.kind("COPY", "COPY FROM" if node.is_from else "COPY TO")
        if node.is_from:
            self.effect("writes-rows")
        if node.is_program:
            self.kind("COPY PROGRAM")
            self.effect("runs-os-command", "high-risk")
        elif node.filename is not None:
            self.effect("reads-server-files" if node.is_from else "writes-server-files")

    def setting(self, node) -> None:
        self.kind("SET")
        name = (node.name or "").lower()
        if node.kind == VariableSetKind.VAR_RESET_ALL or name in fx.PARSE_SETTINGS:
            self.effect("changes-parsing")
            self.changesSettings = True
        if name in ("role", "session_authorization"):
            self.effect("changes-roles")
        if name == "search_path" and node.kind == VariableSetKind.VAR_SET_VALUE:
            path = [str(self.value(a)).lower() for a in node.args or ()]
            if "pg_catalog" in path and path[0] != "pg_catalog":
                # Later statements of the same text resolve names under it.
                self.shadows = self.shadowed = True

    def functionBody(self, node) -> None:
        if node.sql_body is not None:
            body = node.sql_body
            for stmt in body[0] if isinstance(body, tuple) and body and isinstance(body[0], tuple) \
                    else (body,):
                self.merge(self.sub(stmt))
            return
        opts = {o.defname: o.arg for o in node.options or () if isinstance(o, ast.DefElem)}
        language = str(self.value(opts["language"])).lower() if "language" in opts else "sql"
        src = opts.get("as")
        text = self.value(src[0]) if isinstance(src, tuple) and len(src) == 1 else None
        if language == "sql" and isinstance(text, str):
            self.merge(_bodyWalker(text, self.shadowed))
        elif language == "plpgsql" and isinstance(text, str):
            try:
                embedded = embeddedSQL(node)
            except Unjudgeable:
                self.effect("high-risk")
                return
            for sql in embedded:
                self.merge(_bodyWalker(sql, self.shadowed))
        else:
            # C, plpython, a language we cannot read: what it runs is unknown.
            self.effect("high-risk")

    def call(self, n) -> None:
        names = [getattr(s, "sval", "") for s in n.funcname or ()]
        base = names[-1] if names else ""
        if fx.isBuiltin(names, self.shadowed):
            extra = fx.DANGEROUS_FUNCTIONS.get(base, ())
            self.effect(*extra)
            if base == "set_config":
                self.changesSettings = True
                arg = (n.args or (None,))[0]
                what = self.value(arg) if isinstance(arg, ast.A_Const) else None
                if not isinstance(what, str) or what.lower() == "search_path":
                    self.shadows = self.shadowed = True
            return
        self.kind(HIGH_RISK)
        self.effect("runs-server-code", "high-risk")
        self.calls.setdefault(".".join(names))
        self.changesSettings = True

    def dml(self, n) -> None:
        self.effect("writes-rows")
        if isinstance(n, ast.UpdateStmt) and not fx.effective(n.whereClause):
            self.kind("UPDATE WITHOUT WHERE")
            self.effect("updates-all-rows")
        elif isinstance(n, ast.DeleteStmt) and not fx.effective(n.whereClause):
            self.kind("DELETE WITHOUT WHERE")
            self.effect("deletes-all-rows")
        elif isinstance(n, ast.MergeStmt):
            for when in n.mergeWhenClauses or ():
                # The join may match every row (a table merged with itself):
                # only an action's own condition can tell rows apart.
                what = int(when.commandType or 0)
                if what == 4:
                    self.kind("DELETE", "MERGE DELETE")
                    self.effect("merge-deletes")
                    if not fx.effective(when.condition):
                        self.kind("DELETE WITHOUT WHERE")
                        self.effect("deletes-all-rows")
                elif what == 2:
                    self.kind("UPDATE", "MERGE UPDATE")
                    if not fx.effective(when.condition):
                        self.kind("UPDATE WITHOUT WHERE")
                        self.effect("updates-all-rows")

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
            elif isinstance(n, ast.FuncCall):
                self.call(n)
            if isinstance(n, _WRITES):
                self.dml(n)
            elif isinstance(n, ast.SelectStmt) and n.intoClause is not None and n is not node:
                self.kind("SELECT INTO")
                self.effect("writes-rows", "defines-objects")
            for attr in n.__slots__:
                v = getattr(n, attr, None)
                if isinstance(v, (ast.Node, tuple, list)):
                    stack.append(v)

    def finish(self) -> None:
        for c in self.ctes:
            self.relations.pop(c, None)

    def result(self, count: int) -> Classification:
        self.finish()
        return Classification(tuple(self.kinds), tuple(self.effects), tuple(self.relations),
                              tuple(self.prepares), tuple(self.executes), tuple(self.deallocates),
                              tuple(self.calls), count, self.sensitive, self.changesSettings,
                              self.shadows)


def _bodyWalker(text: str, shadowed: bool) -> _Walker:
    """The statements of a SQL function body, as one walker."""
    w = _Walker(shadowed)
    try:
        stmts = pglast.parse_sql(text)
    except Exception:
        w.effect("high-risk")
        return w
    for raw in stmts:
        w.statement(raw.stmt)
    w.finish()
    return w


KINDS = _vocabulary()

_LITERALS = re.compile(r"'[^']*'|\b\d+(?:\.\d+)?\b")
#: Texts with these may hide code from a simple literal scan (comments,
#: backslash escapes, dollar quoting, quoted identifiers): cached verbatim.
_UNSAFE = ("\\", "$", "--", "/*", '"')
_CACHE: dict[tuple[bool, bool, str], Classification] = {}
_CACHE_MAX = 8192


def cacheKey(text: str) -> str:
    """
    The text with literals replaced, so C{WHERE aid = 1} and C{WHERE aid = 2}
    share one entry.  Only texts a plain scan tokenizes exactly as the
    parser does are folded; the entry is used only when the classification
    read no constant's value (L{Classification.sensitive}).
    """
    for u in _UNSAFE:
        if u in text:
            return text
    return _LITERALS.sub("?", text)


def classify(text: str, shadowed: bool = False) -> Classification:
    """
    Classify every statement in C{text} (a Query string or a Parse's
    statement, as the server will tokenize it: see L{sqltext}).  Text the
    parser refuses is L{HIGH_RISK}: Postgres will refuse it too, but a rule
    must not let an unjudged statement through.  C{shadowed}: pg_catalog
    may not come first on the session's search_path.
    """
    folded = (True, shadowed, cacheKey(text))
    hit = _CACHE.get(folded)
    if hit is not None:
        return hit
    exact = (False, shadowed, text)
    hit = _CACHE.get(exact)
    if hit is not None:
        return hit
    c = _classify(text, shadowed)
    if len(_CACHE) >= _CACHE_MAX:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[exact if c.sensitive else folded] = c
    return c


def _classify(text: str, shadowed: bool = False) -> Classification:
    try:
        stmts = pglast.parse_sql(text)
    except Exception:
        return uncertain()
    w = _Walker(shadowed)
    for raw in stmts:
        w.statement(raw.stmt)
    return w.result(len(stmts))
