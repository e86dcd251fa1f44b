"""Browser login: OIDC authorization code with PKCE, then a gateway session cookie; logout."""

import base64
import hashlib
import io
import json
import secrets
import time
from urllib.parse import urlencode

from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from sealgate.identity import AuthenticationFailed

COOKIE = b"sealgate_session"
PREFIX = b"/.sealgate/"
_MAX_PENDING = 10000
_PENDING_TTL = 600.0
_MAX_BODY = 1 << 20


class LoginFailed(Exception):
    """The browser login did not complete; C{str(exc)} is safe to show."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(token: str) -> dict:
    """The payload of a JWT whose signature the gateway already checked."""
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


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
        self._agent = Agent(reactor)
        self._discovery: dict | None = None
        self._pending: dict[str, dict] = {}
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
        doc = await self._discover()
        verifier = _b64(secrets.token_bytes(32))
        state = _b64(secrets.token_bytes(24))
        nonce = _b64(secrets.token_bytes(16))
        self._expirePending()
        if len(self._pending) >= _MAX_PENDING:
            raise LoginFailed("too many logins in progress; try again shortly")
        self._pending[state] = {"verifier": verifier, "nonce": nonce, "created": time.time(),
                                "return": request.uri.decode("latin-1"),
                                "connection": backend.connection.name}
        o = backend.options
        query = urlencode({
            "response_type": "code", "client_id": o.oidc_client_id,
            "redirect_uri": self._redirectURI(request), "scope": " ".join(o.oidc_scopes),
            "state": state, "nonce": nonce, "code_challenge_method": "S256",
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
        })
        endpoint = doc["authorization_endpoint"]
        sep = "&" if "?" in endpoint else "?"
        request.setResponseCode(302)
        request.setHeader(b"location", f"{endpoint}{sep}{query}".encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"0")
        request.finish()

    async def callback(self, request, backend) -> None:
        """Trade the code for an ID token, check it, set the cookie, go back."""
        args = request.args
        state = (args.get(b"state") or [b""])[0].decode("latin-1")
        pending = self._pending.pop(state, None)
        if pending is None or pending["created"] + _PENDING_TTL < time.time():
            raise LoginFailed("unknown or expired login state; start again")
        if b"error" in args:
            raise LoginFailed(f"the issuer refused the login: {args[b'error'][0].decode('latin-1')[:100]}")
        code = (args.get(b"code") or [b""])[0].decode("latin-1")
        if not code:
            raise LoginFailed("the issuer sent no authorization code")
        o = backend.options
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self._redirectURI(request), "client_id": o.oidc_client_id,
                "code_verifier": pending["verifier"]}
        if o.oidc_client_secret:
            form["client_secret"] = o.oidc_client_secret
        doc = await self._discover()
        tokens = await self._post(doc["token_endpoint"], form)
        idToken = tokens.get("id_token")
        if not isinstance(idToken, str):
            raise LoginFailed("the issuer returned no ID token")
        client = request.getClientAddress()
        clientText = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
        try:
            await self.gateway.authenticate(backend.connection, idToken, clientText)
        except AuthenticationFailed as e:
            raise LoginFailed(f"the ID token was refused: {e}")
        claims = _claims(idToken)
        if claims.get("nonce") != pending["nonce"]:
            raise LoginFailed("the ID token does not carry this login's nonce")
        expires = min(float(claims.get("exp", 0)), time.time() + o.session_lifetime)
        cookie = _b64(secrets.token_bytes(32))
        self._sessions[cookie] = (idToken, expires)
        request.addCookie(COOKIE, cookie.encode(), path=b"/", httpOnly=True,
                          secure=request.isSecure(), sameSite="lax",
                          max_age=str(max(0, int(expires - time.time()))).encode())
        back = pending["return"]
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

    def _expirePending(self) -> None:
        cutoff = time.time() - _PENDING_TTL
        for state in [s for s, p in self._pending.items() if p["created"] < cutoff]:
            del self._pending[state]

    async def _discover(self) -> dict:
        if self._discovery is not None:
            return self._discovery
        issuer = self.gateway.config.identity.oidc_issuer
        if not issuer:
            raise LoginFailed("browser login needs [identity] oidc_issuer")
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._fetch(b"GET", url, None)
        for key in ("authorization_endpoint", "token_endpoint"):
            if not isinstance(doc.get(key), str) or not doc[key].startswith(("https://", "http://")):
                raise LoginFailed(f"the issuer's discovery document has no {key}")
        self._discovery = doc
        return doc

    async def _post(self, url: str, form: dict) -> dict:
        return await self._fetch(b"POST", url, urlencode(form).encode())

    async def _fetch(self, method: bytes, url: str, body: bytes | None) -> dict:
        headers = Headers({b"accept": [b"application/json"]})
        producer = None
        if body is not None:
            headers.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])
            producer = FileBodyProducer(io.BytesIO(body))
        try:
            d = self._agent.request(method, url.encode("ascii"), headers, producer)
            d.addTimeout(15, self.reactor)
            response = await d
            if response.length is not None and isinstance(response.length, int) \
                    and response.length > _MAX_BODY:
                raise LoginFailed(f"{url}: answer too large")
            data = await readBody(response)
        except LoginFailed:
            raise
        except Exception as e:
            self._log.info("Login request to {url} failed: {error}", url=url, error=e)
            raise LoginFailed("the issuer could not be reached")
        if response.code != 200:
            raise LoginFailed(f"the issuer answered {response.code}")
        try:
            doc = json.loads(data)
        except ValueError:
            raise LoginFailed("the issuer's answer is not JSON")
        if not isinstance(doc, dict):
            raise LoginFailed("the issuer's answer is not a JSON object")
        return doc
