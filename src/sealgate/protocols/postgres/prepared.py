"""A session's prepared statements, so EXECUTE is judged by what the statement it names runs."""

import attrs

from sealgate.protocols.postgres.classify import Classification
from sealgate.protocols.postgres.effects import HIGH_RISK


def _add(into: list, words) -> None:
    for w in words:
        if w not in into:
            into.append(w)


@attrs.define
class PreparedStatements:
    """
    What each prepared statement of one session does.  SQL PREPARE and the
    extended protocol's named Parse share one namespace on the server, so
    both are tracked; an EXECUTE of a name the gateway never let through is
    HIGH RISK (the server will refuse it, but nothing unjudged runs).
    """

    _known: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = attrs.field(factory=dict)

    def details(self, c: Classification) -> dict:
        """C{c}'s details, with what each EXECUTE in it runs."""
        details = c.details()
        if not c.executes:
            return details
        statements, effects = list(c.statements), list(c.effects)
        for name in c.executes:
            known = self._known.get(name)
            if known is None:
                _add(statements, (HIGH_RISK,))
                _add(effects, ("high-risk",))
            else:
                _add(statements, known[0])
                _add(effects, known[1])
        details["statements"], details["effects"] = tuple(statements), tuple(effects)
        return details

    def allowed(self, c: Classification, parsedAs: str | None = None) -> None:
        """C{c} goes to the server; C{parsedAs}: the name of the Parse that carries it."""
        for name in c.deallocates:
            if name:
                self._known.pop(name, None)
            else:
                self._known.clear()
        if "DISCARD" in c.statements:
            self._known.clear()
        for name, kinds, effects in c.prepares:
            self._known[name] = (kinds, effects)
        if parsedAs:
            self._known[parsedAs] = (c.statements, c.effects)

    def closed(self, name: str) -> None:
        """A Close of a named statement."""
        self._known.pop(name, None)
