"""Hook records: small typed, immutable views of one parsed message."""

from collections.abc import Mapping
from typing import Any

import attrs

_EMPTY: Mapping[str, Any] = {}


@attrs.frozen
class SessionStart:
    """A session is about to start (the access check)."""

    session: Any


@attrs.frozen
class Command:
    """
    One command a session wants to run.  C{details} is the protocol's own
    mapping, not copied: interceptors must not change it.

    @ivar kind: what sort of command: "sql", "exec", "sftp", "http", "line"...
    @ivar text: the command as a human reads it (the SQL, the command line,
        "GET /path").  Rules' regexes match on it.
    @ivar details: protocol-defined facts rules match on, e.g.
        C{{"statements": ("DROP",), "relations": ("users",)}} for SQL or
        C{{"method": "DELETE", "path": "/x", "headers": {...}}} for HTTP.
    """

    session: Any
    kind: str
    text: str
    details: Mapping[str, Any] = _EMPTY


@attrs.frozen
class Output:
    """
    Data on its way to the client.

    @ivar data: C{str} or C{bytes}.
    @ivar context: e.g. C{{"column": "email"}} or C{{"content_type": ...}}.
    """

    session: Any
    data: Any
    context: Mapping[str, Any] = _EMPTY


@attrs.frozen
class SessionEnd:
    """The session ended (normal close, error, cut off)."""

    session: Any
    reason: str
