"""The HTTP/1.1 listener: requests parsed and normalized sans-IO, each run by its own pipeline, relayed over pooled connections."""

import tempfile
from typing import Any

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from sealgate import Leg, OutputRefused, Preamble, noDelay, writeNow
from sealgate.interfaces import IPreLoginClient
from sealgate.prelogin import httpRefusal
from sealgate.protocols.http import _wire
from sealgate.protocols.http._body import LastBody
from sealgate.protocols.http._login import BrowserLogin
from sealgate.protocols.http._pipeline import Pipeline
from sealgate.protocols.http._pool import BackendPool
from sealgate.protocols.http._request import HeadCache, Request
from sealgate.protocols.http._routing import Backend, Router
from sealgate.protocols.http._state import Conn, ConnEvent, connStep
from sealgate.protocols.http._target import TargetRefused
from sealgate.tlsfiles import pemBlocks as _pemBlocks

_MAX_HEAD = 1 << 20
#: Pipelined bytes held while a request is in flight before reading stops.
_MAX_AHEAD = 256 << 10
#: Request bodies above this spill from memory to a temporary file.
_SPOOL_MEMORY = 1 << 20
#: Chunk lines and trailers a body may carry beyond C{max_body}.
_FRAMING_MARGIN = 64 << 10
#: Why the relay itself stops reading a client (the core adds its own reasons).
_AHEAD = "pipelined"
#: After an answer sent before the body was read, the rest is read and
#: dropped for this long (and up to this much) so that the client reads
#: the answer instead of a connection reset; then the connection is cut.
_LINGER = 2.0
_LINGER_BYTES = 1 << 20


