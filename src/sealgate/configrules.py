"""Rules in the config: matchers, their vocabularies and presets, approver-group warnings."""

import difflib
import re
from collections.abc import Mapping
from typing import Any

import attrs

from sealgate.chain.policy import WORD_KEYS, normalWords
from sealgate.configtable import Table, Where


@attrs.frozen
class Rule:
    """
    A guardrail, approval or allow rule.  Rules are checked in file order and
    the first that matches a command decides.

    @ivar matchers: protocol matcher keys and values (C{statements},
        C{relations}, C{sql_regex}, C{commands}, C{methods}, C{paths},
        C{headers}, ...).
    """

    name: str
    connections: tuple[str, ...]
    groups: tuple[str, ...]
    action: str
    matchers: Mapping[str, Any]
    reason: str = ""
    approvers: tuple[str, ...] = ()
    approvals_needed: int = 1
    expires: float = 300.0


#: Matcher keys every rule may use; protocol plugins add theirs through an
#: optional C{ruleKeys} attribute.
BASE_RULE_KEYS = frozenset(
    {"statements", "relations", "sql_regex", "commands", "methods", "paths", "headers", "kinds"}
)

# -- the whole file ----------------------------------------------------------


def knownConnections(t: Table, key: str, conns: tuple[str, ...], names: set[str]) -> None:
    for c in conns:
        if c != "*" and c not in names:
            raise t.where.error(key, f"no connection named {c!r}",
                                f"use \"*\" or one of: {', '.join(sorted(names)) or '(none defined)'}")



def parseRule(t: Table, names: set[str], ruleKeys: set[str], words: "RuleWords | None" = None) -> Rule:
    name = t.str("name", required=True)
    t.where = Where(t.where.path, f"{t.where.table} ({name})")
    action = t.str("action", required=True)
    if action not in ("deny", "approve", "allow"):
        raise t.where.error("action", f"unknown action {action!r}", "use deny, approve or allow")
    conns = t.strings("connections", ("*",))
    knownConnections(t, "connections", conns, names)
    matchers: dict[str, Any] = {}
    for key in list(t.data):
        if key in ruleKeys:
            t.used.add(key)
            value = t.data[key]
            if key == "headers":
                if not isinstance(value, dict):
                    raise t.where.error(key, "must be a table of header = regex")
                for h, rx in value.items():
                    _regex(t, f"headers.{h}", rx)
            elif key in ("sql_regex",):
                _regex(t, key, value)
            else:
                value = t.strings(key)
                if key in ("commands", "paths"):
                    for rx in value:
                        _regex(t, key, rx)
            matchers[key] = value
    if words is not None:
        words.check(t, matchers)
    approvers = t.strings("approvers")
    needed = t.number("approvals_needed", 1, minimum=1)
    if action == "approve" and not approvers:
        raise t.where.error("approvers", "an approve rule needs approver groups",
                            'add approvers = ["leads"]')
    rule = Rule(
        name=name, connections=conns, groups=t.strings("groups", ("*",)), action=action,
        matchers=matchers, reason=t.str("reason", ""), approvers=approvers,
        approvals_needed=int(needed), expires=t.duration("expires", 300.0),
    )
    t.finish(known=ruleKeys)
    return rule


class RuleWords:
    """
    The vocabularies protocol plugins give rule keys (C{ruleVocabulary}:
    key -> valid words) and their named presets (C{rulePresets}: name ->
    matchers), so a misspelt word or preset is a config error.
    """

    def __init__(self, plugins):
        self.vocabulary: dict[str, set[str]] = {}
        self.presets: dict[str, Mapping[str, tuple[str, ...]]] = {}
        for p in plugins:
            for key, valid in getattr(p, "ruleVocabulary", {}).items():
                self.vocabulary.setdefault(key, set()).update(normalWords(key, valid))
            self.presets.update(getattr(p, "rulePresets", {}))

    def check(self, t: Table, matchers: dict) -> None:
        preset = t.str("preset")
        if preset is not None:
            if preset not in self.presets:
                known = ", ".join(sorted(self.presets)) or "none: no protocol here has presets"
                raise t.where.error("preset", f"unknown preset {preset!r}"
                                    + _nearest(preset, self.presets), f"use one of: {known}")
            for key, values in self.presets[preset].items():
                matchers[key] = tuple(dict.fromkeys((*matchers.get(key, ()), *values)))
        for key, valid in self.vocabulary.items():
            for word in normalWords(key, matchers.get(key, ())) if key in WORD_KEYS else ():
                if word not in valid:
                    raise t.where.error(key, f"unknown word {word!r}" + _nearest(word, valid),
                                        f"use any of: {', '.join(sorted(valid))}")


def _nearest(word: str, valid) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _regex(t: Table, key: str, rx: Any) -> None:
    if not isinstance(rx, str):
        raise t.where.error(key, "must be a regular expression string")
    try:
        re.compile(rx)
    except re.error as e:
        raise t.where.error(key, f"bad regular expression {rx!r}: {e}",
                            "fix the pattern (Python re syntax)")


def approverWarnings(path, rules, roles, admin, identity) -> tuple[str, ...]:
    """
    Approver groups nothing in the file gives anyone.  Only a warning: API
    keys, SSH keys and the OIDC issuer's group claim may still carry them,
    but a misspelt group leaves every ticket of its rule to expire.
    """
    known = {g for r in roles for g in r.groups}
    known.update(admin.approvers, admin.admins, identity.admins)
    out = []
    for n, rule in enumerate(rules):
        for g in rule.approvers:
            if g not in known:
                near = difflib.get_close_matches(g, sorted(known), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                out.append(f"{path}: rules[{n}] ({rule.name}).approvers: no role or [admin] list "
                           f"names the group {g!r}{hint}; unless an API key, SSH key or the OIDC "
                           f"groups claim carries it, this rule's tickets can only expire")
    return tuple(out)
