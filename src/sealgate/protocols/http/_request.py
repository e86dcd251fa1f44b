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
    #: Bytes of the body as framed (chunk lines and trailers too).
    wireSize: int = 0
    #: What the relay derived from this head once (the forwarded and the
    #: recorded head, per backend), shared by the requests a
    #: L{HeadCache} made from the same bytes: they depend on nothing else.
    memo: dict = attrs.field(factory=dict)

    def again(self) -> "Request":
        """
        A new request from the same head: what was parsed is shared (it is
        never changed after parsing), what a request reads is fresh (its
        body framing, its body and the counts).
        """
        framing = self.framing
        if framing is not None:
            framing = _framing.BodyFraming(framing.kind, framing.length)
        return Request(self.method, self.target, self.version, self.headers, self.low, self.names,
                       self.path, self.query, self.host, self.sent, framing, self.keepAlive,
                       self.lenient, memo=self.memo)

    @property
    def chunked(self) -> bool:
        return self.framing is not None and self.framing.kind == "chunked"

    def get(self, name: bytes) -> bytes | None:
        values = self.low.get(name)
        return values[0] if values else None


class HeadCache:
    """
    One client connection's last request head: a kept-alive client (wrk, a
    browser, an API client polling) mostly sends the same head again, and
    the same bytes parse to the same request, so it is parsed once.  Only
    a head that parsed is kept (a refused one is parsed, and refused, each
    time); it lives as long as the connection.
    """

    #: Longer heads are parsed each time (the cache holds one, bounded).
    MAX = 8192

    def __init__(self, lenientToo: bool = False):
        self.lenientToo = lenientToo
        self._raw = b""
        self._request: Request | None = None

    def parse(self, raw: bytes) -> Request:
        """L{parseRequest} of C{raw}, from the last head when it is the same bytes."""
        request = self._request
        if request is not None and raw == self._raw:
            return request.again()
        request = parseRequest(raw, self.lenientToo)
        if len(raw) <= self.MAX:
            # A twin is kept, never handed out: the request itself gets a
            # body, which the connection must not hold on to.
            self._raw, self._request = raw, request.again()
        return request


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
