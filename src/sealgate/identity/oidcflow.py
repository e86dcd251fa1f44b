"""The OIDC authorization-code flow (PKCE S256, state, nonce) behind every browser login.

The approvers' console and the HTTP protocol's browser login both send people
to the issuer and trade the code for an ID token here; each then checks the
token as it checks any bearer token, and keeps its own cookie.
"""

import base64
import hashlib
import json
import secrets
import time
from urllib.parse import urlencode

import attrs

from sealgate.identity.oidc import IssuerUnavailable, fetchJSON


class LoginError(Exception):
    """A login that cannot go on; C{str(exc)} is safe to show the person."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.define
class PendingLogin:
    """One login between the redirect to the issuer and its callback."""

    verifier: str
    nonce: str
    redirect: str
    created: float
    data: dict = attrs.field(factory=dict)


class CodeFlow:
    """
    The flow for one issuer.  Pending logins live in memory for C{ttl}
    seconds, at most C{maxPending} at once (a flood of started logins cannot
    grow it without bound).
    """

    def __init__(self, issuer: str, agent, reactor, ttl: float = 600.0, maxPending: int = 10000):
        self.issuer = issuer
        self._agent = agent
        self._reactor = reactor
        self._ttl = ttl
        self._maxPending = maxPending
        self._endpoints: dict | None = None
        self.pending: dict[str, PendingLogin] = {}

    async def endpoints(self) -> dict:
        """The issuer's discovery document, fetched once."""
        if self._endpoints is None:
            doc = await self._json(b"GET", self.issuer.rstrip("/") + "/.well-known/openid-configuration")
            for key in ("authorization_endpoint", "token_endpoint"):
                if not isinstance(doc.get(key), str) or not doc[key].startswith(("https://", "http://")):
                    raise LoginError(f"the issuer's discovery document has no {key}")
            self._endpoints = doc
        return self._endpoints

    async def begin(self, clientId: str, redirectURI: str, scopes, data=None) -> tuple[str, str]:
        """
        Start a login.

        @return: C{(state, url)}: send the browser to C{url}; bind C{state}
            to the browser (a cookie) if the caller wants login-CSRF checks.
        """
        doc = await self.endpoints()
        now = time.time()
        for state in [s for s, p in self.pending.items() if p.created + self._ttl < now]:
            del self.pending[state]
        if len(self.pending) >= self._maxPending:
            raise LoginError("too many logins in progress; try again in a minute")
        state, nonce, verifier = b64url(secrets.token_bytes(24)), b64url(secrets.token_bytes(16)), \
            b64url(secrets.token_bytes(32))
        self.pending[state] = PendingLogin(verifier, nonce, redirectURI, now, dict(data or {}))
        query = urlencode({
            "response_type": "code", "client_id": clientId, "redirect_uri": redirectURI,
            "scope": " ".join(scopes), "state": state, "nonce": nonce,
            "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        })
        endpoint = doc["authorization_endpoint"]
        return state, endpoint + ("&" if "?" in endpoint else "?") + query

    def take(self, state: str) -> PendingLogin:
        """The pending login for a callback's C{state}, once."""
        pending = self.pending.pop(state, None)
        if pending is None or pending.created + self._ttl < time.time():
            raise LoginError("this login was not started here or took too long; start again")
        return pending

    async def finish(self, pending: PendingLogin, args: dict, clientId: str,
                     clientSecret: str | None) -> str:
        """
        Trade the callback's code for an ID token.  The caller verifies the
        token's signature, then L{nonceMatches}.
        """
        if "error" in args:
            raise LoginError(f"the issuer refused the login: {str(args['error'])[:100]}")
        code = args.get("code")
        if not code:
            raise LoginError("the issuer sent no authorization code")
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect,
                "client_id": clientId, "code_verifier": pending.verifier}
        if clientSecret:
            form["client_secret"] = clientSecret
        doc = await self.endpoints()
        tokens = await self._json(b"POST", doc["token_endpoint"], form)
        idToken = tokens.get("id_token")
        if not isinstance(idToken, str):
            raise LoginError("the issuer sent no ID token")
        return idToken

    @staticmethod
    def claims(idToken: str) -> dict:
        """The payload of an ID token whose signature the caller already checked."""
        try:
            payload = idToken.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError):
            return {}
        return claims if isinstance(claims, dict) else {}

    @classmethod
    def nonceMatches(cls, idToken: str, pending: PendingLogin) -> bool:
        """Whether a (signature-checked) ID token belongs to this login."""
        return secrets.compare_digest(str(cls.claims(idToken).get("nonce", "")), pending.nonce)

    async def _json(self, method: bytes, url: str, form: dict | None = None) -> dict:
        try:
            return await fetchJSON(self._agent, self._reactor, method, url, form)
        except IssuerUnavailable as e:
            raise LoginError(f"the issuer could not be reached ({e})")
