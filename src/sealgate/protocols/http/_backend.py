"""Backend side of the lean relay: pooled persistent connections, one request/response exchange at a time."""

import time
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from zope.interface import implementer

from sealgate import noDelay, writeNow
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._body import BodyMasker, MaskingFailed, bodyMode
from sealgate.session import TO_CLIENT

#: Methods a request may be sent again for when a kept-alive connection
#: turned out to be closed before any answer (RFC 9110 section 9.2.2).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: Bodies up to this size go out in one write with the head.
_INLINE_BODY = 256 << 10
#: An idle backend connection older than this is closed rather than reused:
#: servers drop idle connections, and a request sent on one would fail.
_MAX_IDLE_AGE = 30.0


class BackendConnection(Protocol):
    """One TCP (or TLS) connection to a backend, serving one L{Exchange} at a time."""

    # A TCP or TLS client transport: also a push producer (pause/resume),
    # which ITransport does not name.  Set before connectionMade, so never
    # None while the connection is in use.
    transport: Any
    exchange: "Exchange | None" = None
    idleSince = 0.0

    def __init__(self, pool):
        self.pool = pool
        self.alive = True

    def connectionMade(self):
        noDelay(self.transport)

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


class BackendPool:
    """Persistent connections to one backend endpoint; idle ones are reused newest first."""

    MAX_IDLE = 64

    def __init__(self, reactor, description: str):
        self.reactor = reactor
        self._endpoint = endpoints.clientFromString(reactor, description)
        self._factory = Factory.forProtocol(lambda: BackendConnection(self))
        self._idle: list[BackendConnection] = []

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
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.transport.loseConnection()


