"""Browser login: OIDC authorization code with PKCE, then a gateway session cookie; logout."""

import secrets
import time

from twisted.logger import Logger

from sealgate.identity import AuthenticationFailed
from sealgate.identity.oidcflow import CodeFlow, LoginError, b64url
from sealgate.identity.service import issuerAgent

COOKIE = b"sealgate_session"
PREFIX = b"/.sealgate/"
_MAX_PENDING = 10000
_PENDING_TTL = 600.0


#: A browser login that did not complete; C{str(exc)} is safe to show.
LoginFailed = LoginError


class BrowserLogin:
    """
    The login flow for people with a browser.  A request with no bearer
    token and no session cookie that asks for HTML is sent to the issuer
    (authorization code, PKCE S256, state and nonce); the callback trades
    the code for an ID token, checks it like any bearer token
    (C{gateway.authenticate}) and sets an opaque, HttpOnly cookie mapped to
    it here.  Sessions live in memory: a restart logs people out.
    """

    _log = Logger()

    def __init__(self, gateway, reactor):
        self.gateway = gateway
        self.reactor = reactor
        self._agent = issuerAgent(gateway.config.identity, reactor)
        self._flow: CodeFlow | None = None
        self._sessions: dict[str, tuple[str, float]] = {}

    # -- what the proxy asks -------------------------------------------------

    @staticmethod
    def wantsLogin(request) -> bool:
        accept = request.getHeader(b"accept") or b""
        return request.method in (b"GET", b"HEAD") and b"text/html" in accept

    def credentialFor(self, request) -> str | None:
        token = request.getCookie(COOKIE)
        if not token:
            return None
        found = self._sessions.get(token.decode("latin-1"))
        if found is None:
            return None
        credential, expires = found
        if expires < time.time():
            self._sessions.pop(token.decode("latin-1"), None)
            return None
        return credential

    @staticmethod
    def stripCookie(values: list[bytes]) -> list[bytes]:
        """Cookie header values without the gateway's own cookie."""
        out = []
        for value in values:
            kept = [c for c in value.split(b";") if c.strip().split(b"=", 1)[0] != COOKIE]
            if kept:
                out.append(b";".join(kept).strip())
        return out

    # -- the flow --------------------------------------------------------------

    async def start(self, request, backend) -> None:
        """Redirect to the issuer's authorization endpoint."""
        o = backend.options
        _, url = await self._codeFlow().begin(
            o.oidc_client_id, self._redirectURI(request), o.oidc_scopes,
            {"return": request.uri.decode("latin-1"), "connection": backend.connection.name})
        request.setResponseCode(302)
        request.setHeader(b"location", url.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"0")
        request.finish()

    async def callback(self, request, backend) -> None:
        """Trade the code for an ID token, check it, set the cookie, go back."""
        args = {k.decode("latin-1"): v[0].decode("latin-1") for k, v in request.args.items() if v}
        flow = self._codeFlow()
        pending = flow.take(args.get("state", ""))
        o = backend.options
        idToken = await flow.finish(pending, args, o.oidc_client_id, o.oidc_client_secret)
        client = request.getClientAddress()
        clientText = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
        try:
            await self.gateway.authenticate(backend.connection, idToken, clientText)
        except AuthenticationFailed as e:
            raise LoginFailed(f"the ID token was refused: {e}")
        if not flow.nonceMatches(idToken, pending):
            raise LoginFailed("the ID token does not carry this login's nonce")
        expires = min(float(flow.claims(idToken).get("exp", 0)), time.time() + o.session_lifetime)
        cookie = b64url(secrets.token_bytes(32))
        self._sessions[cookie] = (idToken, expires)
        request.addCookie(COOKIE, cookie.encode(), path=b"/", httpOnly=True,
                          secure=request.isSecure(), sameSite="lax",
                          max_age=str(max(0, int(expires - time.time()))).encode())
        back = pending.data["return"]
        if not back.startswith("/") or back.startswith("//") or back.startswith(PREFIX.decode()):
            back = "/"
        request.setResponseCode(302)
        request.setHeader(b"location", back.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"0")
        request.finish()

    def logout(self, request) -> None:
        token = request.getCookie(COOKIE)
        if token:
            self._sessions.pop(token.decode("latin-1"), None)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, secure=request.isSecure(),
                          sameSite="lax", max_age=b"0")
        body = b"signed out of sealgate\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        request.write(body)
        request.finish()

    # -- pieces ------------------------------------------------------------------

    def _redirectURI(self, request) -> str:
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
        return f"{scheme}://{host}{PREFIX.decode()}callback"

    def _codeFlow(self) -> CodeFlow:
        issuer = self.gateway.config.identity.oidc_issuer
        if not issuer:
            raise LoginFailed("browser login needs [identity] oidc_issuer")
        if self._flow is None or self._flow.issuer != issuer:
            self._flow = CodeFlow(issuer, self._agent, self.reactor, _PENDING_TTL, _MAX_PENDING)
        return self._flow
