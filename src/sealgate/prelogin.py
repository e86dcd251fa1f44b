"""The pre-authentication guard every listener shares: login timeout, pre-login byte cap, connection caps."""

import json
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import attrs
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sealgate.config import Limits

#: Why a connection was refused before it logged in.
TIMEOUT = "timeout"
TOO_LARGE = "too_large"
BUSY = "busy"
SOURCE_BUSY = "source_busy"

#: Seconds a refused connection gets to take its error before it is cut.
REFUSE_GRACE = 5.0
#: Most sources (or keys) a L{OncePer} remembers; the oldest go first.
MAX_TRACKED = 10_000

#: The HTTP answer to each refusal, with its RFC 9110 / RFC 6585 reason phrase.
HTTP_STATUS = {TIMEOUT: (408, b"Request Timeout"),
               TOO_LARGE: (431, b"Request Header Fields Too Large"),
               BUSY: (503, b"Service Unavailable"), SOURCE_BUSY: (429, b"Too Many Requests")}


def messageFor(kind: str, limits: Limits) -> str:
    """What a refused client is told (the same in every protocol's words)."""
    if kind == TIMEOUT:
        return f"no login within {limits.login_timeout:g}s"
    if kind == TOO_LARGE:
        return f"more than {limits.max_prelogin_bytes} bytes sent before logging in"
    if kind == SOURCE_BUSY:
        return "too many connections from your address are logging in; try again shortly"
    return "too many connections are logging in; try again shortly"


def sourceOf(transport) -> str:
    """The client's address (no port): what the per-source limits count."""
    peer = transport.getPeer()
    return str(getattr(peer, "host", None) or "unix")


def httpRefusal(kind: str, message: str) -> bytes:
    """A whole HTTP/1.1 response (an RFC 9457 problem) refusing a connection, then close."""
    status, title = HTTP_STATUS.get(kind, (400, b"Bad Request"))
    body = json.dumps({"type": "about:blank", "title": title.decode(), "status": status,
                       "detail": message}).encode()
    extra = b"Retry-After: 5\r\n" if kind in (BUSY, SOURCE_BUSY) else b""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
            b"Content-Length: %d\r\nCache-Control: no-store\r\n%sConnection: close\r\n\r\n"
            % (status, title, len(body), extra)) + body


class IPreLoginClient(Interface):
    """A connection under the guard: the one hook a protocol implements."""

    def refuseLogin(kind: str, message: str) -> None:  # type: ignore[misc]
        """Tell the client why in the protocol's own words, then close."""


class OncePer:
    """
    Lets one thing through per key per interval and counts the rest, so a
    flood of refusals or failures costs one log line (or sealed event) per
    source per interval.  Remembers at most L{MAX_TRACKED} keys.
    """

    def __init__(self, interval: float, clock: Callable[[], float]):
        self.interval = interval
        self._clock = clock
        self._seen: OrderedDict[Hashable, list] = OrderedDict()

    def note(self, key: Hashable) -> int | None:
        """
        @return: None to stay quiet, else how many were held back before
            this one (0 the first time).
        """
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = entry[1] if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_TRACKED:
            self._seen.popitem(last=False)
        return held


@attrs.define(eq=False)
class Ticket:
    """One connection that has not logged in yet."""

    guard: "PreLoginGuard"
    listener: str
    source: str
    client: Any
    transport: Any
    received: int = 0
    done: bool = False
    refused: bool = False
    _timer: Any = None

    def dataReceived(self, n: int) -> bool:
        """
        Count bytes read before login.  @return: False if that was too many
        (the client is already refused: stop handling its data).
        """
        if self.done:
            return not self.refused
        self.received += n
        if self.received > self.guard.limits.max_prelogin_bytes:
            self.guard._refuse(self, TOO_LARGE)
            return False
        return True

    def authenticated(self) -> None:
        """The client logged in: no more pre-login limits."""
        self.guard._release(self)

    def connectionLost(self) -> None:
        self.guard._release(self)
        self.guard._lost(self)


