"""Matching helpers shared by built-in interceptors: names, groups, rule matchers."""

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase, translate
from typing import Any


def nameMatches(patterns: Iterable[str], name: str) -> bool:
    """C{"*"} or a glob in C{patterns} matches C{name}."""
    return any(p == "*" or p == name or fnmatchcase(name, p) for p in patterns)


def groupsMatch(patterns: Iterable[str], groups: Iterable[str]) -> bool:
    patterns = tuple(patterns)
    if "*" in patterns:
        return True
    return any(nameMatches(patterns, g) for g in groups)


def _words(values: Iterable[str]) -> frozenset[str]:
    return frozenset(" ".join(v.upper().split()) for v in values)


#: Matcher keys whose values are words from a protocol's vocabulary, and
#: the case that vocabulary is written in.
WORD_KEYS = {"statements": str.upper, "effects": str.lower}


def normalWords(key: str, values: Iterable[str]) -> frozenset[str]:
    """A rule's words for C{key} as protocols report them: one case, single spaces."""
    case = WORD_KEYS[key]
    return frozenset(" ".join(case(v).split()) for v in values)


def _asTuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


class RuleMatcher:
    """
    A rule's matchers compiled once.  A command matches when every matcher
    the rule has matches (a rule with none matches every command); a matcher
    whose fact the command lacks does not match.
    """

    _COMMAND_KINDS = frozenset({"exec", "sftp", "shell", "line"})

    def __init__(self, matchers: dict):
        self._checks = []
        for key, value in matchers.items():
            self._checks.append(self._compile(key, value))

    def _compile(self, key: str, value: Any):
        if key in WORD_KEYS:
            # Protocols report statement kinds as upper-case words with single
            # spaces ("DELETE WITHOUT WHERE") and effects in lower case
            # ("drops-object"), so a set lookup is enough.
            wanted = normalWords(key, value)

            def words(h):
                for word in h.details.get(key, ()):
                    if word in wanted:
                        return True
                return False
            return words
        if key == "methods":
            wanted = _words(value)
            return lambda h: str(h.details.get("method", "")).upper() in wanted
        if key == "kinds":
            kinds = frozenset(value)
            return lambda h: h.kind in kinds
        if key == "sql_regex":
            rx = re.compile(value, re.I | re.S)
            return lambda h: h.kind == "sql" and rx.search(h.text) is not None
        if key == "commands":
            rxs = [re.compile(v) for v in value]
            kinds = self._COMMAND_KINDS
            return lambda h: h.kind in kinds and any(r.search(h.text) for r in rxs)
        if key == "paths":
            rxs = [re.compile(v) for v in value]
            return lambda h: any(r.search(str(h.details.get("path", ""))) for r in rxs)
        if key == "headers":
            headerRxs = {k.lower(): re.compile(v) for k, v in value.items()}

            def headers(h):
                have = h.details.get("headers") or {}
                return all(r.search(str(have.get(k, ""))) for k, r in headerRxs.items())
            return headers
        # relations and matcher keys that protocol plugins add: globs over a
        # fact of the same name, compiled into one regex.
        rx = re.compile("|".join(translate(p) for p in _asTuple(value)), re.I)

        def globs(h):
            for v in _asTuple(h.details.get(key)):
                if rx.match(str(v)):
                    return True
            return False
        return globs

    def matches(self, hook) -> bool:
        for check in self._checks:
            if not check(hook):
                return False
        return True
