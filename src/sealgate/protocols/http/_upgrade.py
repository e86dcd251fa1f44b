"""WebSocket upgrades: the client connection turns into a raw, recorded byte relay to the backend."""

from typing import Any

from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from sealgate.protocols.http import _wire
from sealgate.protocols.http._body import StorePacer
from sealgate.session import FROM_CLIENT, TO_CLIENT


class _BackendSide(Protocol):
    def __init__(self, relay):
        self.relay = relay

    def connectionMade(self):
        self.relay.backendUp(self.transport)

    def dataReceived(self, data):
        self.relay.fromBackend(data)

    def connectionLost(self, reason):
        self.relay.backendLost(reason)


class Relay:
    """
    Relays an upgraded connection.  Client bytes reach the backend only
    after the backend answered 101: a refused upgrade ends with a 502 and
    the connection closes, so nothing on it bypasses the gateway (nor its
    masking).
    Both directions are recorded; each side's transport is the other's
    producer, so a slow reader slows the writer.
    """

    _log = Logger()

    def __init__(self, channel, session, head: bytes, secret):
        self.channel = channel
        self.session = session
        # Both are TCP or TLS transports, each also the other's push
        # producer, which ITransport does not say; backend is set by
        # backendUp before the relay opens.
        self.client: Any = channel.transport
        self.backend: Any = None
        self._head = head
        self._secret = secret
        self._pending: list[bytes] = []
        self._reader = _wire.MessageReader(responses=True)
        self._reader.expect(b"GET")
        self._responseHead = b""
        self._state = "head"
        self._closed = False
        self._storePaused = False
        self.pacer: StorePacer | None = None

    MAX_PENDING = 1 << 20

    def fromClient(self, data: bytes) -> None:
        if self._state == "open":
            self.session.record(FROM_CLIENT, data)
            self.backend.write(data)
            self._pace()
        elif self._state == "head":
            self._pending.append(data)
            if sum(map(len, self._pending)) > self.MAX_PENDING:
                self._close("client sent too much before the upgrade completed")

    def _pace(self) -> None:
        """Stop reading both sides while the recording store catches up."""
        if self.pacer is None or self._storePaused or not self.pacer.over():
            return
        self._storePaused = True
        self.client.pauseProducing()
        self.backend.pauseProducing()

        def drained(_):
            self._storePaused = False
            if not self._closed:
                self.client.resumeProducing()
                self.backend.resumeProducing()

        self.pacer.drained().addCallback(drained)

    def backendUp(self, transport) -> None:
        self.backend = transport
        if self._closed:
            transport.loseConnection()
            return
        transport.write(self._head)

    def fromBackend(self, data: bytes) -> None:
        if self._state == "head":
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
                self._refuse(status)
                return
            self.session.record(TO_CLIENT, _wire.redactHead(head, self._secret))
            self.client.write(head)
            self._state = "open"
            self.session.audit("http_upgrade", protocol="websocket")
            self.client.registerProducer(self.backend, True)
            self.backend.registerProducer(self.client, True)
            for p in self._pending:
                self.fromClient(p)
            self._pending = []
            data = rest
            if not data:
                return
        if self._state != "open":
            return
        self.session.record(TO_CLIENT, data)
        self.client.write(data)
        self._pace()

    def _refuse(self, status: int) -> None:
        self._state = "refused"
        body = _wire.problem(502, "Upgrade refused",
                             f"the backend answered the upgrade with status {status}")
        response = _wire.serializeHead(b"HTTP/1.1 502 Bad Gateway", [
            (b"Content-Type", b"application/problem+json"),
            (b"Content-Length", b"%d" % len(body)), (b"Connection", b"close")]) + body
        self.session.record(TO_CLIENT, response)
        self.client.write(response)
        self._close("upgrade refused by the backend")

    def clientLost(self, reason) -> None:
        self._closed = True
        if self.backend is not None:
            self.backend.loseConnection()
        self.channel.endSession("client closed")

    def backendLost(self, reason) -> None:
        self._closed = True
        self.client.loseConnection()

    def _close(self, why: str) -> None:
        self._closed = True
        if self.backend is not None:
            self.backend.loseConnection()
        self.client.loseConnection()


def connectRelay(relay, reactor, backend, session) -> None:
    """Connect a L{Relay} to the backend; an unreachable one gets the client a 502."""
    client = relay.client
    factory = Factory.forProtocol(lambda: _BackendSide(relay))
    ep = endpoints.clientFromString(reactor, backend.connection.backend)
    d = ep.connect(factory)

    def failed(f):
        Relay._log.info("WebSocket backend of {connection} unreachable: {error}",
                        connection=backend.connection.name, error=f.getErrorMessage())
        body = _wire.problem(502, "Backend unavailable", "the backend could not be reached")
        response = _wire.serializeHead(b"HTTP/1.1 502 Bad Gateway", [
            (b"Content-Type", b"application/problem+json"),
            (b"Content-Length", b"%d" % len(body)), (b"Connection", b"close")]) + body
        session.record(TO_CLIENT, response)
        client.write(response)
        client.loseConnection()

    d.addErrback(failed)
