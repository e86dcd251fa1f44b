"""Backend connections of the HTTP relay: persistent ones per endpoint, reused newest first, watched for silence."""

import time
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.protocol import Factory, Protocol

from sealgate import noDelay
from sealgate.protocols.http._response import PlanCache

#: An idle backend connection older than this is closed rather than reused:
#: servers drop idle connections, and a request sent on one would fail.
_MAX_IDLE_AGE = 30.0
#: The most one read of a backend connection takes (a plain TCP one).
READ_SIZE = 256 << 10


class BackendConnection(Protocol):
    """One TCP (or TLS) connection to a backend, serving one L{Exchange} at a time."""

    # A TCP or TLS client transport: also a push producer (pause/resume),
    # which ITransport does not name.  Set before connectionMade, so never
    # None while the connection is in use.
    transport: Any
    exchange: Any = None  # the _backend.Exchange it serves
    idleSince = 0.0

    def __init__(self, pool):
        self.pool = pool
        self.alive = True

    def connectionMade(self):
        noDelay(self.transport)
        if type(getattr(self.transport, "bufferSize", None)) is int:
            # Twisted reads 64 KiB at a time; a download's bytes then cost a
            # reactor turn, a relay step and a recorded frame per 64 KiB.
            self.transport.bufferSize = READ_SIZE

    def dataReceived(self, data):
        if self.exchange is not None:
            self.exchange.dataReceived(data)
        else:
            # Bytes nobody asked for: this connection cannot be trusted again.
            self.alive = False
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.alive = False
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.backendLost(reason)


class SilenceWatch:
    """
    One timer for every exchange waiting on one backend, not one per
    request: each tick asks the exchanges watched how long their backend
    has been silent (C{checkSilence(now)}).  A timeout fires at most one
    tick late; the tick is a tenth of it (0.05 to 1 s).
    """

    def __init__(self, reactor, timeout: float):
        self.reactor = reactor
        self.watched: set = set()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._interval = min(1.0, max(0.05, timeout / 10))

    def watch(self, exchange) -> None:
        self.watched.add(exchange)
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def unwatch(self, exchange) -> None:
        self.watched.discard(exchange)

    def _tick(self) -> None:
        now = self.reactor.seconds()
        for exchange in list(self.watched):
            exchange.checkSilence(now)
        if not self.watched:
            self._loop.stop()

    def stop(self) -> None:
        self.watched.clear()
        if self._loop.running:
            self._loop.stop()


class BackendPool:
    """Persistent connections to one backend endpoint; idle ones are reused newest first."""

    MAX_IDLE = 64

    def __init__(self, reactor, description: str, timeout: float = 60.0):
        self.reactor = reactor
        self._endpoint = endpoints.clientFromString(reactor, description)
        self._factory = Factory.forProtocol(lambda: BackendConnection(self))
        self._idle: list[BackendConnection] = []
        self.silence = SilenceWatch(reactor, timeout)
        #: The plans of this backend's response heads (L{PlanCache}).
        self.plans = PlanCache()

    def take(self) -> BackendConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.alive and now - conn.idleSince < _MAX_IDLE_AGE:
                return conn
            conn.transport.loseConnection()
        return None

    def connect(self):
        return self._endpoint.connect(self._factory)

    def put(self, conn: BackendConnection) -> None:
        if not conn.alive or len(self._idle) >= self.MAX_IDLE:
            conn.transport.loseConnection()
            return
        conn.idleSince = time.monotonic()
        self._idle.append(conn)

    def forget(self, conn: BackendConnection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        self.silence.stop()
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.transport.loseConnection()
