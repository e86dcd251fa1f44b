"""One HTTP request's way through the listener: login pages, routing, the credential, then its body, the decision and the backend."""

import hashlib
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sealgate import CONTINUE, AuthenticationFailed, Deny, Hold, MaskingFailed, SessionRefused
from sealgate.lifetime import closeReasonFor
from sealgate.protocols.http import _login, _wire
from sealgate.protocols.http._backend import Exchange
from sealgate.protocols.http._state import Conn, ConnEvent
from sealgate.protocols.http._upgrade import Relay, connectRelay

#: What a client may say about where it came from: the gateway says it
#: instead (X-Forwarded-For is appended to; the others would go unchecked).
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                        b"x-forwarded-port", b"x-forwarded-prefix", b"x-real-ip"})
_WITH_BODY = frozenset({b"POST", b"PUT", b"PATCH"})
_CHALLENGE = (b"WWW-Authenticate", b'Bearer realm="sealgate", Basic realm="sealgate"')
#: What HTTP sends, as its output step's masker sees it: "response" (the
#: gateway's own answers: masked here as text, they may echo a request's
#: target), "head" (response heads: masked field by field before they get
#: here, secret values recorded redacted), "body" (backend bodies, masked
#: by type before they get here), "websocket" (frames, masked message by
#: message before they get here).
_PARTS = frozenset({"head", "body", "websocket"})


def outputMaskerFor(masker):
    """
    The session's output masker for HTTP: heads, bodies and WebSocket
    messages are masked where they are parsed (header values and reason
    phrases, bodies by content type and coding in
    L{sealgate.protocols.http._body.BodyMasker}, frames in
    L{sealgate.protocols.http._websocket.MessageMasker}), so this passes
    those, masks the gateway's own answers (same length: their
    Content-Length holds) and refuses anything else (fail closed: a send
    without a part is a bug, never a leak).
    """

    def outputMasker(data: bytes, context) -> bytes:
        part = context.get("part")
        if part in _PARTS:
            return data
        if part == "response":
            return masker.maskBytes(data)
        raise MaskingFailed("HTTP output of an unknown kind")

    return outputMasker


