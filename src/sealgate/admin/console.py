"""Console login: OIDC authorization code + PKCE, or an API key; logins live in a secure cookie."""

import base64
import hashlib
import json
import secrets
import time
from io import BytesIO
from typing import cast
from urllib.parse import urlencode

import attrs
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from sealgate.admin._http import LOGIN_COOKIE, jsonBody
from sealgate.identity import AuthenticationFailed

STATE_COOKIE = b"sealgate_oidc"
PENDING_LIFETIME = 600.0
MAX_PENDING = 1000


@attrs.define
class ConsoleLogin:
    token: str = attrs.field(repr=False)
    identity: object
    csrf: str = attrs.field(repr=False)
    expires: float
    method: str


class Logins:
    """Console logins by cookie token, in memory: a restart logs everyone out, which is fine."""

    def __init__(self, admin):
        self.admin = admin
        self._logins: dict[str, ConsoleLogin] = {}
        self.pending: dict[str, dict] = {}

    def create(self, identity, method: str) -> ConsoleLogin:
        now = time.time()
        for token in [t for t, v in self._logins.items() if v.expires < now]:
            del self._logins[token]
        login = ConsoleLogin(secrets.token_urlsafe(32), identity, secrets.token_urlsafe(24),
                             now + self.admin.service.config.admin.login_lifetime, method)
        self._logins[login.token] = login
        return login

    def get(self, token) -> ConsoleLogin | None:
        if not token:
            return None
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        login = self._logins.get(token)
        if login is not None and login.expires < time.time():
            del self._logins[token]
            return None
        return login

    def drop(self, token) -> None:
        if isinstance(token, bytes):
            token = token.decode("ascii", "replace")
        self._logins.pop(token or "", None)


def _cookie(request, name: bytes, value: str, maxAge: int) -> None:
    # Lax, not Strict: the OIDC callback is a top-level navigation coming
    # back from the issuer and must carry the state cookie.  Changes are
    # guarded by the CSRF header, which no cross-site page can set.
    request.addCookie(name, value.encode(), path=b"/", httpOnly=True, secure=request.isSecure(),
                      sameSite="lax", max_age=str(maxAge).encode())


