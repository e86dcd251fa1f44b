"""The twisted.web listener: one session per client connection, each request a command, forwarded with Agent."""

import hashlib
import re

from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from sealgate.chain.verdicts import Deny, Hold
from sealgate.identity import AuthenticationFailed
from sealgate.lifetime import closeReasonFor
from sealgate.prelogin import GuardedChannel
from sealgate.protocols.http import _login, _wire
from sealgate.protocols.http._body import BodyMasker, ResponseRelay, StorePacer, bodyMode
from sealgate.session import FROM_CLIENT, TO_CLIENT, SessionRefused

_PROBLEM = b"application/problem+json"
#: Request headers never forwarded besides the hop-by-hop ones: the user's
#: credential (replaced by the backend's) and what Agent sets itself.
_DROP_REQUEST = frozenset({b"authorization", b"proxy-authorization", b"expect", b"content-length"})


def _endpointHostPort(description: str) -> tuple[str, int]:
    """Host and port named by a client endpoint string, for the Host header and pool key."""
    parts = re.split(r"(?<!\\):", description)
    kw = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    host = kw.get("host") or (positional[0] if positional else "localhost")
    port = kw.get("port") or (positional[1] if len(positional) > 1 else "80")
    return host.replace("\\:", ":"), int(port)


@implementer(IAgentEndpointFactory)
class _BackendEndpoints:
    """Every request of one connection goes to its configured endpoint (tcp, tls, unix...)."""

    def __init__(self, reactor, description: str):
        # Parsed once: Agent asks for the endpoint on every request.
        self._endpoint = endpoints.clientFromString(reactor, description)

    def endpointForURI(self, uri):
        return self._endpoint


class Backend:
    """One connection's way to its backend: a persistent pool and an Agent."""

    def __init__(self, connection, reactor, pool):
        self.connection = connection
        self.options = connection.options
        self.host, self.port = _endpointHostPort(connection.backend)
        self.hostHeader = self.host.encode() if self.port == 80 else f"{self.host}:{self.port}".encode()
        self.agent = Agent.usingEndpointFactory(
            reactor, _BackendEndpoints(reactor, connection.backend), pool=pool)
        self.baseURL = f"http://{self.hostHeader.decode()}".encode()


class Router:
    """Picks the connection for a request by Host name and path prefix."""

    def __init__(self, backends: list[Backend]):
        # Most specific first: a host list beats none, a longer prefix beats a shorter.
        self._backends = sorted(
            backends, key=lambda b: (not b.options.hosts, -len(b.options.path_prefix or "")))
        # One connection taking every host and path: nothing to look at.
        only = self._backends[0] if len(self._backends) == 1 else None
        self._only = only if only is not None and not (
            only.options.hosts or only.options.path_prefix) else None

    def route(self, host: bytes | None, path: bytes) -> Backend | None:
        if self._only is not None:
            return self._only
        name = (host or b"").decode("latin-1").lower()
        if name.startswith("["):
            name = name.split("]")[0] + "]"
        else:
            name = name.split(":")[0]
        p = path.decode("latin-1")
        for b in self._backends:
            o = b.options
            if o.hosts and name not in o.hosts:
                continue
            if o.path_prefix and not (p == o.path_prefix or p.startswith(o.path_prefix + "/")
                                      or p.startswith(o.path_prefix + "?")):
                continue
            return b
        return None


class ProxyChannel(GuardedChannel, http.HTTPChannel):
    """
    One client TCP connection: at most one live session (one identity on
    one connection); every byte written to the client is recorded in it.
    """

    session = None
    credentialHash: bytes | None = None
    backend: Backend | None = None
    wrapper = None

    def writeHeaders(self, version, code, reason, headers):
        if self.session is not None:
            secret = self.backend.options.secret_headers if self.backend else _wire.SECRET_HEADERS
            pairs = [(n, _wire.REDACTED if n.lower() in secret else v)
                     for n, vs in headers.getAllRawHeaders() for v in vs]
            self.session.record(TO_CLIENT, _wire.serializeHead(version + b" " + code + b" " + reason, pairs))
        super().writeHeaders(version, code, reason, headers)

    def write(self, data):
        if self.session is not None and data:
            self.session.record(TO_CLIENT, data)
        super().write(data)

    def writeSequence(self, iovec):
        if self.session is not None:
            self.session.record(TO_CLIENT, b"".join(iovec))
        super().writeSequence(iovec)

    def endSession(self, reason: str) -> None:
        session, self.session, self.credentialHash = self.session, None, None
        if session is not None:
            session.end(reason)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.endSession("client closed" if reason.check(ConnectionDone) else "connection lost")


