"""Sans-IO: a client request head as the relay takes it, its target normalized and its one Host found."""

from typing import Any

import attrs

from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._target import TargetRefused, hostName, normalizeTarget


@attrs.define(slots=True, eq=False)
class Request:
    """
    One parsed client request; C{headers} keep the client's order and
    spelling.  C{target}, C{path} and C{query} are normalized: what routing,
    rules and the backend see; C{sent} is the target as the client sent it.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: tuple
    low: dict
    names: list
    path: bytes
    query: bytes | None
    #: The one Host: an absolute-form target's authority, else the header.
    host: bytes
    sent: bytes
    framing: _framing.BodyFraming | None
    keepAlive: bool
    #: Why the strict form was refused, when the target is in lenient form.
    lenient: str | None = None
    body: Any = None
    bodySize: int = 0

    @property
    def chunked(self) -> bool:
        return self.framing is not None and self.framing.kind == "chunked"

    def get(self, name: bytes) -> bytes | None:
        values = self.low.get(name)
        return values[0] if values else None


def parseRequest(raw: bytes, lenientToo: bool = False) -> Request:
    """
    A request head (without its blank line) as the relay takes it.

    @param lenientToo: a target refused in strict form is retried in
        lenient form (some connection of the listener allows it); the
        request says so in C{lenient}.
    @raise _wire.ProtocolError: not HTTP/1.1 as the relay takes it.
    @raise TargetRefused: its target or Host cannot be normalized safely.
    """
    head, low, names = _wire.parseHeadIndexed(raw, False, strict=True)
    framing = _framing.requestFraming(low, head.version)
    hosts = low.get(b"host")
    if hosts is None or len(hosts) != 1:
        raise TargetRefused("a request needs exactly one Host header")
    hostName(hosts[0])
    lenient = None
    try:
        target = normalizeTarget(head.target, head.method)
    except TargetRefused as e:
        if not lenientToo:
            raise
        target, lenient = normalizeTarget(head.target, head.method, lenient=True), str(e)
    tokens = b",".join(low.get(b"connection", ())).lower()
    return Request(
        head.method, target.originForm, head.version, head.headers, low, names, target.path,
        target.query, target.authority or hosts[0], head.target, framing,
        # HTTP/1.0 clients get one response per connection, ended by close.
        head.version == b"HTTP/1.1" and b"close" not in tokens, lenient)