@implementer(IPreLoginClient)
class ClientConnection(Protocol):
    """
    One client connection: at most one live session (one identity on one
    connection), one request at a time, each run by a L{Pipeline}.  Every
    byte to the client goes through L{send}: the session's output step
    (masked, output hooks, recorded), or, before any session exists, a
    refusal that has no session to be recorded in.
    """

    _log = Logger()

    # A TCP or TLS server transport: also a push producer (pause/resume)
    # with abortConnection, which no single Twisted interface names.
    transport: Any
    #: The live L{sealgate.session.Session}, once a request logged in.
    session: Any = None
    credentialHash: bytes | None = None
    backend: Backend | None = None
    relay = None
    exchange = None
    pipeline: Pipeline | None = None
    clientHost = "unknown"
    clientText = "?:?"
    idleSince: float | None = None
    _idleCall = None
    _lingerCall = None
    _lingered = 0

    def __init__(self, factory):
        self.factory = factory
        self.buf = bytearray()
        self.state = Conn.HEAD
        self.request: Request | None = None
        self.gone = False
        self.heads = HeadCache(factory.lenient)
        self.lastBody = LastBody()

    def _to(self, event: ConnEvent) -> None:
        self.state = connStep(self.state, event)

    def connectionMade(self):
        noDelay(self.transport)
        # The client leg: the relay pauses it for its own reasons, the core
        # (through the session's leg around this one) for holds and the store.
        self.leg = Leg(self.transport)
        peer = self.transport.getPeer()
        self.clientHost = str(getattr(peer, "host", "unknown"))
        self.clientText = f"{self.clientHost}:{getattr(peer, 'port', '?')}"
        self.idleSince = self.factory.reactor.seconds()
        self._idleCall = self.factory.reactor.callLater(self.factory.idleTimeout, self._checkIdle)
        self.prelogin = self.factory.gateway.prelogin.admit(self.factory.name, self.transport, self)

    def _checkIdle(self) -> None:
        """
        Close a connection idle between requests, or stalled inside a
        request head or body, for the idle timeout: it holds its session
        open.  One timer per connection, re-armed lazily (no timer churn
        per request).
        """
        reactor, timeout = self.factory.reactor, self.factory.idleTimeout
        left = timeout
        if self.idleSince is not None and self.state in (Conn.HEAD, Conn.BODY):
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
        if self.state is Conn.HEAD and not self.prelogin.done:
            # Before login only request heads count: a body is read once
            # its request's credential is being checked.
            end = data.find(b"\r\n\r\n")
            if not self.prelogin.dataReceived(len(data) if end < 0 else end + 4):
                return
        state = self.state
        if state is Conn.BODY:
            self._bodyData(data)
            return
        if state is Conn.HEAD and not self.buf and data.find(b"\r\n\r\n") == len(data) - 4 \
                and not data.startswith(b"\r\n"):
            # The usual case: one whole request head in one read, no body.
            self._gotHead(data[:-4])
            return
        if state is Conn.CLOSED:
            self._linger(data)
            return
        self.buf += data
        if state is Conn.HEAD:
            self._readHead()
        elif len(self.buf) > _MAX_AHEAD and not self.leg.pausedFor(_AHEAD):
            # Bytes ahead of a request still being checked or run: hold them,
            # bounded (a body is read only once its sender is known).
            self.leg.pause(_AHEAD)

    def _readHead(self) -> None:
        buf = self.buf
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._badRequest(_wire.ProtocolError("request head too long"))
            return
        raw = bytes(buf[:end])
        del buf[: end + 4]
        self._gotHead(raw)

    def _gotHead(self, raw: bytes) -> None:
        try:
            request = self.heads.parse(raw)
        except (_wire.ProtocolError, TargetRefused) as e:
            return self._badRequest(e)
        self.idleSince = None
        self._to(ConnEvent.GOT_HEAD)
        self.request = request
        self.pipeline = pipeline = Pipeline(self.factory, self, request)
        self._run(pipeline.start)

    def readBody(self) -> None:
        """
        The request's sender is known and allowed: record its head, read
        and record its body as it comes, then run the rest of its pipeline.
        """
        request, pipeline, session = self.request, self.pipeline, self.session
        assert request is not None and pipeline is not None and session is not None
        pipeline.recordHead()
        if request.framing is None:
            self._to(ConnEvent.REQUEST_WHOLE)
            return self._run(pipeline.whole)
        expect = request.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and request.version == b"HTTP/1.1":
            if not self.send(b"HTTP/1.1 100 Continue\r\n\r\n", part="head"):
                return self.abort()
        request.body = tempfile.SpooledTemporaryFile(_SPOOL_MEMORY)
        self._to(ConnEvent.READ_BODY)
        self.idleSince = self.factory.reactor.seconds()
        self.resumeReading()
        if self.buf:
            data = bytes(self.buf)
            del self.buf[:]
            self._bodyData(data)

    def _bodyData(self, data: bytes) -> None:
        # A client stalling inside its upload is as idle as one between requests.
        self.idleSince = self.factory.reactor.seconds()
        request, pipeline = self.request, self.pipeline
        assert request is not None and request.framing is not None and pipeline is not None
        framing = request.framing
        try:
            pieces, used = framing.feed(data)
        except _wire.ProtocolError as e:
            return self._badRequest(e)
        self.session.received(data if used == len(data) else data[:used])
        spool = request.body
        for piece in pieces:
            spool.write(piece)
            request.bodySize += len(piece)
        request.wireSize += used
        # Chunk framing and trailers count too, past a margin for them.
        if request.bodySize > pipeline.maxBody or request.wireSize > pipeline.maxBody + _FRAMING_MARGIN:
            return pipeline.tooLarge()
        if not framing.done:
            return
        if used < len(data):
            self.buf += data[used:]
        self.idleSince = None
        self._to(ConnEvent.REQUEST_WHOLE)
        request.body.seek(0)
        self._run(pipeline.whole)

    def _badRequest(self, error: Exception) -> None:
        status = getattr(error, "status", 400)
        self._log.info("Malformed HTTP request from {client}: {why}", client=self.clientText, why=error)
        body = _wire.problem(status, "Bad request" if status == 400 else "Not implemented", str(error))
        if self.send(_wire.serializeHead(b"HTTP/1.1 %d %s" % (status, RESPONSES[status]), [
                (b"Content-Type", _wire.PROBLEM), (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close")]) + body, part="response"):
            self._close(unread=True)
        else:
            self.abort()

    def _run(self, step) -> None:
        try:
            step()
        except Exception:
            self._crashed(Failure(), self.request)

    def _crashed(self, failure, request) -> None:
        self._log.failure("HTTP request handling failed", failure)
        if self.state in (Conn.CHECK, Conn.WAIT) and self.exchange is None and request is not None:
            self.problem(request, 500, "Gateway error", "the gateway failed on this request")
        elif self.transport is not None:
            self.transport.abortConnection()

    # -- writing responses ---------------------------------------------------------

    def send(self, data: bytes, *, recorded: bytes | None = None, **context) -> bool:
        """
        The one way bytes reach this client.  With a session, its output
        step: C{data} is masked (HTTP bodies come masked already: the
        session's masker for this protocol only checks that they did), run
        through the output hooks, recorded and written.  Without one (a
        refusal before any login), written unrecorded: there is no session
        to record it in, and it carries nothing from a backend.

        @param recorded: C{data} with its secret header values replaced
            (a response head with Set-Cookie): that is what the hooks see
            and the recording keeps; the client gets C{data}, unless a hook
            changed it, when it gets what the hook made of it.
        @param context: for the output hooks (C{part}, C{content_type}).
        @return: False when the output step refused the bytes: nothing was
            sent and the refusal is sealed; the caller answers otherwise or
            cuts the connection.
        """
        session = self.session
        if session is None:
            Preamble().refuse(self.transport, data)
            return True
        try:
            if recorded is None:
                session.send(self.transport, data, **context)
                return True
            out = session.emit(recorded, **context)
        except OutputRefused as e:
            self._log.info("Output to {client} refused: {why}", client=self.clientText, why=e)
            return False
        # The only bytes a client gets that differ from the recording:
        # secret header values it may see and no recording may hold.
        writeNow(self.transport, data if out == recorded else out)
        return True

    def answer(self, request: Request, status: int, headers, body: bytes, close: bool = False) -> None:
        """Answer a request here, instead of its backend, and end the exchange."""
        if self.gone or self.state not in (Conn.CHECK, Conn.BODY, Conn.WAIT):
            return
        if self.pipeline is not None:
            self.pipeline.recordHead()
        # An answer before the body was read leaves the body unread: the
        # connection cannot carry another request.
        close = close or not request.keepAlive or (
            self.state is not Conn.WAIT and request.framing is not None)
        pairs = [*headers, (b"Content-Length", b"%d" % len(body))]
        if close:
            pairs.append((b"Connection", b"close"))
        out = _wire.serializeHead(b"HTTP/1.1 %d %s" % (status, RESPONSES.get(status, b"Error")), pairs)
        if self.send(out if request.method == b"HEAD" else out + body, part="response"):
            self.exchangeDone(close)
        else:
            self.abort()

    def problem(self, request: Request, status: int, title: str, detail: str,
                headers=(), close: bool = False, **extra) -> None:
        """Answer with an RFC 9457 problem and end the exchange."""
        body = _wire.problem(status, title, detail, instance=request.target.decode("latin-1"), **extra)
        self.answer(request, status, [(b"Content-Type", _wire.PROBLEM), (b"Cache-Control", b"no-store"),
                                      *headers], body, close)

    def abortSession(self, message: str) -> None:
        """
        The core ends the session (the store failed): a request still
        unanswered gets a 503 problem, then the connection closes.
        """
        exchange, request = self.exchange, self.request
        wrote = exchange is not None and exchange.wrote
        if exchange is not None:
            self.exchange = None
            exchange.clientLost()
        if request is not None and not wrote and self.state in (Conn.CHECK, Conn.BODY, Conn.WAIT):
            self.problem(request, 503, "Recording unavailable", message, close=True)
        if not self.gone and self.state is not Conn.CLOSED:
            self.transport.loseConnection()

    def exchangeDone(self, close: bool) -> None:
        """The response is out: read the next request, or close."""
        self.exchange = None
        self.request = None
        self.pipeline = None
        if self.gone:
            return
        if close:
            self._close(unread=self.state in (Conn.CHECK, Conn.BODY))
            return
        self._to(ConnEvent.ANSWERED)
        self.idleSince = self.factory.reactor.seconds()
        self.resumeReading()
        if self.buf:
            # Pipelined requests: one at a time, without growing the stack.
            self.factory.reactor.callLater(0, self._next)

    def resumeReading(self) -> None:
        """Read again what the relay held back (pipelined bytes)."""
        self.leg.resume(_AHEAD)

    def _next(self) -> None:
        if self.state is Conn.HEAD and not self.gone:
            self._readHead()

    def refuseLogin(self, kind: str, message: str) -> None:
        """The pre-login guard's refusal: a problem response (no session: unrecorded), then close."""
        self._to(ConnEvent.ANSWERED_CLOSE)
        self.send(httpRefusal(kind, message))
        self.transport.loseConnection()

    def _close(self, unread: bool) -> None:
        """Close after the last answer; bytes the client still sends are dropped, not read as requests."""
        self._to(ConnEvent.ANSWERED_CLOSE)
        del self.buf[:]
        self.resumeReading()
        if not unread or not isinstance(self.transport, tcp.Connection):
            self.transport.loseConnection()
            return
        self.transport.loseWriteConnection()
        self._lingerCall = self.factory.reactor.callLater(_LINGER, self.abort)

    def _linger(self, data: bytes) -> None:
        self._lingered += len(data)
        if self._lingered > _LINGER_BYTES:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def endSession(self, reason: str) -> None:
        session, self.session, self.credentialHash = self.session, None, None
        if session is not None:
            session.end(reason)

    def connectionLost(self, reason):
        self.gone = True
        for call in (self._idleCall, self._lingerCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._lingerCall = None
        self.state = connStep(self.state, ConnEvent.LOST)
        self.prelogin.connectionLost()
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
    string: what their requests share (routing, backend pools, the browser
    login); each request runs in its own L{Pipeline}.
    """

    _log = Logger()
    noisy = False

    def __init__(self, connections, gateway, secure: bool = False):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.secure = secure
        self.backends = [Backend(c) for c in connections]
        self.router = Router(self.backends)
        self.pools = {id(b): BackendPool(self.reactor, b.connection.backend, b.options.backend_timeout)
                      for b in self.backends}
        self.idleTimeout = max(c.options.idle_timeout for c in connections)
        self.lenient = any(c.options.lenient_targets for c in connections)
        self.login = BrowserLogin(gateway, self.reactor) if any(
            c.options.browser_login for c in connections) else None
        self.name = connections[0].name

    def buildProtocol(self, addr):
        return ClientConnection(self)

    def acceptableProtocols(self):
        # ALPN over TLS: this listener speaks HTTP/1.1 only.
        return [b"http/1.1"]

    def stopFactory(self):
        for pool in self.pools.values():
            pool.close()


def buildListener(connections, gateway):
    """The listening factory for every http connection sharing one listen string (TLS-wrapped if one has a cert)."""
    tls = next((c.options for c in connections if c.options.tls_cert), None)
    site = RelayFactory(connections, gateway, secure=tls is not None)
    if tls is None:
        return site
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    with open(tls.tls_cert, "rb") as f:
        certPem = f.read()
    with open(tls.tls_key, "rb") as f:
        keyPem = f.read()
    cert = ssl.PrivateCertificate.loadPEM(certPem + b"\n" + keyPem)
    chain = [ssl.Certificate.loadPEM(p).original for p in _pemBlocks(certPem)[1:]]
    options = ssl.CertificateOptions(privateKey=cert.privateKey.original,
                                     certificate=cert.original, extraCertChain=chain)
    return TLSMemoryBIOFactory(options, False, site)
