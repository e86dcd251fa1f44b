"""Browser login, a step of the relay before routing: OIDC authorization code with PKCE, then a gateway session cookie; logout."""

import secrets
import time
from urllib.parse import parse_qsl

import attrs
from twisted.logger import Logger
from twisted.web.client import Agent

from sealgate.identity import AuthenticationFailed
from sealgate.identity.oidcflow import CodeFlow, LoginError, b64url
from sealgate.protocols.http._wire import PROBLEM, problem

COOKIE = b"sealgate_session"
PREFIX = b"/.sealgate/"
_MAX_PENDING = 10000
_PENDING_TTL = 600.0
_NO_STORE = (b"Cache-Control", b"no-store")


#: A browser login that did not complete; C{str(exc)} is safe to show.
LoginFailed = LoginError


@attrs.frozen
class Answer:
    """A response the login step gives instead of forwarding the request."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


def cookies(request) -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of a request's Cookie headers (RFC 6265 section 5.4)."""
    out = []
    for value in request.low.get(b"cookie", ()):
        for pair in value.split(b";"):
            name, _, v = pair.strip().partition(b"=")
            if name:
                out.append((name, v))
    return out


def stripCookie(values: list[bytes]) -> list[bytes]:
    """Cookie header values without the gateway's own cookie."""
    out = []
    for value in values:
        kept = [c.strip() for c in value.split(b";") if c.strip().split(b"=", 1)[0] != COOKIE]
        if kept:
            out.append(b"; ".join(kept))
    return out


class BrowserLogin:
    """
    The login flow for people with a browser.  A request with no bearer
    token and no session cookie that asks for HTML is sent to the issuer
    (authorization code, PKCE S256, state and nonce); the callback trades
    the code for an ID token, checks it like any bearer token
    (C{gateway.authenticate}) and sets an opaque, HttpOnly cookie mapped to
    it here.  Sessions live in memory: a restart logs people out.

    Its pages live under L{PREFIX} on every connection of the listener, so
    they are answered before routing (a path prefix does not hide them).
    """

    _log = Logger()

    def __init__(self, gateway, reactor):
        self.gateway = gateway
        self.reactor = reactor
        self._agent = Agent(reactor)
        self._flow: CodeFlow | None = None
        self._sessions: dict[bytes, tuple[str, float]] = {}

    # -- what the relay asks -------------------------------------------------

    @staticmethod
    def wantsLogin(request) -> bool:
        accept = request.get(b"accept") or b""
        return request.method in (b"GET", b"HEAD") and b"text/html" in accept

    def credentialFor(self, request) -> str | None:
        for name, token in cookies(request):
            if name != COOKIE:
                continue
            found = self._sessions.get(token)
            if found is None:
                continue
            credential, expires = found
            if expires < time.time():
                self._sessions.pop(token, None)
                continue
            return credential
        return None

    async def page(self, request, router, secure: bool, clientText: str) -> Answer:
        """Answer a request for one of the login pages (below L{PREFIX})."""
        try:
            if request.path == PREFIX + b"callback":
                return await self.callback(request, router, secure, clientText)
            if request.path == PREFIX + b"logout":
                return self.logout(request, secure)
            if request.path == PREFIX + b"login":
                back = dict(parse_qsl((request.query or b"").decode("latin-1"))).get("return", "/")
                backend = router.route(request.host, back.encode("latin-1", "replace"))
                if backend is not None and backend.options.browser_login:
                    return await self.start(request, backend, secure, back)
        except LoginFailed as e:
            return _problem(403, "Login failed", str(e))
        return _problem(404, "No such page", "unknown sealgate login page")

    # -- the flow --------------------------------------------------------------

    async def start(self, request, backend, secure: bool, back: str | None = None) -> Answer:
        """Redirect to the issuer's authorization endpoint."""
        o = backend.options
        _, url = await self._codeFlow().begin(
            o.oidc_client_id, self._redirectURI(request, secure), o.oidc_scopes,
            {"return": back or request.target.decode("latin-1"), "connection": backend.connection.name})
        return Answer(302, ((b"Location", url.encode()), _NO_STORE))

    async def callback(self, request, router, secure: bool, clientText: str) -> Answer:
        """Trade the code for an ID token, check it, set the cookie, go back."""
        args = dict(parse_qsl((request.query or b"").decode("latin-1")))
        flow = self._codeFlow()
        pending = flow.take(args.get("state", ""))
        backend = router.byName(pending.data.get("connection", ""))
        if backend is None or not backend.options.browser_login:
            raise LoginFailed("this login was started for a connection that no longer takes it")
        o = backend.options
        idToken = await flow.finish(pending, args, o.oidc_client_id, o.oidc_client_secret)
        try:
            await self.gateway.authenticate(backend.connection, idToken, clientText)
        except AuthenticationFailed as e:
            raise LoginFailed(f"the ID token was refused: {e}")
        if not flow.nonceMatches(idToken, pending):
            raise LoginFailed("the ID token does not carry this login's nonce")
        expires = min(float(flow.claims(idToken).get("exp", 0)), time.time() + o.session_lifetime)
        cookie = b64url(secrets.token_bytes(32)).encode()
        self._sessions[cookie] = (idToken, expires)
        back = pending.data["return"]
        if not back.startswith("/") or back.startswith("//") or back.startswith(PREFIX.decode()):
            back = "/"
        return Answer(302, ((b"Set-Cookie", _setCookie(cookie, int(expires - time.time()), secure)),
                            (b"Location", back.encode("latin-1", "replace")), _NO_STORE))

    def logout(self, request, secure: bool) -> Answer:
        for name, token in cookies(request):
            if name == COOKIE:
                self._sessions.pop(token, None)
        return Answer(200, ((b"Set-Cookie", _setCookie(b"", 0, secure)),
                            (b"Content-Type", b"text/plain; charset=utf-8"), _NO_STORE),
                      b"signed out of sealgate\n")

    # -- pieces ------------------------------------------------------------------

    @staticmethod
    def _redirectURI(request, secure: bool) -> str:
        scheme = "https" if secure else "http"
        host = (request.host or b"localhost").decode("latin-1")
        return f"{scheme}://{host}{PREFIX.decode()}callback"

    def _codeFlow(self) -> CodeFlow:
        issuer = self.gateway.config.identity.oidc_issuer
        if not issuer:
            raise LoginFailed("browser login needs [identity] oidc_issuer")
        if self._flow is None or self._flow.issuer != issuer:
            self._flow = CodeFlow(issuer, self._agent, self.reactor, _PENDING_TTL, _MAX_PENDING)
        return self._flow


def _setCookie(value: bytes, maxAge: int, secure: bool) -> bytes:
    return (COOKIE + b"=" + value + b"; Max-Age=%d; Path=/; HttpOnly; SameSite=Lax" % max(0, maxAge)
            + (b"; Secure" if secure else b""))


def _problem(status: int, title: str, detail: str) -> Answer:
    return Answer(status, ((b"Content-Type", PROBLEM), _NO_STORE), problem(status, title, detail))