def sameOrigin(request) -> bool:
    """A browser's POST names its page's origin; it must be this site (no Origin: not a browser form)."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    return origin.decode("latin-1") == f"{'https' if request.isSecure() else 'http'}://{host}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Login(resource.Resource):
    """
    GET /login: the login page; GET /login/options: which methods are on;
    POST /login/key: an API key (form field C{key}); GET /login/oidc: off to
    the issuer; GET /login/callback: back from it.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, admin):
        super().__init__()
        self.admin = admin
        self._agent = None
        self._discovery = None

    @property
    def identity(self):
        return self.admin.service.identity

    def render_GET(self, request):
        path = [p.decode() for p in request.postpath if p]
        if not path:
            from sealgate.admin.api import STATIC

            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return (STATIC / "login.html").read_bytes()
        if path == ["options"]:
            issuer = self.admin.service.config.identity.oidc_issuer
            return jsonBody(request, 200, {"oidc": issuer is not None, "issuer": issuer})
        if path == ["oidc"]:
            return self._go(request, self._startOIDC(request))
        if path == ["callback"]:
            return self._go(request, self._callback(request))
        request.setResponseCode(404)
        return b"not found\n"

    def render_POST(self, request):
        path = [p.decode() for p in request.postpath if p]
        if path != ["key"]:
            request.setResponseCode(404)
            return b"not found\n"
        if not sameOrigin(request):
            # Login CSRF: another site must not sign a browser in as someone else.
            request.setResponseCode(403)
            return b"cross-site login refused\n"
        key = (request.args.get(b"key") or [b""])[0].decode("ascii", "replace").strip()
        d = defer.maybeDeferred(self.identity.authenticate, key)
        d.addCallback(self._loggedIn, request, "apikey")
        return self._go(request, d)

    # -- common --------------------------------------------------------------

    def _go(self, request, d):
        def failed(f):
            if f.check(AuthenticationFailed, LoginError):
                reason = f.value.reason if f.check(AuthenticationFailed) else str(f.value)
                self.admin.service.store.auditEvent({"kind": "login_failed", "connection": "admin",
                                                     "protocol": "console", "claimed": getattr(
                                                         f.value, "claimed", None), "reason": reason})
                request.redirect(b"/login?" + urlencode({"error": reason}).encode())
            else:
                self._log.failure("Console login error", f)
                request.redirect(b"/login?" + urlencode({"error": "login is unavailable"}).encode())

        def finish(_):
            if not request.finished:
                request.finish()

        d.addErrback(failed).addBoth(finish)
        return server.NOT_DONE_YET

    def _loggedIn(self, identity, request, method: str) -> None:
        login = self.admin.logins.create(identity, method)
        _cookie(request, LOGIN_COOKIE, login.token, int(self.admin.service.config.admin.login_lifetime))
        self.admin.service.store.auditEvent({"kind": "admin_login", "identity": identity.asDict(),
                                             "method": method})
        self._log.info("Console login: {subject} ({method})", subject=identity.subject, method=method)
        request.redirect(b"/console/")

    # -- OIDC ----------------------------------------------------------------

    @property
    def agent(self):
        if self._agent is None:
            reactor = self.admin.reactor
            self._agent = Agent(reactor, connectTimeout=10, pool=HTTPConnectionPool(reactor, persistent=False))
        return self._agent

    def _clientId(self) -> str:
        cfg = self.admin.service.config
        return cfg.admin.oidc_client_id or cfg.identity.oidc_audience

    async def _getJSON(self, method: bytes, url: str, form: dict | None = None) -> dict:
        headers = Headers({b"accept": [b"application/json"]})
        body = None
        if form is not None:
            headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(BytesIO(urlencode(form).encode()))
        d = self.agent.request(method, url.encode(), headers, body)
        d.addTimeout(15, self.admin.reactor)
        response = await d
        data = await _readLimited(response, 1 << 20)
        if response.code != 200:
            raise LoginError(f"the issuer answered HTTP {response.code}")
        try:
            doc = json.loads(data)
        except ValueError:
            raise LoginError("the issuer's answer is not JSON")
        if not isinstance(doc, dict):
            raise LoginError("the issuer's answer is not a JSON object")
        return doc

    async def _endpoints(self) -> dict:
        issuer = self.admin.service.config.identity.oidc_issuer
        if issuer is None:
            raise LoginError("no OIDC issuer is configured; log in with an API key")
        if self._discovery is None or self._discovery[0] != issuer:
            doc = await self._getJSON(b"GET", issuer.rstrip("/") + "/.well-known/openid-configuration")
            for key in ("authorization_endpoint", "token_endpoint"):
                if not isinstance(doc.get(key), str) or not doc[key].startswith(("https://", "http://")):
                    raise LoginError(f"the issuer's discovery document has no {key}")
            self._discovery = (issuer, doc)
        return self._discovery[1]

    def _redirectURI(self, request) -> str:
        return self.admin.baseURL(request) + "login/callback"

    def _startOIDC(self, request):
        async def go():
            doc = await self._endpoints()
            pending = self.admin.logins.pending
            now = time.time()
            for s in [s for s, p in pending.items() if p["created"] + PENDING_LIFETIME < now]:
                del pending[s]
            if len(pending) >= MAX_PENDING:
                raise LoginError("too many logins in progress; try again in a minute")
            state, nonce, verifier = (secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                                      secrets.token_urlsafe(48))
            redirect = self._redirectURI(request)
            pending[state] = {"verifier": verifier, "nonce": nonce, "redirect": redirect, "created": now}
            challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
            query = urlencode({"response_type": "code", "client_id": self._clientId(),
                               "redirect_uri": redirect, "scope": "openid profile email groups",
                               "state": state, "nonce": nonce, "code_challenge": challenge,
                               "code_challenge_method": "S256"})
            sep = "&" if "?" in doc["authorization_endpoint"] else "?"
            _cookie(request, STATE_COOKIE, state, int(PENDING_LIFETIME))
            request.redirect((doc["authorization_endpoint"] + sep + query).encode())

        return defer.ensureDeferred(go())

    def _callback(self, request):
        async def go():
            args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
            if "error" in args:
                raise LoginError(f"the issuer refused the login: {args['error'][:100]}")
            state = args.get("state", "")
            cookie = (request.getCookie(STATE_COOKIE) or b"").decode("ascii", "replace")
            pending = self.admin.logins.pending.pop(state, None)
            # The state must be the one this browser started with (login CSRF).
            if pending is None or not secrets.compare_digest(cookie, state):
                raise LoginError("this login was not started here or took too long; try again")
            if pending["created"] + PENDING_LIFETIME < time.time():
                raise LoginError("the login took too long; try again")
            doc = await self._endpoints()
            form = {"grant_type": "authorization_code", "code": args.get("code", ""),
                    "redirect_uri": pending["redirect"], "client_id": self._clientId(),
                    "code_verifier": pending["verifier"]}
            secret = self.admin.service.config.admin.oidc_client_secret
            if secret:
                form["client_secret"] = secret
            tokens = await self._getJSON(b"POST", doc["token_endpoint"], form)
            idToken = tokens.get("id_token")
            if not isinstance(idToken, str):
                raise LoginError("the issuer sent no id_token")
            identity = await self._verifier().verify(idToken)
            # The signature is good (verify above); now the nonce binds it to this login.
            claims = json.loads(base64.urlsafe_b64decode(idToken.split(".")[1] + "=="))
            if claims.get("nonce") != pending["nonce"]:
                raise LoginError("the id_token's nonce does not match this login")
            _cookie(request, STATE_COOKIE, "", 0)
            self._loggedIn(identity, request, "oidc")

        return defer.ensureDeferred(go())

    def _verifier(self):
        cfg = self.admin.service.config
        if self._clientId() == cfg.identity.oidc_audience and self.identity.oidc is not None:
            return self.identity.oidc
        from sealgate.identity.oidc import OIDCVerifier

        i = cfg.identity
        return OIDCVerifier(i.oidc_issuer, self._clientId(), i.groups_claim, i.subject_claim,
                            i.leeway, i.jwks_min_refresh, reactor=self.admin.reactor)


class _Collect(protocol.Protocol):
    def __init__(self, limit: int, done: defer.Deferred):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            # Agent gives deliverBody protocols an IPushProducer transport.
            cast(IPushProducer, self.transport).stopProducing()
            if not self.done.called:
                self.done.errback(LoginError("the issuer's answer is too large"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.parts))


def _readLimited(response, limit: int) -> defer.Deferred:
    done: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collect(limit, done))
    return done


class LoginError(Exception):
    """A console login that cannot go on; C{str(exc)} is shown on the login page."""


class Logout(resource.Resource):
    """POST /logout: end the console login (needs the CSRF token, like every change)."""

    isLeaf = True

    def __init__(self, admin):
        super().__init__()
        self.admin = admin

    def render_POST(self, request):
        token = request.getCookie(LOGIN_COOKIE)
        login = self.admin.logins.get(token)
        given = (request.getHeader(b"x-sealgate-csrf") or b"").decode("ascii", "replace")
        if login is not None and secrets.compare_digest(given, login.csrf):
            self.admin.logins.drop(token)
        _cookie(request, LOGIN_COOKIE, "", 0)
        return jsonBody(request, 200, {"status": "logged out"})
