"""Backend side of the relay: one request/response exchange at a time on a pooled connection."""

from typing import Any

from twisted.logger import Logger
from twisted.protocols.basic import FileSender

from sealgate import writeNow
from sealgate.protocols.http import _framing, _wire
from sealgate.protocols.http._body import BodyMasker, MaskingFailed
from sealgate.protocols.http._masked import MaskedResponse
from sealgate.protocols.http._pool import BackendConnection
from sealgate.protocols.http._response import ResponsePlan, planKey, planResponse, redactPairs
from sealgate.protocols.http._state import Exch, ExchEvent, exchStep

#: Methods a request may be sent again for when a kept-alive connection
#: turned out to be closed before any answer (RFC 9110 section 9.2.2).
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: Bodies up to this size go out in one write with the head.
_INLINE_BODY = 256 << 10


class Exchange(MaskedResponse):
    """
    One request sent to the backend and its response relayed to the client
    connection (L{sealgate.protocols.http._relay.ClientConnection}).  Bodies
    that masking need not see pass as the backend's bytes, unparsed but for
    their framing; JSON is buffered and masked whole, text streamed through
    the masker.  The backend connection is the session's backend leg while
    the exchange lasts: the client transport pauses it when full, the core
    for the store.  A backend silent for C{backend_timeout} (not counting
    those pauses) gets the client a 504, or, once part of the body is out,
    a cut connection.  Every byte to the client goes through the client
    connection's C{send}, the session's output step.
    """

    _log = Logger()

    # Per-exchange state; class defaults keep the per-request set-up short.
    conn: BackendConnection | None = None
    state = Exch.CONNECT
    lastHeard = 0.0
    retried = reused = received = uploading = False
    reusable = True
    buf = b""
    masker: BodyMasker | None = None
    mode = "pass"
    wrote = False
    framing: _framing.BodyFraming | None = None
    pendingHead = recordedHead = b""
    #: A masked-whole body's head up to its Content-Length (no secret header).
    lengthHead = b""
    rawPass = True
    chunkOut = False
    #: A text-mode body's own Content-Length (no content coding): if the
    #: masker finds it is not text and passes it, it goes out as it came.
    passLength: bytes | None = None
    secretHead = False
    registered = False
    contentType = ""
    #: The transport attached as the session's backend leg.
    legTransport: Any = None

    def __init__(self, client, request, backend, session, pool):
        self.client = client
        self.request = request
        self.backend = backend
        self.session = session
        self.pool = pool
        self.closeAfter = not request.keepAlive
        self.timeout = backend.options.backend_timeout

    def _to(self, event: ExchEvent) -> None:
        self.state = exchStep(self.state, event)

    # -- sending ---------------------------------------------------------------

    def start(self, head: bytes) -> None:
        self.head = head
        self._heard()
        self.pool.silence.watch(self)
        conn = self.pool.take()
        if conn is not None:
            self.reused = True
            self._send(conn)
            return
        self.reused = False
        self.pool.connect().addCallbacks(self._connected, self._connectFailed)

    def _connected(self, conn) -> None:
        if self.state in (Exch.GONE, Exch.DONE):
            self.pool.put(conn)
            return
        self._send(conn)

    def _connectFailed(self, failure) -> None:
        if self.state in (Exch.GONE, Exch.DONE):
            return
        self._log.info("Backend of {connection} unreachable: {error}",
                       connection=self.backend.connection.name, error=failure.getErrorMessage())
        self._failBeforeHead()

    def _send(self, conn: BackendConnection) -> None:
        self.conn = conn
        conn.exchange = self
        self.legTransport = conn.transport
        self.session.attach(self.client.leg, conn.transport)
        self._to(ExchEvent.SENT)
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
        self._heard()

    # -- the backend's silence -----------------------------------------------------

    def _heard(self) -> None:
        """The backend showed life (or the wait for it starts): its silence counts from now."""
        self.lastHeard = self.pool.reactor.seconds()

    def checkSilence(self, now: float) -> None:
        """Asked by the pool's L{SilenceWatch} on each tick while this exchange waits on the backend."""
        if self.state not in (Exch.CONNECT, Exch.HEAD, Exch.BODY):
            self.pool.silence.unwatch(self)
            return
        leg = self.session.backendLeg
        if self.uploading or (leg is not None and leg.paused):
            # Waiting on us or on the client, not on the backend.
            self.lastHeard = now
            return
        if now - self.lastHeard < self.timeout:
            return
        self._log.info("Backend of {connection} silent for {timeout} s",
                       connection=self.backend.connection.name, timeout=self.timeout)
        self.reusable = False
        if self.wrote:
            return self._cut(f"the backend went silent for {self.timeout:g} s inside the body", False)
        self._finishBackend()
        self.client.problem(self.request, 504, "Backend timeout",
                            f"the backend did not answer within {self.timeout:g} s")

    # -- receiving ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.received = True
        self.lastHeard = self.pool.reactor.seconds()
        state = self.state
        if state is Exch.BODY:
            self._body(data)
        elif state is Exch.HEAD:
            self._head(data)
        else:
            self.reusable = False

    def _head(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        request = self.request
        plans = self.pool.plans
        plan = None
        context = planKey(request.method, request.version, self.closeAfter, self.session.chain)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 1 << 20:
                    return self._badResponse("response head too long")
                self.buf = buf
                return
            raw = buf[:end]
            plan = plans.get(raw, context)
            buf = buf[end + 4:]
            if plan is not None:
                break
            try:
                parsed = _wire.parseHeadIndexed(raw, True, strict=True)
            except _wire.ProtocolError as e:
                return self._badResponse(str(e))
            # 100 Continue is the backend's business: the gateway answered
            # the client's Expect itself.  Other interim answers (103 Early
            # Hints) go on to an HTTP/1.1 client, masked like any head.
            status = parsed[0].status
            if status >= 200 or status == 101:
                break
            if status != 100 and request.version == b"HTTP/1.1" and not self._interim(parsed):
                return
        self.buf = b""
        if plan is None:
            if status == 101:
                return self._badResponse("switching protocols without an upgrade request")
            try:
                plan = planResponse(parsed, request.method, request.version, self.closeAfter,
                                    self.session.chain, self.backend.options.secret_headers)
            except _wire.ProtocolError as e:
                return self._badResponse(str(e))
            plans.put(raw, context, plan, parsed[1])
        self._respond(plan)
        if self.state is Exch.BODY:
            if self.framing is None:
                # A response without a body (204, 304, HEAD): bytes after
                # its head belong to no response, so the connection is spent.
                if buf:
                    self.reusable = False
                self._complete()
            elif buf:
                self._body(buf)

    def _respond(self, plan: ResponsePlan) -> None:
        """Take the response head's plan (L{planResponse}): its framing, body mode and head to send."""
        if not plan.reusable:
            self.reusable = False
        mode = plan.mode
        if mode == "refuse":
            self.reusable = False
            self._finishBackend()
            self.client.problem(self.request, 502, "Response cannot be masked",
                                "the response uses a content coding the gateway cannot decode")
            return
        self.contentType = plan.contentType
        self.passLength = plan.passLength
        if mode == "json" or mode == "text":
            # Its output hooks run in the session's output step, not here.
            self.masker = BodyMasker(self.session, mode, plan.contentEncoding,
                                     self.backend.options.max_masked_body, plan.contentTypeRaw,
                                     hooks=False, memo=self.client.lastBody)
        self.secretHead = plan.secretHead
        self.mode = mode
        self.framing = plan.framing()
        self.closeAfter = plan.closeAfter
        self.chunkOut = plan.chunkOut
        self.rawPass = plan.rawPass
        self.pairs = list(plan.pairs)
        self.first = plan.first
        self.lengthHead = plan.lengthHead
        if mode != "json":
            self.pendingHead = plan.head
            self.recordedHead = plan.recorded
        self._to(ExchEvent.GOT_HEAD)

    def _setHead(self, pairs) -> None:
        self.pendingHead = head = _wire.serializeHead(self.first, pairs)
        if self.secretHead:
            secret = self.backend.options.secret_headers
            self.recordedHead = _wire.serializeHead(self.first, redactPairs(pairs, secret))
        else:
            self.recordedHead = head

    def _emit(self, data: bytes) -> bool:
        """
        Send bytes to the client (the head first) through its output step;
        False when it refused them (the exchange is then over).
        """
        client = self.client
        sent = True
        if self.pendingHead:
            head, self.pendingHead = self.pendingHead, b""
            if self.recordedHead is head:
                # One write for head and body: the usual small response.
                sent = client.send(head + data, part="body", content_type=self.contentType)
                data = b""
            else:
                sent = self.wrote = client.send(head, recorded=self.recordedHead, part="head")
        if sent and data:
            sent = client.send(data, part="body", content_type=self.contentType)
        if not sent:
            self._refused()
            return False
        self.wrote = True
        return True

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
                out = data if used == len(data) else data[:used]
            else:
                out = b"".join(pieces)
                if self.chunkOut and out:
                    out = _wire.chunk(out)
            if not self._emit(out):
                return
        else:
            try:
                for i, piece in enumerate(pieces):
                    out = masker.feed(piece)
                    if self.chunkOut and self.pendingHead and self.passLength is not None and masker.passing:
                        self._passThrough()
                        if not self._emit(b"".join([out, *pieces[i + 1:]])):
                            return
                        break
                    if out and not self._emit(_wire.chunk(out) if self.chunkOut else out):
                        return
            except MaskingFailed as e:
                return self._maskFailed(str(e))
        if framing.done:
            self._complete()
            return
        leg = self.session.backendLeg
        if not self.registered and self.state is Exch.BODY and leg is not None:
            # A full client transport pauses the backend leg (and only for that reason).
            self.registered = True
            self.client.transport.registerProducer(leg, True)

    def _complete(self) -> None:
        if self.masker is not None and self.mode == "json":
            if self.masker.inline:
                try:
                    tail = self.masker.finish()
                except MaskingFailed as e:
                    return self._maskFailed(str(e))
                self._finishBackend()
                return self._maskedWhole(tail)
            # Masked whole, a big body in a thread: the backend connection
            # is free meanwhile, the client waits for its one answer.
            self._finishBackend()
            d = self.masker.finishAsync(self.pool.reactor)
            d.addCallbacks(self._maskedWhole, self._maskedWholeFailed)
            d.addErrback(self.client._crashed, self.request)
            return
        if self.masker is not None:
            try:
                tail = self.masker.finish()
            except MaskingFailed as e:
                return self._maskFailed(str(e))
            if self.chunkOut:
                sent = self._emit((_wire.chunk(tail) if tail else b"") + self._lastChunk())
            else:
                sent = self._emit(tail) if tail else True
            if not sent:
                return
        elif self.chunkOut and not self._emit(self._lastChunk()):
            return
        if self.pendingHead and not self._emit(b""):
            return
        self._finishBackend()
        self.client.exchangeDone(self.closeAfter)

    def _finishBackend(self) -> None:
        """Release the backend connection: back to the pool when it can carry another request."""
        self._to(ExchEvent.FINISHED)
        self.pool.silence.unwatch(self)
        if self.registered:
            self.registered = False
            self.client.transport.unregisterProducer()
        session = self.session
        leg = session.backendLeg
        paused = False
        if leg is not None and leg.transport is self.legTransport:
            # The connection leaves the session (even one already lost):
            # the next exchange attaches its own leg.
            paused, session.backendLeg = leg.paused, None
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn.exchange = None
        if self.reusable and not self.uploading and conn.alive:
            if paused:
                conn.transport.resumeProducing()
            self.pool.put(conn)
        else:
            conn.alive = False
            conn.transport.loseConnection()

    # -- failures ------------------------------------------------------------------

    def backendLost(self, reason) -> None:
        if self.state is Exch.HEAD:
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
        elif self.state is Exch.BODY:
            self.conn = None
            framing = self.framing
            assert framing is not None  # phase "body" without framing never outlives _head
            try:
                framing.closed()
            except _wire.ProtocolError:
                return self._cut("backend closed inside the body", False)
            self._complete()

    def _failBeforeHead(self) -> None:
        self._finishBackend()
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

    def _refused(self) -> None:
        """The output step refused what the backend sent (sealed there): answer otherwise, or cut."""
        self._cut("the output step refused the response", True)

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
        if self.state is Exch.CONNECT:
            self._to(ExchEvent.CLIENT_LEFT)
            self.pool.silence.unwatch(self)
            return
        self._finishBackend()