def _channelFactory(site):
    channel = ProxyChannel()
    wrapper = http._GenericHTTPChannelProtocol(channel)
    # Kept for the WebSocket hand-over, which replaces the channel under it.
    channel.wrapper = wrapper
    return wrapper


class ProxyRequest(server.Request):
    """Skips resource traversal: every request goes to the proxy."""

    def process(self):
        self.site = self.channel.site
        d = defer.ensureDeferred(self.site.proxy.handle(self))
        d.addErrback(self.site.proxy.crashed, self)


class ProxySite(server.Site):
    protocol = _channelFactory
    noisy = False
    #: The gateway's pre-login guard and this listener's name, for the channels.
    prelogin: tuple

    def __init__(self, proxy, reactor, idleTimeout: float):
        # An idle kept-alive connection holds its session open: close it.
        # Bodies are forwarded as bytes: never parse uploaded forms here.
        super().__init__(None, requestFactory=ProxyRequest, reactor=reactor,
                         timeout=idleTimeout, parsePOSTFormSubmission=False)
        self.proxy = proxy

    def log(self, request):
        # Each request is already an audited command in its session.
        pass


class Proxy:
    """The request pipeline shared by all connections of one listener."""

    _log = Logger()

    def __init__(self, connections, gateway):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.backends = [Backend(c, self.reactor, self.pool) for c in connections]
        self.router = Router(self.backends)
        self.pacer = StorePacer(getattr(gateway, "store", None), self.reactor)
        self.login = _login.BrowserLogin(gateway, self.reactor)

    # -- the pipeline ------------------------------------------------------

    async def handle(self, request) -> None:
        channel = request.channel
        path = request.path
        backend = self.router.route(request.getHeader(b"host"), request.uri)
        if backend is None:
            return self.problem(request, 404, "No such service",
                                "no connection on this listener serves this host and path")
        credential = _wire.credentialFrom(request.getHeader(b"authorization"))
        if backend.options.browser_login:
            if path.startswith(_login.PREFIX):
                return await self.loginRoute(request, backend, path)
            if credential is None:
                credential = self.login.credentialFor(request)
            if credential is None and self.login.wantsLogin(request):
                try:
                    return await self.login.start(request, backend)
                except _login.LoginFailed as e:
                    return self.problem(request, 502, "Login unavailable", str(e))
        if credential is None:
            request.setHeader(b"www-authenticate", b'Bearer realm="sealgate", Basic realm="sealgate"')
            return self.problem(request, 401, "Authentication required",
                                "send Authorization: Bearer <token or API key>")
        client = request.getClientAddress()
        clientText = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
        digest = hashlib.sha256(credential.encode()).digest()
        if channel.session is None or channel.credentialHash != digest or channel.backend is not backend:
            channel.endSession("identity or connection changed")
            try:
                identity = await self.gateway.authenticate(backend.connection, credential, clientText)
            except AuthenticationFailed as e:
                request.setHeader(b"www-authenticate", b'Bearer realm="sealgate", error="invalid_token"')
                return self.problem(request, 401, "Authentication failed", str(e))
            if request._disconnected:
                return None
            try:
                session = self.gateway.openSession(
                    backend.connection, identity, clientText,
                    {"tls": request.isSecure(), "host": (request.getHeader(b"host") or b"").decode("latin-1")})
            except SessionRefused as e:
                status = 403 if e.code == "access" else 503
                return self.problem(request, status, "Session refused", str(e))
            session.abort = lambda message: channel.transport.loseConnection()
            channel.session, channel.credentialHash, channel.backend = session, digest, backend
        elif not self.gateway.lifetime.fresh(channel.session):
            try:
                await self.gateway.lifetime.recheck(channel.session, credential, clientText)
            except AuthenticationFailed as e:
                channel.endSession(closeReasonFor(e))
                return self.problem(request, 401, "Authentication failed", str(e))
        session = channel.session
        await self.recordRequest(request, session, backend)
        if request._disconnected:
            return None

        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        method = request.method.decode("latin-1")
        target = request.uri.decode("latin-1")
        if session.chain.wantsCommand:
            details = {
                "method": method, "path": path.decode("latin-1"),
                "query": request.uri.partition(b"?")[2].decode("latin-1"),
                "headers": self.headersForRules(request, backend),
                "body_size": self.bodySize(request),
            }
            if upgrade:
                details["upgrade"] = upgrade.decode("latin-1")
            verdict = session.command("http", f"{method} {target}", details)
            if isinstance(verdict, Hold):
                self.holdNotice(request, verdict)
                verdict = await verdict.result
            if isinstance(verdict, Deny):
                if not request.finished and channel.transport is not None:
                    self.problem(request, 403, "Request denied by policy", verdict.reason,
                                 rule=verdict.rule)
                return None
            if channel.transport is None or request._disconnected:
                return None
        if upgrade == b"websocket":
            from sealgate.protocols.http._upgrade import handOver

            return handOver(request, channel, backend, self.forwardHeaders(request, backend, True), session)
        await self.forward(request, backend, session)

    async def loginRoute(self, request, backend: Backend, path: bytes) -> None:
        try:
            if path == _login.PREFIX + b"callback":
                return await self.login.callback(request, backend)
            if path == _login.PREFIX + b"logout":
                return self.login.logout(request)
            if path == _login.PREFIX + b"login":
                return await self.login.start(request, backend)
        except _login.LoginFailed as e:
            return self.problem(request, 403, "Login failed", str(e))
        return self.problem(request, 404, "No such page", "unknown sealgate login page")

    async def forward(self, request, backend: Backend, session) -> None:
        headers = self.forwardHeaders(request, backend, False)
        size = self.bodySize(request)
        producer = None
        if size or request.getHeader(b"transfer-encoding"):
            request.content.seek(0)
            producer = FileBodyProducer(request.content)
        url = backend.baseURL + request.uri
        d = backend.agent.request(request.method, url, headers, producer)
        finished = request.notifyFinish()
        finished.addErrback(lambda _: d.cancel())
        try:
            response = await d
        except defer.CancelledError:
            return None
        except Exception as e:
            self._log.info("Backend of {connection} failed: {error}",
                           connection=backend.connection.name, error=e)
            if not request._disconnected:
                self.problem(request, 502, "Backend unavailable",
                             "the backend could not be reached or answered badly")
            return None
        if request._disconnected:
            response.deliverBody(_Discard())
            return None
        self.respond(request, response, backend, session)

    def respond(self, request, response, backend: Backend, session) -> None:
        raw = response.headers
        drop = _wire.hopByHop(raw.getRawHeaders(b"connection"))
        out = request.responseHeaders
        for name, values in raw.getAllRawHeaders():
            if name.lower() not in drop:
                out.setRawHeaders(name, values)
        request.setResponseCode(response.code, response.phrase)
        noBody = request.method == b"HEAD" or response.code in (204, 304) or response.code < 200
        chain = session.chain
        mode = "pass"
        if not noBody and (chain.masker is not None or chain.wantsOutput):
            mode = bodyMode(raw.getRawHeaders(b"content-type", [None])[0],
                            raw.getRawHeaders(b"content-encoding", [None])[0])
        if mode == "refuse":
            response.deliverBody(_Discard())
            return self.problem(request, 502, "Response cannot be masked",
                                "the response uses a content coding the gateway cannot decode")
        masker = None
        onJson = None
        if mode in ("json", "text"):
            encoding = raw.getRawHeaders(b"content-encoding", [None])[0]
            masker = BodyMasker(session, mode, encoding, backend.options.max_masked_body,
                                raw.getRawHeaders(b"content-type", [None])[0])
            out.removeHeader(b"content-encoding")
            out.removeHeader(b"content-length")
            if mode == "json":
                def onJson(body):
                    request.setHeader(b"content-length", b"%d" % len(body))
                    request.write(body)

        def done(failure, maskingFailed):
            if failure is None:
                if not request.finished and not request._disconnected:
                    request.finish()
                return
            self._log.info("Response on session {session} not sent whole: {why}",
                           session=session.id, why=failure)
            if maskingFailed and not request.startedWriting:
                out.removeHeader(b"content-length")
                return self.problem(request, 502, "Response cannot be masked",
                                    "the response could not be masked and was not sent")
            # Part of the body is out: cut the connection so the client sees it incomplete.
            session.audit("http_response_cut", reason=failure)
            if request.channel.transport is not None:
                request.channel.transport.abortConnection()

        response.deliverBody(ResponseRelay(request, masker, done, onJson, self.pacer))

    # -- pieces ------------------------------------------------------------

    def forwardHeaders(self, request, backend: Backend, upgrade: bool) -> Headers:
        raw = request.requestHeaders
        drop = _wire.hopByHop(raw.getRawHeaders(b"connection"))
        if upgrade:
            drop -= {b"upgrade", b"connection"}
        headers = Headers()
        for name, values in raw.getAllRawHeaders():
            low = name.lower()
            if low in drop or low in _DROP_REQUEST:
                continue
            if low == b"host" and not backend.options.preserve_host:
                continue
            if low in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
                continue
            if low == b"cookie" and backend.options.browser_login:
                values = _login.BrowserLogin.stripCookie(values)
                if not values:
                    continue
            headers.setRawHeaders(name, values)
        if not backend.options.preserve_host:
            headers.setRawHeaders(b"host", [backend.hostHeader])
        client = request.getClientAddress()
        forwarded = raw.getRawHeaders(b"x-forwarded-for", [])
        headers.setRawHeaders(b"x-forwarded-for", [b", ".join(
            forwarded + [getattr(client, "host", "unknown").encode()])])
        headers.setRawHeaders(b"x-forwarded-proto", [b"https" if request.isSecure() else b"http"])
        host = raw.getRawHeaders(b"host")
        if host:
            headers.setRawHeaders(b"x-forwarded-host", host[:1])
        for name, value in backend.options.inject:
            headers.setRawHeaders(name, [value])
        return headers

    def headersForRules(self, request, backend: Backend) -> dict:
        secret = backend.options.secret_headers
        return {name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
                for name, values in request.requestHeaders.getAllRawHeaders()
                if name.lower() not in secret}

    @staticmethod
    def bodySize(request) -> int:
        content = request.content
        if content is None:
            return 0
        content.seek(0, 2)
        size = content.tell()
        content.seek(0)
        return size

    async def recordRequest(self, request, session, backend: Backend) -> None:
        secret = backend.options.secret_headers
        pairs = [(n, _wire.REDACTED if n.lower() in secret else v)
                 for n, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        first = request.method + b" " + request.uri + b" " + request.clientproto
        session.record(FROM_CLIENT, _wire.serializeHead(first, pairs))
        size = self.bodySize(request)
        if not size:
            if request.getHeader(b"transfer-encoding"):
                session.record(FROM_CLIENT, _wire.LAST_CHUNK)
            return
        chunked = (request.getHeader(b"transfer-encoding") or b"").lower().endswith(b"chunked")
        # The body is spooled already (memory or a temporary file); read it
        # back in pieces so a large upload never sits in memory whole.
        content = request.content
        while True:
            data = content.read(65536)
            if not data:
                break
            session.record(FROM_CLIENT, _wire.chunk(data) if chunked else data)
            if self.pacer.over():
                await self.pacer.drained()
        if chunked:
            session.record(FROM_CLIENT, _wire.LAST_CHUNK)
        content.seek(0)

    def holdNotice(self, request, hold: Hold) -> None:
        """
        Tell the client at once that its request waits for approval: an
        informational 1xx response (clients skip unknown ones), recorded.
        """
        if request.clientproto != b"HTTP/1.1" or request.channel.transport is None:
            return
        message = hold.message.encode("utf-8", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        notice = (b"HTTP/1.1 102 Processing\r\nSealgate-Ticket: " + hold.ticket.encode("ascii", "replace")
                  + b"\r\nSealgate-Notice: " + message + b"\r\n\r\n")
        request.channel.write(notice)

    def problem(self, request, status: int, title: str, detail: str, **extra) -> None:
        if request.finished or request._disconnected:
            return None
        body = _wire.problem(status, title, detail, instance=request.uri.decode("latin-1"), **extra)
        request.setResponseCode(status)
        request.setHeader(b"content-type", _PROBLEM)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(body)
        request.finish()
        return None

    def crashed(self, failure, request):
        self._log.failure("HTTP request handling failed", failure)
        try:
            if not request.startedWriting:
                self.problem(request, 500, "Gateway error", "the gateway failed on this request")
            elif request.channel.transport is not None:
                request.channel.transport.abortConnection()
        except Exception:
            self._log.failure("Could not answer a failed request")


class _Discard(Protocol):
    """Drops a response body so the backend connection goes back to the pool."""

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


def buildListener(connections, gateway):
    """The listening factory for every http connection sharing one listen string."""
    tls = next((c.options for c in connections if c.options.tls_cert), None)
    if any(c.options.browser_login for c in connections):
        # The browser login's redirects, cookies and pages use twisted.web.
        proxy = Proxy(connections, gateway)
        site = ProxySite(proxy, gateway.reactor, max(c.options.idle_timeout for c in connections))
        site.prelogin = (gateway.prelogin, connections[0].name)
    else:
        from sealgate.protocols.http._relay import RelayFactory

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


def _pemBlocks(pem: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [b + end for b in pem.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
