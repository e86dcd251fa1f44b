"""What the store's read interface returns: sessions as their sealed log leaves tell it, and queries over them."""

import attrs

#: The states a sealed session can be in (a live one is "open" to the store).
STATES = ("open", "closed", "cut off")


def _subject(identity) -> str:
    if isinstance(identity, dict):
        # Namespaced ids (apikey:..., oidc:issuer#sub); recordings from
        # before them carry only the bare subject.
        return str(identity.get("id") or identity.get("subject") or identity.get("name") or "")
    return "" if identity is None else str(identity)


@attrs.frozen
class SessionQuery:
    """
    Which sessions to list, newest first.  Every filter is optional; they combine with AND.

    @ivar identity: case-insensitive part of the identity's subject (or name).
    @ivar connection: the connection's name, exactly.
    @ivar protocol: the protocol's name, exactly.
    @ivar client: the client address as recorded ("host:port"), exactly.
    @ivar state: one of L{STATES}.
    @ivar since: opened at or after this Unix time.
    @ivar until: opened before this Unix time.
    @ivar command: case-insensitive part of the text of a command sealed in the session.
    @ivar ids: only these session ids (the gateway's live sessions, say).
    @ivar limit: at most this many.
    """

    identity: str | None = None
    connection: str | None = None
    protocol: str | None = None
    client: str | None = None
    state: str | None = None
    since: float | None = None
    until: float | None = None
    command: str | None = None
    ids: frozenset | None = None
    limit: int | None = None

    def __attrs_post_init__(self):
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")

    def matchesOpen(self, sessionId: str, openBody: dict) -> bool:
        """Whether a session passes the filters its sealed OPEN leaf can decide."""
        if self.ids is not None and sessionId not in self.ids:
            return False
        info = openBody.get("info") or {}
        if self.identity is not None and self.identity.lower() not in _subject(info.get("identity")).lower():
            return False
        for key in ("connection", "protocol", "client"):
            want = getattr(self, key)
            if want is not None and str(info.get(key)) != want:
                return False
        opened = openBody.get("time") or 0.0
        if self.since is not None and opened < self.since:
            return False
        return self.until is None or opened < self.until

    def matchesCommands(self, commands) -> bool:
        """Whether one of a session's sealed command texts contains L{command}."""
        if self.command is None:
            return True
        want = self.command.lower()
        return any(want in text.lower() for text in commands)


@attrs.frozen
class SessionRecord:
    """
    One session as its sealed leaves tell it: the OPEN leaf (who, where,
    when) and the latest PROGRESS or CLOSE leaf (size, root, byte counts,
    how it ended).  Nothing here comes from a table the operator could edit
    without C{sealgate verify} noticing.
    """

    id: str
    state: str
    opened: float
    closed: float | None
    protocol: str | None
    connection: str | None
    identity: str
    client: str | None
    frames: int
    root: str | None
    bytesFromClient: int
    bytesToClient: int
    reason: str | None
    openLeaf: int
    sealLeaf: int | None
    info: dict = attrs.field(factory=dict, eq=False)
    #: The fleet node whose log holds it (None: the embedded store's own).
    node: str | None = None

    @classmethod
    def fromLeaves(cls, openBody: dict, lastSeal: dict | None) -> "SessionRecord":
        """
        @param openBody: the parsed OPEN leaf.
        @param lastSeal: the session's latest parsed PROGRESS or CLOSE leaf, if any.
        """
        info = openBody.get("info") or {}
        seal = lastSeal or {}
        closing = seal.get("type") == "close"
        counts = seal.get("bytes") or {}
        state = ("cut off" if seal.get("cutoff") else "closed") if closing else "open"
        return cls(
            id=str(openBody.get("session")), state=state, opened=float(openBody.get("time") or 0.0),
            closed=float(seal["time"]) if closing and seal.get("time") is not None else None,
            protocol=info.get("protocol"), connection=info.get("connection"),
            identity=_subject(info.get("identity")), client=info.get("client"),
            frames=int(seal.get("size") or 0), root=seal.get("root") if closing else None,
            bytesFromClient=int(counts.get("from_client") or 0), bytesToClient=int(counts.get("to_client") or 0),
            reason=seal.get("reason") if closing else None, openLeaf=int(openBody["n"]),
            sealLeaf=int(seal["n"]) if seal else None, info=info)

    def asJSON(self) -> dict:
        """The record as the CLI's and the admin API's JSON show it (docs/audit.md)."""
        return {
            "id": self.id, "state": self.state, "opened": self.opened, "closed": self.closed,
            "protocol": self.protocol, "connection": self.connection, "identity": self.identity,
            "client": self.client, "frames": self.frames, "bytes_from_client": self.bytesFromClient,
            "bytes_to_client": self.bytesToClient, "reason": self.reason, "root": self.root,
            "open_leaf": self.openLeaf, "seal_leaf": self.sealLeaf, "info": self.info,
            **({} if self.node is None else {"node": self.node}),
        }


def commandTexts(events) -> list[str]:
    """The texts of the commands sealed among a session's parsed log leaves."""
    return [str((e.get("fields") or {}).get("command") or "") for e in events
            if e.get("type") == "event" and e.get("event") == "command"]


def leafMayMatch(leaf: bytes, needle: str) -> bool:
    """
    Whether a stored log leaf could hold a command containing C{needle}
    (any case), without parsing it: False only when it surely does not.
    An ASCII leaf holds an ASCII needle's text verbatim (canonical JSON
    escapes only quotes, backslashes and controls), and ASCII text
    lowercases bytewise; anything else is left to the parse.
    """
    needle = needle.lower()
    if not (needle.isascii() and needle.isprintable()) or '"' in needle or "\\" in needle:
        return True
    return not leaf.isascii() or needle.encode() in leaf.lower()


def lastSeal(leaves) -> dict | None:
    """The latest PROGRESS or CLOSE among parsed log leaves (a CLOSE wins: nothing seals after it)."""
    last = None
    for body in leaves:
        if body.get("type") == "close":
            return body
        if body.get("type") == "progress" and (last is None or body["n"] > last["n"]):
            last = body
    return last


def parseTime(text: str) -> float:
    """
    A time as people and scripts write it: Unix seconds or ISO 8601; one
    without a zone is UTC, as every time sealgate prints.

    @raise ValueError: neither.
    """
    import datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither ISO 8601 (2026-12-02T09:00:00Z) nor a Unix time")
    return (t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp()
