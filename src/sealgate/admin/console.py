"""Console login: OIDC authorization code + PKCE, or an API key; logins live in a secure cookie."""

import hashlib
import secrets
import time
from urllib.parse import urlencode

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from sealgate.admin._http import LOGIN_COOKIE, STATIC, Reply, clientOf, jsonBody, pathSegments
from sealgate.identity import AuthenticationFailed
from sealgate.identity.oidcflow import CodeFlow, LoginError
from sealgate.identity.service import issuerAgent

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


def tokenHash(token: str | bytes) -> bytes:
    """What a login is kept under: never the cookie token itself."""
    if isinstance(token, str):
        token = token.encode("ascii", "replace")
    return hashlib.sha256(b"sealgate-login-v1\x00" + token).digest()


class Logins:
    """
    Console logins by (the hash of their) cookie token, in memory.  Alone, a
    restart logs everyone out; with a fleet (C{store}, an
    L{sealgate.fleet.interfaces.ILoginStore}) they are shared and kept.
    """

    _log = Logger()

    def __init__(self, admin):
        self.admin = admin
        self._logins: dict[bytes, ConsoleLogin] = {}
        self.store = None

    def create(self, identity, method: str) -> ConsoleLogin:
        now = time.time()
        for key in [k for k, v in self._logins.items() if v.expires < now]:
            del self._logins[key]
        login = ConsoleLogin(secrets.token_urlsafe(32), identity, secrets.token_urlsafe(24),
                             now + self.admin.service.config.admin.login_lifetime, method)
        self._logins[tokenHash(login.token)] = login
        if self.store is not None:
            self.store.save(login).addErrback(lambda f: self._log.warn(
                "Console login of {who} not shared with the fleet: {why}",
                who=identity.id, why=f.getErrorMessage()))
        return login

    def get(self, token) -> ConsoleLogin | None:
        if not token:
            return None
        key = tokenHash(token)
        login = self._logins.get(key)
        if login is not None and login.expires < time.time():
            del self._logins[key]
            return None
        return login

    def drop(self, token) -> None:
        if not token:
            return
        self._logins.pop(tokenHash(token), None)
        if self.store is not None:
            self.store.drop(token).addErrback(lambda f: self._log.warn(
                "Console logout not shared with the fleet: {why}", why=f.getErrorMessage()))

    # -- what the fleet's copy tells us (L{sealgate.fleet.logins.follow}) ---

    def adopt(self, digest: bytes, identity, csrf: str, expires: float, method: str) -> None:
        if digest not in self._logins:
            # The token itself is known only to the browser holding the cookie.
            self._logins[digest] = ConsoleLogin("", identity, csrf, expires, method)

    def forget(self, digest: bytes) -> None:
        self._logins.pop(digest, None)

    def clear(self) -> None:
        self._logins.clear()


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
        self._codeFlow: CodeFlow | None = None

    @property
    def identity(self):
        return self.admin.service.identity

    def render_GET(self, request):
        path = pathSegments(request)
        if not path:
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
        path = pathSegments(request)
        if path != ["key"]:
            request.setResponseCode(404)
            return b"not found\n"
        if not sameOrigin(request):
            # Login CSRF: another site must not sign a browser in as someone else.
            request.setResponseCode(403)
            return b"cross-site login refused\n"
        key = (request.args.get(b"key") or [b""])[0].decode("ascii", "replace").strip()
        # Through the gateway: backoff per address and key, failures sealed there.
        d = self.admin.service.gateway.authenticate("admin", key, clientOf(request))
        d.addErrback(_sealedAlready)
        d.addCallback(self._loggedIn, request, "apikey")
        return self._go(request, d)

    # -- common --------------------------------------------------------------

    def _go(self, request, d):
        reply = Reply(request)

        def failed(f):
            if f.check(AuthenticationFailed, LoginError):
                reason = f.value.reason if f.check(AuthenticationFailed) else str(f.value)
                if not f.check(_SealedFailure):
                    self.admin.service.gateway.loginFailed(
                        "admin", clientOf(request), reason,
                        claimed=getattr(f.value, "claimed", None), protocol="console")
                request.redirect(b"/login?" + urlencode({"error": reason}).encode())
            else:
                self._log.failure("Console login error", f)
                request.redirect(b"/login?" + urlencode({"error": "login is unavailable"}).encode())

        d.addErrback(failed).addBoth(lambda _: reply.send())
        return server.NOT_DONE_YET

    def _loggedIn(self, identity, request, method: str) -> None:
        login = self.admin.logins.create(identity, method)
        _cookie(request, LOGIN_COOKIE, login.token, int(self.admin.service.config.admin.login_lifetime))
        self.admin.service.store.auditEvent({"kind": "admin_login", "identity": identity.asDict(),
                                             "method": method})
        self._log.info("Console login: {subject} ({method})", subject=identity.id, method=method)
        request.redirect(b"/console/")

    # -- OIDC ----------------------------------------------------------------

    def _flow(self) -> CodeFlow:
        issuer = self.admin.service.config.identity.oidc_issuer
        if issuer is None:
            raise LoginError("no OIDC issuer is configured; log in with an API key")
        if self._codeFlow is None or self._codeFlow.issuer != issuer:
            reactor = self.admin.reactor
            agent = issuerAgent(self.admin.service.config.identity, reactor, connectTimeout=10,
                                pool=HTTPConnectionPool(reactor, persistent=False))
            self._codeFlow = CodeFlow(issuer, agent, reactor, PENDING_LIFETIME, MAX_PENDING)
        return self._codeFlow

    def _clientId(self) -> str:
        cfg = self.admin.service.config
        return cfg.admin.oidc_client_id or cfg.identity.oidc_audience

    def _startOIDC(self, request):
        async def go():
            redirect = self.admin.baseURL(request) + "login/callback"
            state, url = await self._flow().begin(self._clientId(), redirect,
                                                  ("openid", "profile", "email", "groups"))
            _cookie(request, STATE_COOKIE, state, int(PENDING_LIFETIME))
            request.redirect(url.encode())

        return defer.ensureDeferred(go())

    def _callback(self, request):
        async def go():
            args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
            flow = self._flow()
            state = args.get("state", "")
            pending = flow.take(state)
            # The state must be the one this browser started with (login CSRF).
            cookie = (request.getCookie(STATE_COOKIE) or b"").decode("ascii", "replace")
            if not secrets.compare_digest(cookie, state):
                raise LoginError("this login was not started here or took too long; start again")
            idToken = await flow.finish(pending, args, self._clientId(),
                                        self.admin.service.config.admin.oidc_client_secret)
            identity = await self._verifier().verify(idToken)
            # The signature is good (verify above); now the nonce binds it to this login.
            if not flow.nonceMatches(idToken, pending):
                raise LoginError("the ID token's nonce does not match this login")
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


class _SealedFailure(AuthenticationFailed):
    """A refused login the gateway has already sealed (and counted for backoff)."""


def _sealedAlready(f):
    f.trap(AuthenticationFailed)
    raise _SealedFailure(f.value.reason, f.value.claimed)
