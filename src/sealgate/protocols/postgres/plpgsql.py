"""The SQL a PL/pgSQL body runs, read with PostgreSQL's own PL/pgSQL parser (pglast)."""

import pglast
from pglast.stream import RawStream

#: PL/pgSQL statements that run SQL built at run time: nothing can judge it.
_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors"})


class Unjudgeable(Exception):
    """The body runs dynamic SQL or cannot be parsed."""


def _asStatement(query: str, mode: int) -> str:
    if mode == 0:
        return query
    if mode in (3, 4, 5):
        # "target := expression": only the expression runs anything.
        _, sep, rhs = query.partition(":=")
        if not sep:
            _, sep, rhs = query.partition("=")
        if not sep:
            raise Unjudgeable(query)
        query = rhs
    return "SELECT " + query


def embeddedSQL(createFunction) -> list[str]:
    """
    Every SQL statement or expression a PL/pgSQL function (a
    C{CreateFunctionStmt} node) can run, as statements; raises
    L{Unjudgeable} for dynamic SQL or a body the parser refuses.
    """
    try:
        tree = pglast.parse_plpgsql(RawStream()(createFunction))
    except Exception as e:
        raise Unjudgeable(str(e)) from None
    out: list[str] = []
    stack: list = [tree]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, dict):
            for k, v in n.items():
                if k in _DYNAMIC or (k == "PLpgSQL_stmt_open" and "dynquery" in v):
                    raise Unjudgeable(k)
                if k == "PLpgSQL_expr":
                    out.append(_asStatement(v.get("query", ""), int(v.get("parseMode", 0))))
                else:
                    stack.append(v)
    return out
