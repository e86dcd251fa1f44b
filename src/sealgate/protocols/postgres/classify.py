"""Classify SQL by what it does, with the Postgres grammar itself (pglast), cached safely."""

import re

import pglast
from pglast import ast

from sealgate.protocols.postgres import effects as fx
from sealgate.protocols.postgres._walk import Classification, _vocabulary, _Walker, uncertain
from sealgate.protocols.postgres.effects import HIGH_RISK

__all__ = ["HIGH_RISK", "KINDS", "Classification", "classify", "fastpath", "functionBody",
           "uncertain"]


def fastpath(oid: int) -> Classification:
    """A fastpath FunctionCall of the function with this OID."""
    if oid in fx.FASTPATH_SAFE_OIDS:
        return Classification(("FUNCTION CALL",), (), count=1)
    return Classification(("FUNCTION CALL", HIGH_RISK), ("runs-server-code", "high-risk"),
                          count=1, changesSettings=True, risky=True, redefines=True)


KINDS = _vocabulary()

# A number is \b\d+(?:\.\d+)?\b; written to start with \d (the boundary
# before it as a lookbehind: no word character before the first digit), the
# regex engine skips to digits instead of trying every position.  Same
# matches (tests/test_pg_fastchecks.py holds the patterns as they were).
_LITERALS = re.compile(r"'[^']*'|\d(?<!\w\d)\d*(?:\.\d+)?\b")
_NUMBERS = re.compile(r"\d(?<!\w\d)\d*(?:\.\d+)?\b")
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
    # Without a quote only the number branch can match: the same fold, faster.
    return _LITERALS.sub("?", text) if "'" in text else _NUMBERS.sub("?", text)


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


def functionBody(definition: str) -> Classification:
    """
    What a function or procedure runs, from its definition (a CREATE
    FUNCTION text, as pg_get_functiondef gives it).
    """
    try:
        stmts = pglast.parse_sql(definition)
    except Exception:
        return uncertain()
    node = stmts[0].stmt if len(stmts) == 1 else None
    if not isinstance(node, ast.CreateFunctionStmt):
        return uncertain()
    w = _Walker()
    w.functionBody(node)
    return w.result(1)
