"""The settings the server parses a session's next statement under, and judging text under them."""

import attrs

from sealgate.protocols.postgres.classify import Classification, classify, uncertain
from sealgate.protocols.postgres.effects import HIGH_RISK
from sealgate.protocols.postgres.sqltext import Uncertain, asServerParses, decode

#: Startup parameters that may change name resolution unseen by the gateway.
_SHADOWING_STARTUP = ("search_path", "options")


@attrs.define
class SessionSettings:
    """
    One session's view of the settings that change how the server reads
    text.  The server reports standard_conforming_strings and
    client_encoding (ParameterStatus) at login and on every change; between
    sending a statement that may change them and the ReadyForQuery that
    ends it, the gateway cannot know their value, so a text they would read
    differently is judged under every value (and HIGH RISK if they differ).

    @ivar shadowed: a schema may come before pg_catalog on search_path, so
        an unqualified function name is not known to be a built-in.
    """

    standardStrings: bool = True
    encoding: str = "UTF8"
    serverEncoding: str = "UTF8"
    shadowed: bool = False
    _sent: int = 0
    _ready: int = 0
    _settledAt: int = 0

    def startup(self, params) -> None:
        """The client's startup parameters (name, value) pairs."""
        for k, v in params:
            if k in _SHADOWING_STARTUP and (k != "options" or "search_path" in v):
                self.shadowed = True

    def observe(self, raw: bytes) -> None:
        """A backend message; a ParameterStatus (C{S}) updates the settings."""
        if raw[:1] != b"S":
            return
        name, _, rest = raw[5:].partition(b"\0")
        value = rest.split(b"\0", 1)[0]
        self.parameterStatus(name.decode("ascii", "replace"), value.decode("ascii", "replace"))

    def parameterStatus(self, name: str, value: str) -> None:
        if name == "standard_conforming_strings":
            self.standardStrings = value.lower() == "on"
        elif name == "client_encoding":
            self.encoding = value.upper()
        elif name == "server_encoding":
            self.serverEncoding = value.upper()

    def sent(self) -> None:
        """A message that ends in one ReadyForQuery (Query, Sync, FunctionCall) went out."""
        self._sent += 1

    def ready(self) -> None:
        self._ready += 1

    def mayChange(self) -> None:
        """A statement that may change the settings goes out now."""
        # Its effect is known at the ReadyForQuery that follows it: the one
        # for the next Query, Sync or FunctionCall sent, counting this one's.
        self._settledAt = self._sent + 1

    @property
    def settled(self) -> bool:
        return self._ready >= self._settledAt

    def describe(self) -> dict:
        """The settings a statement is parsed under, for its audit event."""
        return {"standard_conforming_strings": "on" if self.standardStrings else "off",
                "client_encoding": self.encoding,
                "settled": self.settled}

    def judge(self, raw: bytes) -> tuple[str, Classification]:
        """
        The text the server will parse from C{raw} and what it does, read
        under every value the settings may have.
        """
        settled = self.settled
        try:
            if not settled and not raw.isascii():
                raise Uncertain("client_encoding may be changing")
            text = decode(raw, self.encoding, self.serverEncoding)
            modes = {self.standardStrings} if settled or "\\" not in text else {True, False}
            readings = [classify(asServerParses(text, m), self.shadowed) for m in sorted(modes)]
        except Uncertain:
            return raw.decode("utf-8", "surrogateescape"), uncertain()
        c = readings[0]
        if len(readings) > 1 and readings[0] != readings[1]:
            c = _union(readings)
        if c.changesSettings and c.count > 1 and ("\\" in text or not raw.isascii()):
            # A setting set inside the same string as text it would read
            # differently: be safe whichever way the server reads it.
            c = _union([c, uncertain()])
        if c.shadows:
            self.shadowed = True
        return text, c


def _union(cs: list[Classification]) -> Classification:
    def merged(field):
        seen: dict = {}
        for c in cs:
            for v in getattr(c, field):
                seen.setdefault(v)
        return tuple(seen)

    statements = merged("statements")
    effects = merged("effects")
    if HIGH_RISK not in statements:
        statements += (HIGH_RISK,)
    if "high-risk" not in effects:
        effects += ("high-risk",)
    return attrs.evolve(cs[0], statements=statements, effects=effects,
                        relations=merged("relations"), calls=merged("calls"),
                        prepares=merged("prepares"), executes=merged("executes"),
                        changesSettings=any(c.changesSettings for c in cs),
                        shadows=any(c.shadows for c in cs))