class Pipeline:
    """
    The steps of one request, in order: the browser login's own pages
    (before routing), routing on the normalized target, the credential
    (the session is opened or reused) and the body limit, all before one
    byte of the body is read; then the body is read and recorded as it
    comes, and the whole request decided by the chain and forwarded (or
    upgraded).  The
    client connection (L{sealgate.protocols.http._relay.ClientConnection})
    reads and writes; this object only decides what happens next.
    """

    _log = Logger()
    #: The routed connection's L{sealgate.protocols.http._routing.Backend}, once routed.
    backend: Any = None
    maxBody = 0
    headRecorded = False

    def __init__(self, factory, client, request):
        self.factory = factory
        self.client = client
        self.request = request

    def _later(self, coroutine) -> None:
        d = defer.ensureDeferred(coroutine)
        d.addErrback(self.client._crashed, self.request)

    # -- before the body -------------------------------------------------------------

    def start(self) -> None:
        f, client, request = self.factory, self.client, self.request
        login = f.login
        if login is not None and request.path.startswith(_login.PREFIX):
            return self._later(self._loginPage())
        backend = f.router.route(request.host, request.path)
        if backend is None:
            return client.problem(request, 404, "No such service",
                                  "no connection on this listener serves this host and path")
        if request.lenient is not None and not backend.options.lenient_targets:
            return client.problem(request, 400, "Bad request", request.lenient)
        self.backend = backend
        self.maxBody = backend.options.max_body
        memo = request.memo.get("credential")
        if memo is None:
            credential = _wire.credentialFrom(request.get(b"authorization"))
            digest = hashlib.sha256(credential.encode()).digest() if credential is not None else b""
            request.memo["credential"] = (credential, digest)
        else:
            credential, digest = memo
        if credential is None and backend.options.browser_login:
            credential = login.credentialFor(request)
            if credential is None and login.wantsLogin(request):
                return self._later(self._loginStart(backend))
            if credential is not None:
                digest = hashlib.sha256(credential.encode()).digest()
        if credential is None:
            return client.problem(request, 401, "Authentication required",
                                  "send Authorization: Bearer <token or API key>", headers=[_CHALLENGE])
        if client.session is None or client.credentialHash != digest or client.backend is not backend:
            return self._later(self._openSession(credential, digest))
        if not self.factory.gateway.lifetime.fresh(client.session):
            # Kept alive past the credential cache: is the key still valid?
            return self._later(self._recheck(credential))
        self.authenticated()

    async def _recheck(self, credential: str) -> None:
        client, request = self.client, self.request
        try:
            await self.factory.gateway.lifetime.recheck(client.session, credential, client.clientText)
        except AuthenticationFailed as e:
            client.endSession(closeReasonFor(e))
            return client.problem(request, 401, "Authentication failed", str(e), headers=[
                (b"WWW-Authenticate", b'Bearer realm="sealgate", error="invalid_token"')])
        if not client.gone:
            self.authenticated()

    async def _loginPage(self) -> None:
        client = self.client
        answer = await self.factory.login.page(self.request, self.factory.router, self.factory.secure,
                                               client.clientText)
        client.answer(self.request, answer.status, answer.headers, answer.body)

    async def _loginStart(self, backend) -> None:
        try:
            answer = await self.factory.login.start(self.request, backend, self.factory.secure)
        except _login.LoginFailed as e:
            return self.client.problem(self.request, 502, "Login unavailable", str(e))
        self.client.answer(self.request, answer.status, answer.headers, answer.body)

    async def _openSession(self, credential: str, digest: bytes) -> None:
        client, request, backend = self.client, self.request, self.backend
        client.endSession("identity or connection changed")
        try:
            identity = await self.factory.gateway.authenticate(backend.connection, credential,
                                                               client.clientText)
        except AuthenticationFailed as e:
            return client.problem(request, 401, "Authentication failed", str(e), headers=[
                (b"WWW-Authenticate", b'Bearer realm="sealgate", error="invalid_token"')])
        if client.gone or client.state is Conn.CLOSED:
            return None
        try:
            session = self.factory.gateway.openSession(
                backend.connection, identity, client.clientText,
                {"tls": self.factory.secure, "host": request.host.decode("latin-1")})
        except SessionRefused as e:
            # A store that cannot record now (its backlog over max_unsealed, its
            # writer restarting) refuses new sessions until it can: say when to come back.
            again = [(b"Retry-After", b"1")] if e.code == "store" else []
            return client.problem(request, 403 if e.code == "access" else 503, "Session refused", str(e),
                                  headers=again)
        session.abort = client.abortSession
        if session.chain.masker is not None:
            session.setOutputMasker(outputMaskerFor(session.chain.masker))
        session.attach(client.leg)
        client.prelogin.authenticated()
        client.session, client.credentialHash, client.backend = session, digest, backend
        self.authenticated()

    def authenticated(self) -> None:
        framing = self.request.framing
        if framing is not None and framing.kind == "length" and framing.length > self.maxBody:
            return self.tooLarge()
        self.client.readBody()

    def tooLarge(self) -> None:
        """The body is over the connection's C{max_body}: refused, and the connection closes."""
        self.client.problem(self.request, 413, "Request body too large",
                            f"this connection takes request bodies up to {self.maxBody} bytes",
                            max_body=self.maxBody)

    # -- with the body in ------------------------------------------------------------

    def whole(self) -> None:
        """The request is whole (and recorded as it came): decide."""
        session = self.client.session
        if not session.chain.wantsCommand:
            return self.dispatch(CONTINUE)
        request = self.request
        text, details = self._details()
        # HTTP forwards the request as the client framed it: a Rewrite is
        # not applied, so the core turns it into an audited denial.
        decision = session.decide("http", text, details, rewritable=False)
        if decision.held:
            self.holdNotice(decision.verdict)
            decision.pending.addCallback(self.dispatch)
            decision.pending.addErrback(self.client._crashed, request)
            return
        self.dispatch(decision.verdict)

    def _details(self) -> tuple[str, dict]:
        """
        The command text and details the chain decides on and the audit
        event keeps: worked out once per head a connection repeats, and
        each request gets its own dicts (an interceptor may keep them).
        """
        request = self.request
        secret = self.backend.options.secret_headers
        memo = request.memo.get("details")
        if memo is None or memo[0] is not secret:
            method = request.method.decode("latin-1")
            details = {
                "method": method, "path": request.path.decode("latin-1"),
                "query": (request.query or b"").decode("latin-1"),
                "headers": {n.decode("latin-1"): b", ".join(vs).decode("latin-1")
                            for n, vs in request.low.items() if n not in secret},
                "body_size": 0,
            }
            upgrade = request.get(b"upgrade")
            if upgrade:
                details["upgrade"] = upgrade.lower().decode("latin-1")
            memo = request.memo["details"] = (secret, f"{method} {request.target.decode('latin-1')}",
                                              details)
        details = dict(memo[2])
        details["headers"] = dict(details["headers"])
        details["body_size"] = request.bodySize
        return memo[1], details

    def dispatch(self, verdict) -> None:
        client, request = self.client, self.request
        if client.gone:
            return None
        if isinstance(verdict, Deny):
            return client.problem(request, 403, "Request denied by policy", verdict.reason,
                                  rule=verdict.rule)
        if (request.get(b"upgrade") or b"").lower() == b"websocket":
            return self.upgrade()
        exchange = Exchange(client, request, self.backend, client.session,
                            self.factory.pools[id(self.backend)])
        client.exchange = exchange
        exchange.start(self.forwardHead(False))

    # -- pieces ------------------------------------------------------------------

    def forwardHead(self, upgrade: bool) -> bytes:
        """The request head the backend gets: normalized target, its credential, one Host."""
        request, backend, client = self.request, self.backend, self.client
        masked = upgrade and client.session.chain.masker is not None
        # All but the length depends on the head, the backend and the
        # client connection (its address, TLS or not): worked out once per
        # head a connection repeats (L{HeadCache}).
        memo = request.memo.get("forward")
        if memo is not None and memo[0] is backend and memo[1] == (upgrade, masked):
            lines = memo[2]
        else:
            lines = self._forwardLines(upgrade, masked)
            request.memo["forward"] = (backend, (upgrade, masked), lines)
        if request.body is not None:
            return lines + b"\r\nContent-Length: %d\r\n\r\n" % request.bodySize
        if request.method in _WITH_BODY:
            return lines + b"\r\nContent-Length: 0\r\n\r\n"
        return lines + b"\r\n\r\n"

    def _forwardLines(self, upgrade: bool, masked: bool) -> bytes:
        request, backend, client = self.request, self.backend, self.client
        low = request.low
        drop = _wire.hopByHop(low.get(b"connection"))
        if upgrade:
            drop -= {b"upgrade", b"connection"}
            if masked:
                # Masking reads every frame: no extension (compression) is offered.
                drop |= {b"sec-websocket-extensions"}
        options = backend.options
        parts = [request.method + b" " + request.target + b" HTTP/1.1",
                 b"Host: " + (request.host if options.preserve_host else backend.hostHeader)]
        for (name, value), n in zip(request.headers, request.names, strict=True):
            if n in drop or n in _wire.DROP_REQUEST or n in _FORWARDED:
                continue
            if n == b"cookie" and options.browser_login:
                kept = _login.stripCookie([value])
                if not kept:
                    continue
                value = kept[0]
            parts.append(name + b": " + value)
        forwarded = low.get(b"x-forwarded-for", [])
        parts.append(b"X-Forwarded-For: " + b", ".join([*forwarded, client.clientHost.encode()]))
        parts.append(b"X-Forwarded-Proto: " + (b"https" if self.factory.secure else b"http"))
        parts.append(b"X-Forwarded-Host: " + request.host)
        for name, value in options.inject:
            parts.append(name + b": " + value)
        return b"\r\n".join(parts)

    def recordHead(self) -> None:
        """Record the request head in the session, once (before its body, or before an answer to it)."""
        session = self.client.session
        if session is not None and not self.headRecorded:
            self.headRecorded = True
            session.received(self.recordedHead())

    def recordedHead(self) -> bytes:
        """The request head as the client sent it, secret values redacted: what the recording keeps."""
        request = self.request
        backend = self.backend
        secret = backend.options.secret_headers if backend is not None else _wire.SECRET_HEADERS
        memo = request.memo.get("recorded")
        if memo is not None and memo[0] is secret:
            return memo[1]
        first = request.method + b" " + request.sent + b" " + request.version
        if secret.isdisjoint(request.low):
            pairs = request.headers
        else:
            pairs = [(n, _wire.REDACTED if ln in secret else v)
                     for (n, v), ln in zip(request.headers, request.names, strict=True)]
        head = _wire.serializeHead(first, pairs)
        request.memo["recorded"] = (secret, head)
        return head

    def holdNotice(self, hold: Hold) -> None:
        """Tell the client at once that its request waits: a 1xx response clients skip, recorded."""
        if self.request.version != b"HTTP/1.1" or self.client.gone:
            return
        message = hold.message.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        masker = self.client.session.chain.masker
        if masker is not None:
            message = masker.maskBytes(message)
        if not self.client.send(b"HTTP/1.1 102 Processing\r\nSealgate-Ticket: "
                                + hold.ticket.encode("ascii", "replace")
                                + b"\r\nSealgate-Notice: " + message + b"\r\n\r\n", part="head"):
            self.client.abort()

    def upgrade(self) -> None:
        """Hand the client connection over to a raw, recorded WebSocket relay."""
        client, backend = self.client, self.backend
        relay = Relay(client, client.session, self.forwardHead(True), backend.options.secret_headers,
                      backend.options.max_masked_body)
        client.relay = relay
        client._to(ConnEvent.UPGRADED)
        buffered = bytes(client.buf)
        del client.buf[:]
        client.resumeReading()
        if buffered:
            relay.fromClient(buffered)
        connectRelay(relay, self.factory.reactor, backend)
