"""The lean HTTP/1.1 listener: requests parsed sans-IO, each a command, relayed as bytes over pooled connections."""

import hashlib
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from sealgate import noDelay, writeNow
from sealgate.chain.verdicts import CONTINUE, Deny, Hold
from sealgate.identity import AuthenticationFailed
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._backend import BackendPool, Exchange
from sealgate.protocols.http._body import StorePacer
from sealgate.protocols.http._proxy import _DROP_REQUEST, _PROBLEM, Backend, Router
from sealgate.session import FROM_CLIENT, TO_CLIENT, SessionRefused

_MAX_HEAD = 1 << 20
#: Pipelined bytes held while a request is in flight before reading stops.
_MAX_AHEAD = 256 << 10
#: Request bodies above this spill from memory to a temporary file.
_SPOOL_MEMORY = 1 << 20
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_WITH_BODY = frozenset({b"POST", b"PUT", b"PATCH"})


class Request:
    """One parsed client request; C{headers} keep the client's order and spelling."""

    __slots__ = ("method", "target", "version", "headers", "low", "names", "path", "body",
                 "bodySize", "chunked", "keepAlive")

    def __init__(self, head, low, names):
        self.method = head.method
        self.target = head.target
        self.version = head.version
        self.headers = head.headers
        self.low = low
        self.names = names
        self.path = head.target.split(b"?", 1)[0]
        self.body = None
        self.bodySize = 0
        self.chunked = b"transfer-encoding" in low
        tokens = b",".join(low.get(b"connection", ())).lower()
        # HTTP/1.0 clients get one response per connection, ended by close.
        self.keepAlive = head.version == b"HTTP/1.1" and b"close" not in tokens

    def get(self, name: bytes) -> bytes | None:
        values = self.low.get(name)
        return values[0] if values else None