class PreLoginGuard:
    """
    Shared by every listener of a gateway (postgres, ssh, http and admin),
    because what the limits protect (file descriptors, memory) is the
    process's.  A protocol calls L{admit} when a connection is made, then
    the L{Ticket}'s C{dataReceived} for what it reads, C{authenticated} at
    login and C{connectionLost}.
    """

    _log = Logger()

    def __init__(self, limits: Limits, reactor):
        self.limits = limits
        self._reactor = reactor
        self.pending = 0
        self.perSource: dict[str, int] = {}
        self._logOnce = OncePer(limits.refusal_log_interval, reactor.seconds)
        self._cuts: dict[int, Any] = {}
        #: Refusals by kind, for metrics and tests.
        self.refusals: dict[str, int] = {}

    def admit(self, listener: str, transport, client) -> Ticket:
        """
        A connection was made.  Past a cap, the client is refused (its
        C{refuseLogin} is called) and the ticket comes back already done.
        """
        ticket = Ticket(self, listener, sourceOf(transport), client, transport)
        if self.pending >= self.limits.max_unauthenticated:
            ticket.done = True
            self._refuse(ticket, BUSY)
            return ticket
        if self.perSource.get(ticket.source, 0) >= self.limits.max_unauthenticated_per_source:
            ticket.done = True
            self._refuse(ticket, SOURCE_BUSY)
            return ticket
        self.pending += 1
        self.perSource[ticket.source] = self.perSource.get(ticket.source, 0) + 1
        ticket._timer = self._reactor.callLater(self.limits.login_timeout, self._refuse,
                                                ticket, TIMEOUT)
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if ticket.done:
            return
        ticket.done = True
        timer, ticket._timer = ticket._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.pending -= 1
        left = self.perSource[ticket.source] - 1
        if left:
            self.perSource[ticket.source] = left
        else:
            del self.perSource[ticket.source]

    def _refuse(self, ticket: Ticket, kind: str) -> None:
        self._release(ticket)
        ticket.refused = True
        ticket._timer = None
        self.refusals[kind] = self.refusals.get(kind, 0) + 1
        held = self._logOnce.note((ticket.source, kind))
        if held is not None:
            self._log.info("Refused a login on {listener} from {source}: {kind}"
                           "{more}", listener=ticket.listener, source=ticket.source, kind=kind,
                           more=f" ({held} more like it since the last report)" if held else "")
        try:
            ticket.client.refuseLogin(kind, messageFor(kind, self.limits))
        except Exception:
            self._log.failure("Refusing a login on {listener} failed", listener=ticket.listener)
        # A client that does not read its error must not keep the socket.
        abort = getattr(ticket.transport, "abortConnection", None)
        if abort is not None:
            self._cuts[id(ticket)] = self._reactor.callLater(REFUSE_GRACE, abort)

    def _lost(self, ticket: Ticket) -> None:
        cut = self._cuts.pop(id(ticket), None)
        if cut is not None and cut.active():
            cut.cancel()


__all__ = ["Limits", "PreLoginGuard", "Ticket", "IPreLoginClient", "OncePer", "httpRefusal",
           "TIMEOUT", "TOO_LARGE", "BUSY", "SOURCE_BUSY"]


@implementer(IPreLoginClient)
class GuardedChannel:
    """
    Mix into a twisted.web C{HTTPChannel} whose site has C{prelogin = (guard,
    listener name)}: the pre-login limits hold until the first whole
    request head.  Each request there is authenticated (or refused) on its
    own and answered at once, so a connection that got that far is no
    longer one that is still logging in.
    """

    loginTicket: Ticket | None = None

    def connectionMade(self):
        super().connectionMade()  # type: ignore[misc]
        guard = getattr(getattr(self, "site", None), "prelogin", None)
        if guard is not None:
            self.loginTicket = guard[0].admit(guard[1], self.transport, self)  # type: ignore[attr-defined]

    def dataReceived(self, data):
        ticket = self.loginTicket
        if ticket is not None and not ticket.dataReceived(len(data)):
            return
        super().dataReceived(data)  # type: ignore[misc]

    def allHeadersReceived(self):
        if self.loginTicket is not None:
            self.loginTicket.authenticated()
        super().allHeadersReceived()  # type: ignore[misc]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.loginTicket is not None:
            self.loginTicket.connectionLost()
        super().connectionLost(reason)  # type: ignore[misc]

    def refuseLogin(self, kind: str, message: str) -> None:
        self.transport.write(httpRefusal(kind, message))  # type: ignore[attr-defined]
        self.transport.loseConnection()  # type: ignore[attr-defined]
