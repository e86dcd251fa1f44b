"""WebSocket upgrades: the client connection turns into a raw, recorded byte relay to the backend."""

import enum
from typing import Any

from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from sealgate.masking import maskHead
from sealgate.protocols.http import _wire
from sealgate.protocols.http._websocket import MessageMasker, WebSocketError, closeFrame


class _BackendSide(Protocol):
    def __init__(self, relay):
        self.relay = relay

    def connectionMade(self):
        self.relay.backendUp(self.transport)

    def dataReceived(self, data):
        self.relay.fromBackend(data)

    def connectionLost(self, reason):
        self.relay.backendLost(reason)


class Upgrade(enum.Enum):
    #: Waiting for the backend's 101; client bytes are held.
    HEAD = "head"
    OPEN = "open"
    #: The backend said no (or was unreachable): the connection closes.
    REFUSED = "refused"


def _badGateway(title: str, detail: str) -> bytes:
    body = _wire.problem(502, title, detail)
    return _wire.serializeHead(b"HTTP/1.1 502 Bad Gateway", [
        (b"Content-Type", _wire.PROBLEM), (b"Content-Length", b"%d" % len(body)),
        (b"Connection", b"close")]) + body


class Relay:
    """
    Relays an upgraded connection.  Client bytes reach the backend only
    after the backend answered 101: a refused upgrade ends with a 502 and
    the connection closes, so nothing on it bypasses the gateway (nor its
    masking).  Client bytes are recorded as they come
    (C{session.received}); backend bytes reach the client only through
    the client connection's C{send}, the session's output step; with a
    masker, as whole messages masked and framed again (L{MessageMasker}),
    a message that cannot be vetted ending the relay with a close frame
    (sealed as a refusal).  Both
    transports are the session's legs, each registered as the other's
    producer, so a slow reader slows the writer and the core can pause
    both for the store.
    """

    _log = Logger()
    MAX_PENDING = 1 << 20

    def __init__(self, channel, session, head: bytes, secret, maxMessage: int = 16 << 20):
        self.channel = channel
        self.session = session
        # A TCP or TLS transport, also a push producer, which ITransport
        # does not say; set by backendUp before the relay opens.
        self.backend: Any = None
        self._head = head
        self._secret = secret
        self._pending: list[bytes] = []
        self._reader = _wire.MessageReader(responses=True)
        self._reader.expect(b"GET")
        self._responseHead = b""
        self._state = Upgrade.HEAD
        self._closed = False
        self._maxMessage = maxMessage
        self._messages: MessageMasker | None = None

    def fromClient(self, data: bytes) -> None:
        if self._state is Upgrade.OPEN:
            self.session.received(data)
            self.backend.write(data)
        elif self._state is Upgrade.HEAD:
            self._pending.append(data)
            if sum(map(len, self._pending)) > self.MAX_PENDING:
                self._close("client sent too much before the upgrade completed")

    def backendUp(self, transport) -> None:
        self.backend = transport
        if self._closed:
            transport.loseConnection()
            return
        self.session.attach(self.channel.leg, transport)
        transport.write(self._head)

    def fromBackend(self, data: bytes) -> None:
        if self._state is Upgrade.HEAD:
            self._responseHead += data
            end = self._responseHead.find(b"\r\n\r\n")
            if end < 0:
                if len(self._responseHead) > 65536:
                    self._close("backend response head too long")
                return
            head, rest = self._responseHead[: end + 4], self._responseHead[end + 4:]
            self._responseHead = b""
            self._reader.receive_data(head)
            try:
                first = self._reader.next_event()
            except _wire.ProtocolError:
                first = None
            if not (isinstance(first, _wire.Head) and first.status == 101):
                # The backend's own answer is not relayed: its body would
                # bypass masking.  The client learns the status only.
                status = first.status if isinstance(first, _wire.Head) else 0
                self.decline("Upgrade refused", f"the backend answered the upgrade with status {status}")
                return
            masker = self.session.chain.masker
            if masker is not None:
                if first.get(b"sec-websocket-extensions"):
                    # The gateway offered none: frames it cannot read are not relayed.
                    self.decline("Upgrade refused", "the backend chose a WebSocket extension")
                    return
                reason, pairs = maskHead(masker, first.reason, list(first.headers))
                head = _wire.serializeHead(b"HTTP/1.1 101 " + reason, pairs)
                self._messages = MessageMasker(masker, self._maxMessage)
            if not self.channel.send(head, recorded=_wire.redactHead(head, self._secret), part="head"):
                return self._close("the output step refused the upgrade response")
            self._state = Upgrade.OPEN
            self.session.audit("http_upgrade", protocol="websocket")
            session = self.session
            self.channel.transport.registerProducer(session.backendLeg, True)
            self.backend.registerProducer(session.clientLeg, True)
            for p in self._pending:
                self.fromClient(p)
            self._pending = []
            data = rest
            if not data:
                return
        if self._state is not Upgrade.OPEN:
            return
        if self._messages is not None:
            try:
                data = self._messages.feed(data)
            except WebSocketError as e:
                return self._refuse(e)
            if not data:
                return
        if not self.channel.send(data, part="websocket"):
            return self._close("the output step refused a frame")

    def _refuse(self, error: WebSocketError) -> None:
        """A backend message that cannot go out: sealed, a close frame to the client, the end."""
        self._state = Upgrade.REFUSED
        self.session.audit("websocket_refused", code=error.code, reason=error.reason)
        self.channel.send(closeFrame(error.code, error.reason), part="websocket")
        self._close(error.reason)

    def decline(self, title: str, detail: str) -> None:
        """No upgrade: a 502 problem, and the connection closes."""
        self._state = Upgrade.REFUSED
        self.channel.send(_badGateway(title, detail), part="response")
        self._close(detail)

    def clientLost(self, reason) -> None:
        self._closed = True
        if self.backend is not None:
            self.backend.loseConnection()
        self.channel.endSession("client closed")

    def backendLost(self, reason) -> None:
        self._closed = True
        self.channel.transport.loseConnection()

    def _close(self, why: str) -> None:
        self._log.info("WebSocket relay on session {session} closes: {why}", session=self.session.id,
                       why=why)
        self._closed = True
        if self.backend is not None:
            self.backend.loseConnection()
        self.channel.transport.loseConnection()


def connectRelay(relay: Relay, reactor, backend) -> None:
    """Connect a L{Relay} to the backend; an unreachable one gets the client a 502."""
    factory = Factory.forProtocol(lambda: _BackendSide(relay))
    ep = endpoints.clientFromString(reactor, backend.connection.backend)

    def failed(f):
        Relay._log.info("WebSocket backend of {connection} unreachable: {error}",
                        connection=backend.connection.name, error=f.getErrorMessage())
        relay.decline("Backend unavailable", "the backend could not be reached")

    ep.connect(factory).addErrback(failed)