class ClientConnection(Protocol):
    """
    One client connection: at most one live session (one identity on one
    connection), one request at a time; every byte written to the client
    is recorded in it.
    """

    _log = Logger()

    # A TCP or TLS server transport: also a push producer (pause/resume)
    # with abortConnection, which no single Twisted interface names.
    transport: Any
    session = None
    credentialHash: bytes | None = None
    backend: Backend | None = None
    relay = None
    exchange = None
    clientHost = "unknown"
    clientText = "?:?"
    idleSince: float | None = None
    _idleCall = None

    def __init__(self, factory):
        self.factory = factory
        self.buf = bytearray()
        self.phase = "head"
        self.request = None
        self.framing = None
        self.gone = False
        self.readPaused = False

    def connectionMade(self):
        noDelay(self.transport)
        peer = self.transport.getPeer()
        self.clientHost = str(getattr(peer, "host", "unknown"))
        self.clientText = f"{self.clientHost}:{getattr(peer, 'port', '?')}"
        self.idleSince = self.factory.reactor.seconds()
        self._idleCall = self.factory.reactor.callLater(self.factory.idleTimeout, self._checkIdle)

    def _checkIdle(self) -> None:
        """
        Close a connection idle between requests, or stalled inside a
        request head or body, for the idle timeout: it holds its session
        open.  One timer per connection, re-armed lazily (no timer churn
        per request).
        """
        reactor, timeout = self.factory.reactor, self.factory.idleTimeout
        left = timeout
        if self.idleSince is not None and self.phase in ("head", "body"):
            left = self.idleSince + timeout - reactor.seconds()
            if left <= 0:
                self._idleCall = None
                self.transport.loseConnection()
                return
        self._idleCall = reactor.callLater(left, self._checkIdle)

    # -- reading requests ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.fromClient(data)
            return
        if self.phase == "body":
            self._bodyData(data)
            return
        if self.phase == "head" and not self.buf and data.find(b"\r\n\r\n") == len(data) - 4 \
                and not data.startswith(b"\r\n"):
            # The usual case: one whole request head in one read, no body.
            self._gotHead(data[:-4])
            return
        self.buf += data
        if self.phase == "head":
            self._readHead()
        elif len(self.buf) > _MAX_AHEAD and not self.readPaused:
            self.readPaused = True
            self.transport.pauseProducing()

    def _readHead(self) -> None:
        buf = self.buf
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._badRequest("request head too long")
            return
        raw = bytes(buf[:end])
        del buf[: end + 4]
        self._gotHead(raw)

    def _gotHead(self, raw: bytes) -> None:
        buf = self.buf
        try:
            head, low, names = _wire.parseHeadIndexed(raw, False)
            framing = _framing.requestFraming(low)
        except _wire.ProtocolError as e:
            return self._badRequest(str(e))
        self.idleSince = None
        request = Request(head, low, names)
        if framing is None:
            self.phase = "wait"
            return self._start(request)
        expect = request.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and request.version == b"HTTP/1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.body = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)
        self.request, self.framing, self.phase = request, framing, "body"
        self.idleSince = self.factory.reactor.seconds()
        if buf:
            data = bytes(buf)
            del buf[:]
            self._bodyData(data)

    def _bodyData(self, data: bytes) -> None:
        # A client stalling inside its upload is as idle as one between requests.
        self.idleSince = self.factory.reactor.seconds()
        request = self.request
        try:
            pieces, used = self.framing.feed(data)
        except _wire.ProtocolError as e:
            return self._badRequest(str(e))
        write = request.body.write
        for piece in pieces:
            write(piece)
            request.bodySize += len(piece)
        if self.framing.done:
            if used < len(data):
                self.buf += data[used:]
            self.idleSince = None
            self.framing, self.phase = None, "wait"
            request.body.seek(0)
            self._start(request)

    def _badRequest(self, why: str) -> None:
        self._log.info("Malformed HTTP request from {client}: {why}", client=self.clientText, why=why)
        body = _wire.problem(400, "Bad request", "the request is not valid HTTP/1.1")
        self.phase = "closed"
        self.send(_wire.serializeHead(b"HTTP/1.1 400 Bad Request", [
            (b"Content-Type", _PROBLEM), (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close")]) + body)
        self.transport.loseConnection()

    def _start(self, request: Request) -> None:
        self.request = request
        try:
            self.factory.handle(self, request)
        except Exception:
            self._crashed(Failure(), request)

    def _crashed(self, failure, request) -> None:
        self._log.failure("HTTP request handling failed", failure)
        if self.phase == "wait" and self.exchange is None:
            self.problem(request, 500, "Gateway error", "the gateway failed on this request")
        elif self.transport is not None:
            self.transport.abortConnection()

    # -- writing responses ---------------------------------------------------------

    def send(self, data: bytes, record: bool = True) -> None:
        """Write to the client and record it in the session."""
        if record and self.session is not None:
            self.session.record(TO_CLIENT, data)
        writeNow(self.transport, data)

    def problem(self, request: Request, status: int, title: str, detail: str,
                headers=(), **extra) -> None:
        """Answer with an RFC 9457 problem and end the exchange."""
        if self.gone or self.phase != "wait":
            return
        body = _wire.problem(status, title, detail, instance=request.target.decode("latin-1"), **extra)
        pairs = [(b"Content-Type", _PROBLEM), (b"Content-Length", b"%d" % len(body)),
                 (b"Cache-Control", b"no-store"), *headers]
        if not request.keepAlive:
            pairs.append((b"Connection", b"close"))
        out = _wire.serializeHead(b"HTTP/1.1 %d %s" % (status, RESPONSES.get(status, b"Error")), pairs)
        self.send(out if request.method == b"HEAD" else out + body)
        self.exchangeDone(not request.keepAlive)

    def exchangeDone(self, close: bool) -> None:
        """The response is out: read the next request, or close."""
        self.exchange = None
        self.request = None
        if self.gone:
            return
        if close:
            self.phase = "closed"
            self.transport.loseConnection()
            return
        self.phase = "head"
        self.idleSince = self.factory.reactor.seconds()
        if self.readPaused:
            self.readPaused = False
            self.transport.resumeProducing()
        if self.buf:
            # Pipelined requests: one at a time, without growing the stack.
            self.factory.reactor.callLater(0, self._next)

    def _next(self) -> None:
        if self.phase == "head" and not self.gone:
            self._readHead()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def endSession(self, reason: str) -> None:
        session, self.session, self.credentialHash = self.session, None, None
        if session is not None:
            session.end(reason)

    def connectionLost(self, reason):
        self.gone = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        if self.relay is not None:
            self.relay.clientLost(reason)
            return
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.clientLost()
        self.endSession("client closed" if reason.check(ConnectionDone) else "connection lost")


@implementer(IProtocolNegotiationFactory)
class RelayFactory(Factory):
    """
    The listening factory for the http connections sharing one listen
    string: routes each request and runs it through the session's chain.
    """

    _log = Logger()
    noisy = False

    def __init__(self, connections, gateway, secure: bool = False):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.secure = secure
        self.backends = [Backend(c, self.reactor, None) for c in connections]
        self.router = Router(self.backends)
        self.pools = {id(b): BackendPool(self.reactor, b.connection.backend) for b in self.backends}
        self.pacer = StorePacer(getattr(gateway, "store", None), self.reactor)
        self.idleTimeout = max(c.options.idle_timeout for c in connections)

    def buildProtocol(self, addr):
        p = ClientConnection(self)
        p.factory = self
        return p

    def acceptableProtocols(self):
        # ALPN over TLS: this listener speaks HTTP/1.1 only.
        return [b"http/1.1"]

    def stopFactory(self):
        for pool in self.pools.values():
            pool.close()

    def handle(self, client: ClientConnection, request: Request) -> None:
        """
        Run one request.  A request on a connection whose session is open
        goes through synchronously; logging in, recording an uploaded body
        and an approval hold continue from their Deferreds.
        """
        backend = self.router.route(request.get(b"host"), request.target)
        if backend is None:
            return client.problem(request, 404, "No such service",
                                  "no connection on this listener serves this host and path")
        credential = _wire.credentialFrom(request.get(b"authorization"))
        if credential is None:
            return client.problem(request, 401, "Authentication required",
                                  "send Authorization: Bearer <token or API key>",
                                  headers=[(b"WWW-Authenticate",
                                            b'Bearer realm="sealgate", Basic realm="sealgate"')])
        digest = hashlib.sha256(credential.encode()).digest()
        if client.session is None or client.credentialHash != digest or client.backend is not backend:
            d = defer.ensureDeferred(self.login(client, request, backend, credential, digest))
            d.addErrback(client._crashed, request)
            return None
        self.proceed(client, request, backend)

    async def login(self, client, request: Request, backend: Backend, credential: str, digest: bytes):
        client.endSession("identity or connection changed")
        try:
            identity = await self.gateway.authenticate(backend.connection, credential, client.clientText)
        except AuthenticationFailed as e:
            return client.problem(request, 401, "Authentication failed", str(e), headers=[
                (b"WWW-Authenticate", b'Bearer realm="sealgate", error="invalid_token"')])
        if client.gone:
            return None
        try:
            session = self.gateway.openSession(
                backend.connection, identity, client.clientText,
                {"tls": self.secure, "host": (request.get(b"host") or b"").decode("latin-1")})
        except SessionRefused as e:
            return client.problem(request, 403 if e.code == "access" else 503,
                                  "Session refused", str(e))
        session.abort = lambda message: client.transport.loseConnection()
        client.session, client.credentialHash, client.backend = session, digest, backend
        self.proceed(client, request, backend)

    def proceed(self, client, request: Request, backend: Backend) -> None:
        session = client.session
        if self.recordRequest(request, session, backend):
            d = defer.ensureDeferred(self.recordBody(request, session))
            d.addCallback(lambda _: None if client.gone else self.decide(client, request, backend, session))
            d.addErrback(client._crashed, request)
            return
        self.decide(client, request, backend, session)

    def decide(self, client, request: Request, backend: Backend, session) -> None:
        if not session.chain.wantsCommand:
            return self.dispatch(CONTINUE, client, request, backend, session)
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        secret = backend.options.secret_headers
        details = {
            "method": method, "path": request.path.decode("latin-1"),
            "query": request.target.partition(b"?")[2].decode("latin-1"),
            "headers": {n.decode("latin-1"): b", ".join(vs).decode("latin-1")
                        for n, vs in request.low.items() if n not in secret},
            "body_size": request.bodySize,
        }
        upgrade = request.get(b"upgrade")
        if upgrade:
            details["upgrade"] = upgrade.lower().decode("latin-1")
        verdict = session.command("http", f"{method} {target}", details)
        if isinstance(verdict, Hold):
            self.holdNotice(client, request, verdict)
            verdict.result.addCallback(self.dispatch, client, request, backend, session)
            verdict.result.addErrback(client._crashed, request)
            return
        self.dispatch(verdict, client, request, backend, session)

    def dispatch(self, verdict, client, request: Request, backend: Backend, session) -> None:
        if client.gone:
            return None
        if isinstance(verdict, Deny):
            return client.problem(request, 403, "Request denied by policy", verdict.reason,
                                  rule=verdict.rule)
        if (request.get(b"upgrade") or b"").lower() == b"websocket":
            return self.upgrade(client, request, backend, session)
        exchange = Exchange(client, request, backend, session, self.pools[id(backend)], self.pacer)
        client.exchange = exchange
        exchange.start(self.forwardHead(client, request, backend, False))

    # -- pieces ------------------------------------------------------------------

    def forwardHead(self, client, request: Request, backend: Backend, upgrade: bool) -> bytes:
        low = request.low
        drop = _wire.hopByHop(low.get(b"connection"))
        if upgrade:
            drop -= {b"upgrade", b"connection"}
        preserve = backend.options.preserve_host
        parts = [request.method + b" " + request.target + b" HTTP/1.1"]
        for (name, value), n in zip(request.headers, request.names, strict=True):
            if n in drop or n in _DROP_REQUEST or n in _FORWARDED or (n == b"host" and not preserve):
                continue
            parts.append(name + b": " + value)
        if not preserve:
            parts.append(b"Host: " + backend.hostHeader)
        forwarded = low.get(b"x-forwarded-for", [])
        parts.append(b"X-Forwarded-For: " + b", ".join([*forwarded, client.clientHost.encode()]))
        parts.append(b"X-Forwarded-Proto: " + (b"https" if self.secure else b"http"))
        host = low.get(b"host")
        if host:
            parts.append(b"X-Forwarded-Host: " + host[0])
        for name, value in backend.options.inject:
            parts.append(name + b": " + value)
        if request.body is not None:
            parts.append(b"Content-Length: %d" % request.bodySize)
        elif request.method in _WITH_BODY:
            parts.append(b"Content-Length: 0")
        return b"\r\n".join(parts) + b"\r\n\r\n"

    def recordRequest(self, request: Request, session, backend: Backend) -> bool:
        """Record the head (secrets redacted); True when a body must follow."""
        secret = backend.options.secret_headers
        first = request.method + b" " + request.target + b" " + request.version
        if secret.isdisjoint(request.low):
            pairs = request.headers
        else:
            pairs = [(n, _wire.REDACTED if ln in secret else v)
                     for (n, v), ln in zip(request.headers, request.names, strict=True)]
        session.record(FROM_CLIENT, _wire.serializeHead(first, pairs))
        if request.body is None:
            if request.chunked:
                session.record(FROM_CLIENT, _wire.LAST_CHUNK)
            return False
        return True

    async def recordBody(self, request: Request, session) -> None:
        # Read back from the spool in pieces so a large upload never sits in memory whole.
        content = request.body
        content.seek(0)
        while True:
            data = content.read(65536)
            if not data:
                break
            session.record(FROM_CLIENT, _wire.chunk(data) if request.chunked else data)
            if self.pacer.over():
                await self.pacer.drained()
        if request.chunked:
            session.record(FROM_CLIENT, _wire.LAST_CHUNK)
        content.seek(0)

    def holdNotice(self, client, request: Request, hold: Hold) -> None:
        """Tell the client at once that its request waits: a 1xx response clients skip, recorded."""
        if request.version != b"HTTP/1.1" or client.gone:
            return
        message = hold.message.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        client.send(b"HTTP/1.1 102 Processing\r\nSealgate-Ticket: " + hold.ticket.encode("ascii", "replace")
                    + b"\r\nSealgate-Notice: " + message + b"\r\n\r\n")

    def upgrade(self, client, request: Request, backend: Backend, session) -> None:
        """Hand the client connection over to a raw, recorded WebSocket relay."""
        from sealgate.protocols.http._upgrade import Relay, connectRelay

        head = self.forwardHead(client, request, backend, True)
        relay = Relay(client, session, head, backend.options.secret_headers)
        relay.pacer = self.pacer
        client.relay = relay
        client.phase = "relay"
        buffered = bytes(client.buf)
        del client.buf[:]
        if client.readPaused:
            client.readPaused = False
            client.transport.resumeProducing()
        if buffered:
            relay.fromClient(buffered)
        connectRelay(relay, self.reactor, backend, session)