@implementer(IPushProducer)
class Exchange:
    """
    One request sent to the backend and its response relayed to the client
    connection (L{sealgate.protocols.http._relay.ClientConnection}).  Bodies
    that masking need not see pass as the backend's bytes, unparsed but for
    their framing; JSON is buffered and masked whole, text streamed through
    the masker.  While relaying, the client transport pauses the backend
    when it is full, and so does the recording store's backlog.
    """

    _log = Logger()

    # Per-exchange state; class defaults keep the per-request set-up short.
    conn: BackendConnection | None = None
    phase = "connect"
    retried = reused = received = uploading = False
    reusable = True
    buf = b""
    masker: BodyMasker | None = None
    mode = "pass"
    wrote = False
    framing: _framing.BodyFraming | None = None
    pendingHead = recordedHead = b""
    rawPass = True
    chunkOut = False
    secretHead = False
    registered = clientPaused = storePaused = False

    def __init__(self, client, request, backend, session, pool, pacer):
        self.client = client
        self.request = request
        self.backend = backend
        self.session = session
        self.pool = pool
        self.pacer = pacer
        self.closeAfter = not request.keepAlive

    # -- sending ---------------------------------------------------------------

    def start(self, head: bytes) -> None:
        self.head = head
        conn = self.pool.take()
        if conn is not None:
            self.reused = True
            self._send(conn)
            return
        self.reused = False
        self.pool.connect().addCallbacks(self._connected, self._connectFailed)

    def _connected(self, conn) -> None:
        if self.phase == "gone":
            self.pool.put(conn)
            return
        self._send(conn)

    def _connectFailed(self, failure) -> None:
        if self.phase == "gone":
            return
        self._log.info("Backend of {connection} unreachable: {error}",
                       connection=self.backend.connection.name, error=failure.getErrorMessage())
        self._failBeforeHead()

    def _send(self, conn: BackendConnection) -> None:
        self.conn = conn
        conn.exchange = self
        self.phase = "head"
        body = self.request.body
        transport = conn.transport
        if body is None:
            writeNow(transport, self.head)
            return
        body.seek(0)
        if self.request.bodySize <= _INLINE_BODY:
            writeNow(transport, self.head + body.read())
            return
        transport.write(self.head)
        self.uploading = True
        d = FileSender().beginFileTransfer(body, transport)
        d.addBoth(self._uploaded)

    def _uploaded(self, result) -> None:
        self.uploading = False

    # -- receiving ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        if self.phase == "body":
            self._body(data)
        elif self.phase == "head":
            self._head(data)
        elif self.phase == "done":
            self.reusable = False

    def _head(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 1 << 20:
                    return self._badResponse("response head too long")
                self.buf = buf
                return
            try:
                parsed = _wire.parseHeadIndexed(buf[:end], True)
            except _wire.ProtocolError as e:
                return self._badResponse(str(e))
            buf = buf[end + 4:]
            # Interim answers (100 Continue...) are the backend's business:
            # the gateway answered the client's Expect itself.
            status = parsed[0].status
            if status >= 200 or status == 101:
                break
        self.buf = b""
        if status == 101:
            return self._badResponse("switching protocols without an upgrade request")
        try:
            self._respond(parsed)
        except _wire.ProtocolError as e:
            return self._badResponse(str(e))
        if self.phase == "body":
            if self.framing is None:
                # A response without a body (204, 304, HEAD): bytes after
                # its head belong to no response, so the connection is spent.
                if buf:
                    self.reusable = False
                self._complete()
            elif buf:
                self._body(buf)

    def _respond(self, parsed) -> None:
        head, low, names = parsed
        request = self.request
        framing = _framing.responseFraming(low, head.status, request.method)
        connection = low.get(b"connection")
        drop = _wire.hopByHop(connection)
        if head.version != b"HTTP/1.1" or (connection and b"close" in b",".join(connection).lower()):
            self.reusable = False
        if framing is not None and framing.kind == "close":
            self.reusable = False
        chain = self.session.chain
        mode = "pass"
        if framing is not None and (chain.masker is not None or chain.wantsOutput):
            mode = bodyMode((low.get(b"content-type") or [None])[0],
                            (low.get(b"content-encoding") or [None])[0])
        if mode == "refuse":
            self.reusable = False
            self._finishBackend()
            self.client.problem(request, 502, "Response cannot be masked",
                                "the response uses a content coding the gateway cannot decode")
            return
        skip = drop
        if framing is not None and framing.kind != "length" and b"content-length" in low:
            # Chunked wins over a Content-Length beside it (RFC 9112 6.3);
            # passing both on would leave the client to guess.
            skip = drop | {b"content-length"}
        if mode in ("json", "text"):
            self.masker = BodyMasker(self.session, mode, (low.get(b"content-encoding") or [None])[0],
                                     self.backend.options.max_masked_body,
                                     (low.get(b"content-type") or [None])[0])
            skip = drop | {b"content-encoding", b"content-length"}
        pairs = [pair for pair, n in zip(head.headers, names, strict=True) if n not in skip]
        self.secretHead = not self.backend.options.secret_headers.isdisjoint(low)
        self.mode = mode
        self.framing = framing
        http11 = request.version == b"HTTP/1.1"
        if mode == "text" or (framing is not None and framing.kind == "chunked"):
            if http11:
                pairs.append((b"Transfer-Encoding", b"chunked"))
                self.chunkOut = mode == "text"
            else:
                self.closeAfter = True
                self.rawPass = False
        elif framing is not None and framing.kind == "close":
            self.closeAfter = True
        if self.closeAfter:
            pairs.append((b"Connection", b"close"))
        self.pairs = pairs
        self.first = b"HTTP/1.1 %d " % head.status + head.reason
        if mode != "json":
            self._setHead(pairs)
        self.phase = "body"

    def _setHead(self, pairs) -> None:
        self.pendingHead = head = _wire.serializeHead(self.first, pairs)
        if self.secretHead:
            secret = self.backend.options.secret_headers
            self.recordedHead = _wire.serializeHead(
                self.first, [(n, _wire.REDACTED if n.lower() in secret else v) for n, v in pairs])
        else:
            self.recordedHead = head

    def _emit(self, data: bytes) -> None:
        """Send bytes to the client (the head first), recording them as sent."""
        client = self.client
        self.wrote = True
        if self.pendingHead:
            head, self.pendingHead = self.pendingHead, b""
            if self.recordedHead is head:
                data = head + data
                client.send(data)
            else:
                record = self.session.record
                record(TO_CLIENT, self.recordedHead)
                if data:
                    record(TO_CLIENT, data)
                client.send(head + data, record=False)
            return
        if data:
            client.send(data)

    def _body(self, data: bytes) -> None:
        # Phase "body" with no framing completes at once in _head.
        framing = self.framing
        assert framing is not None
        try:
            pieces, used = framing.feed(data)
        except _wire.ProtocolError as e:
            return self._cut(f"backend body malformed: {e}", False)
        if used < len(data):
            self.reusable = False
        masker = self.masker
        if masker is None:
            if self.rawPass:
                self._emit(data if used == len(data) else data[:used])
            else:
                self._emit(b"".join(pieces))
        else:
            try:
                for piece in pieces:
                    out = masker.feed(piece)
                    if out:
                        self._emit(_wire.chunk(out) if self.chunkOut else out)
            except MaskingFailed as e:
                return self._maskFailed(str(e))
        if framing.done:
            self._complete()
            return
        if not self.registered and self.phase == "body":
            self.registered = True
            self.client.transport.registerProducer(self, True)
        conn = self.conn
        if self.pacer is not None and conn is not None and not self.storePaused and self.pacer.over():
            self.storePaused = True
            conn.transport.pauseProducing()
            self.pacer.drained().addCallback(self._storeDrained)

    def _complete(self) -> None:
        if self.masker is not None:
            try:
                tail = self.masker.finish()
            except MaskingFailed as e:
                return self._maskFailed(str(e))
            if self.mode == "json":
                self.pairs.append((b"Content-Length", b"%d" % len(tail)))
                self._setHead(self.pairs)
                self._emit(tail)
            elif self.chunkOut:
                self._emit((_wire.chunk(tail) if tail else b"") + _wire.LAST_CHUNK)
            elif tail:
                self._emit(tail)
        if self.pendingHead:
            self._emit(b"")
        self._finishBackend()
        self.client.exchangeDone(self.closeAfter)

    def _finishBackend(self) -> None:
        """Release the backend connection: back to the pool when it can carry another request."""
        self.phase = "done"
        if self.registered:
            self.registered = False
            self.client.transport.unregisterProducer()
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn.exchange = None
        if self.reusable and not self.uploading and conn.alive:
            if self.clientPaused or self.storePaused:
                conn.transport.resumeProducing()
            self.pool.put(conn)
        else:
            conn.alive = False
            conn.transport.loseConnection()

    # -- failures ------------------------------------------------------------------

    def backendLost(self, reason) -> None:
        if self.phase == "head":
            if self.reused and not self.received and not self.retried \
                    and self.request.method in _IDEMPOTENT:
                # A kept-alive connection the server had closed: try a fresh one.
                self.retried = True
                self.conn = None
                self.reused = False
                self.pool.connect().addCallbacks(self._connected, self._connectFailed)
                return
            self.conn = None
            self._log.info("Backend of {connection} closed before answering",
                           connection=self.backend.connection.name)
            self._failBeforeHead()
        elif self.phase == "body":
            self.conn = None
            framing = self.framing
            assert framing is not None  # phase "body" without framing never outlives _head
            try:
                framing.closed()
            except _wire.ProtocolError:
                return self._cut("backend closed inside the body", False)
            self._complete()

    def _failBeforeHead(self) -> None:
        self.phase = "done"
        self.client.problem(self.request, 502, "Backend unavailable",
                            "the backend could not be reached or answered badly")

    def _badResponse(self, why: str) -> None:
        self._log.info("Backend of {connection} answered badly: {why}",
                       connection=self.backend.connection.name, why=why)
        self.reusable = False
        self._finishBackend()
        self.client.problem(self.request, 502, "Backend unavailable",
                            "the backend could not be reached or answered badly")

    def _maskFailed(self, why: str) -> None:
        self._cut(why, True)

    def _cut(self, why: str, maskingFailed: bool) -> None:
        self._log.info("Response on session {session} not sent whole: {why}",
                       session=self.session.id, why=why)
        self.reusable = False
        self._finishBackend()
        if not self.wrote:
            if maskingFailed:
                return self.client.problem(self.request, 502, "Response cannot be masked",
                                           "the response could not be masked and was not sent")
            return self.client.problem(self.request, 502, "Backend unavailable",
                                       "the backend could not be reached or answered badly")
        # Part of the body is out: cut the connection so the client sees it incomplete.
        self.session.audit("http_response_cut", reason=why)
        self.client.abort()

    def clientLost(self) -> None:
        """The client went away mid-exchange: the backend connection cannot be reused."""
        self.reusable = False
        if self.phase == "connect":
            self.phase = "gone"
            return
        self._finishBackend()

    # -- IPushProducer, driven by the client transport -------------------------------

    def _storeDrained(self, _) -> None:
        self.storePaused = False
        if not self.clientPaused and self.conn is not None:
            self.conn.transport.resumeProducing()

    def pauseProducing(self):
        self.clientPaused = True
        if self.conn is not None:
            self.conn.transport.pauseProducing()

    def resumeProducing(self):
        self.clientPaused = False
        if self.conn is not None and not self.storePaused:
            self.conn.transport.resumeProducing()

    def stopProducing(self):
        self.clientLost()
