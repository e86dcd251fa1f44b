"""OIDC bearer tokens checked against the issuer's discovery document and JWKS."""

import json
import warnings
from io import BytesIO
from typing import Any, cast
from urllib.parse import urlencode

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
)
from joserfc.jwk import import_key
from joserfc.jwt import JWTClaimsRegistry
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from sealgate.identity._types import AuthenticationFailed, Identity

#: The only signature algorithms accepted.  "Ed25519" is RFC 9864's fully
#: specified name for what older issuers call "EdDSA" with an Ed25519 key.
ALLOWED_ALGORITHMS = ("RS256", "ES256", "EdDSA", "Ed25519")

_KTY_FOR_ALG = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP", "Ed25519": "OKP"}

#: Tokens are small; a bigger one is an attack or a mistake, not a login.
MAX_TOKEN_BYTES = 16 * 1024
#: Discovery documents and JWKS are small too; cap what we read.
MAX_DOCUMENT_BYTES = 1024 * 1024


class IssuerUnavailable(Exception):
    """The discovery document or JWKS could not be fetched or parsed."""


def _claimedFrom(claims: Any, subjectClaim: str) -> str | None:
    if not isinstance(claims, dict):
        return None
    for name in (subjectClaim, "preferred_username", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value[:200]
    return None


class OIDCVerifier:
    """
    Verifies OIDC access and ID tokens (compact JWS) for one issuer.

    The JWKS is cached; a token whose C{kid} is not in the cache triggers a
    refetch at most once every C{minRefresh} seconds, so a stream of forged
    kids cannot turn the gateway into a load generator against the issuer.
    Fetches never block the reactor (twisted.web's Agent).
    """

    _log = Logger()

    def __init__(self, issuer: str, audience: str, groupsClaim: str = "groups",
                 subjectClaim: str = "sub", leeway: float = 60.0, minRefresh: float = 30.0,
                 reactor=None, agent=None, maxAge: float = 3600.0, timeout: float = 10.0):
        if reactor is None:
            from twisted.internet import reactor
        self.issuer = issuer
        self.audience = audience
        self.groupsClaim = groupsClaim
        self.subjectClaim = subjectClaim
        self.leeway = leeway
        self.minRefresh = minRefresh
        self.maxAge = max(maxAge, minRefresh)
        self.timeout = timeout
        self._reactor = reactor
        self._agent = agent if agent is not None else Agent(reactor)
        self._jwksURI: str | None = None
        self._keys: dict[str | None, Any] | None = None
        self._fetchedAt: float | None = None
        self._inflight: list[defer.Deferred] | None = None
        self._failedAt: float | None = None
        #: How many times the JWKS was fetched (for metrics and tests).
        self.fetches = 0

    @property
    def discoveryURL(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    # -- public --------------------------------------------------------------

    def verify(self, token: str | bytes) -> defer.Deferred:
        """
        @return: a Deferred firing with an L{Identity}, or failing with
            L{AuthenticationFailed} whose reason never contains the token.
        """
        return defer.ensureDeferred(self._verify(token))

    def refresh(self) -> defer.Deferred:
        """Fetch discovery and JWKS now, ignoring the rate limit."""
        return self._fetchKeys()

    # -- the check -----------------------------------------------------------

    async def _verify(self, token: str | bytes) -> Identity:
        raw = token.encode("ascii", "replace") if isinstance(token, str) else bytes(token)
        raw = raw.strip()
        if len(raw) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("token too large")
        if raw.count(b".") != 2:
            raise AuthenticationFailed("malformed token: not a compact JWS")
        try:
            unverified = jws.extract_compact(raw)
            header = dict(unverified.protected)
            claims = json.loads(unverified.payload)
        except (JoseError, ValueError, TypeError):
            raise AuthenticationFailed("malformed token")
        claimed = _claimedFrom(claims, self.subjectClaim)

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and len(alg) <= 20 else "?"
            raise AuthenticationFailed(
                f"token algorithm {shown!r} is not accepted (use RS256, ES256 or EdDSA)", claimed)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationFailed("malformed token: kid is not a string", claimed)

        key = await self._keyFor(kid, alg, claimed)
        try:
            with warnings.catch_warnings():
                # joserfc warns that "EdDSA" is superseded by "Ed25519"; issuers still use it.
                warnings.simplefilter("ignore", SecurityWarning)
                verified = jwt.decode(raw, key, algorithms=[alg])
        except BadSignatureError:
            raise AuthenticationFailed("token signature is invalid", claimed)
        except (JoseError, ValueError, TypeError) as e:
            self._log.debug("token refused by joserfc: {error}", error=type(e).__name__)
            raise AuthenticationFailed("token signature is invalid", claimed)

        self._checkClaims(verified.claims, claimed)
        return self._identityFrom(verified.claims, claimed)

    def _checkClaims(self, claims: dict, claimed: str | None) -> None:
        registry = JWTClaimsRegistry(
            now=lambda: int(self._reactor.seconds()),
            leeway=int(self.leeway),
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthenticationFailed("token has expired", claimed)
        except MissingClaimError as e:
            raise AuthenticationFailed(f"token lacks required claim(s): {e.claim}", claimed)
        except ClaimError as e:
            if e.claim == "iss":
                raise AuthenticationFailed("token was issued by a different issuer", claimed)
            if e.claim == "aud":
                raise AuthenticationFailed(
                    f"token is not meant for this audience (expected {self.audience!r})", claimed)
            if e.claim == "nbf":
                raise AuthenticationFailed("token is not valid yet (nbf)", claimed)
            if e.claim == "iat":
                raise AuthenticationFailed("token was issued in the future (iat)", claimed)
            raise AuthenticationFailed(f"token claim {e.claim!r} is invalid", claimed)

    def _identityFrom(self, claims: dict, claimed: str | None) -> Identity:
        subject = claims.get(self.subjectClaim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationFailed(f"token has no {self.subjectClaim!r} claim", claimed)
        groups = claims.get(self.groupsClaim, [])
        if isinstance(groups, str):
            # Some issuers send a single group as a bare string.  It is that
            # ONE group: splitting it would turn "Platform leads" into the
            # approver group "leads".
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AuthenticationFailed(
                f"token claim {self.groupsClaim!r} must be a list of strings", claimed)
        exp = claims.get("exp")
        expires = float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
        return Identity(subject, frozenset(groups), "oidc", self.issuer, expires=expires)

    # -- keys ----------------------------------------------------------------

    async def _keyFor(self, kid: str | None, alg: str, claimed: str | None):
        now = self._reactor.seconds()
        if self._keys is None or (self._fetchedAt is not None
                                  and now - self._fetchedAt >= self.maxAge):
            await self._fetchOrKeep(claimed)
        key = self._pick(kid, alg)
        if key is None and self._fetchedAt is not None and now - self._fetchedAt >= self.minRefresh:
            # An unknown kid usually means the issuer rotated its keys.
            await self._fetchOrKeep(claimed)
            key = self._pick(kid, alg)
        if key is None:
            raise AuthenticationFailed("token signed with an unknown key", claimed)
        expected = _KTY_FOR_ALG[alg]
        if key.key_type != expected:
            raise AuthenticationFailed(
                f"token algorithm {alg!r} does not match its key type {key.key_type!r}", claimed)
        keyAlg = key.get("alg")
        if keyAlg and keyAlg != alg and {keyAlg, alg} != {"EdDSA", "Ed25519"}:
            raise AuthenticationFailed(
                f"token algorithm {alg!r} does not match its key's algorithm", claimed)
        return key

    def _pick(self, kid: str | None, alg: str):
        keys = self._keys or {}
        if kid is not None:
            return keys.get(kid)
        # No kid: acceptable only when exactly one key could have signed it.
        candidates = [k for k in keys.values() if k.key_type == _KTY_FOR_ALG[alg]]
        return candidates[0] if len(candidates) == 1 else None

    async def _fetchOrKeep(self, claimed: str | None) -> None:
        now = self._reactor.seconds()
        if self._failedAt is not None and now - self._failedAt < min(self.minRefresh, 5.0):
            # Right after a failed fetch, don't let every login hammer a struggling issuer.
            if self._keys is None:
                raise AuthenticationFailed("identity provider unavailable; try again", claimed)
            return
        try:
            await self._fetchKeys()
            self._failedAt = None
        except IssuerUnavailable as e:
            self._failedAt = self._reactor.seconds()
            if self._keys is None:
                self._log.warn("OIDC issuer {issuer} unavailable: {why}",
                               issuer=self.issuer, why=str(e))
                raise AuthenticationFailed("identity provider unavailable; try again", claimed)
            # A short issuer outage must not lock everyone out; keep the keys we had.
            self._log.warn("OIDC issuer {issuer} unavailable, using cached keys: {why}",
                           issuer=self.issuer, why=str(e))

    def _fetchKeys(self) -> defer.Deferred:
        """One fetch at a time; concurrent callers share its outcome."""
        waiter: defer.Deferred = defer.Deferred()
        if self._inflight is not None:
            self._inflight.append(waiter)
            return waiter
        self._inflight = [waiter]

        def done(result):
            waiters, self._inflight = self._inflight, None
            for w in waiters:
                if isinstance(result, Exception):
                    w.errback(result)
                else:
                    w.callback(None)

        def failed(f):
            done(f.value if isinstance(f.value, IssuerUnavailable)
                 else IssuerUnavailable(f.getErrorMessage()))

        defer.ensureDeferred(self._doFetch()).addCallbacks(done, failed)
        return waiter

    async def _doFetch(self) -> None:
        if self._jwksURI is None:
            doc = await self._getJSON(self.discoveryURL)
            if doc.get("issuer") != self.issuer:
                raise IssuerUnavailable(
                    f"discovery document names issuer {doc.get('issuer')!r}, "
                    f"configured {self.issuer!r}")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
                raise IssuerUnavailable("discovery document has no usable jwks_uri")
            self._jwksURI = uri
        jwks = await self._getJSON(self._jwksURI)
        self.fetches += 1
        self._keys = self._parseJWKS(jwks)
        self._fetchedAt = self._reactor.seconds()
        self._log.info("fetched {count} signing keys from {issuer}",
                       count=len(self._keys), issuer=self.issuer)

    def _parseJWKS(self, jwks: dict) -> dict[str | None, Any]:
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise IssuerUnavailable("JWKS has no keys array")
        keys: dict[str | None, Any] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = import_key(entry)
            except (JoseError, ValueError, TypeError) as e:
                self._log.warn("ignoring unusable JWKS entry {kid}: {why}",
                               kid=entry.get("kid"), why=type(e).__name__)
                continue
            keys[entry.get("kid")] = key
        return keys

    async def _getJSON(self, url: str) -> dict:
        return await fetchJSON(self._agent, self._reactor, b"GET", url, timeout=self.timeout)


async def fetchJSON(agent, reactor, method: bytes, url: str, form: dict | None = None,
                    timeout: float = 15.0, limit: int = MAX_DOCUMENT_BYTES) -> dict:
    """
    One JSON document from an issuer (discovery, JWKS, token endpoint),
    with a timeout and a size limit; a form, if given, is POSTed urlencoded.

    @raise IssuerUnavailable: naming the URL and what went wrong.
    """
    what = f"{method.decode()} {url}"
    headers = Headers({b"accept": [b"application/json"]})
    body = None
    if form is not None:
        headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
        body = FileBodyProducer(BytesIO(urlencode(form).encode()))
    try:
        d = agent.request(method, url.encode("ascii"), headers, body)
        d.addTimeout(timeout, reactor)
        response = await d
        if response.code != 200:
            # Drain so the connection can be reused or closed cleanly.
            response.deliverBody(_Discard())
            raise IssuerUnavailable(f"{what} returned HTTP {response.code}")
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            response.deliverBody(_Discard())
            raise IssuerUnavailable(f"{what}: document too large")
        data = await _readLimited(response, limit)
    except IssuerUnavailable:
        raise
    except Exception as e:
        raise IssuerUnavailable(f"{what} failed: {type(e).__name__}: {e}")
    if data is None:
        raise IssuerUnavailable(f"{what}: document too large")
    try:
        doc = json.loads(data)
    except ValueError:
        raise IssuerUnavailable(f"{what}: not JSON")
    if not isinstance(doc, dict):
        raise IssuerUnavailable(f"{what}: not a JSON object")
    return doc


class _Discard(Protocol):
    """Throws a response body away."""


class _Collect(Protocol):
    """Collects a response body up to a limit; past it, stops reading and gives None."""

    def __init__(self, limit: int, done: defer.Deferred):
        self.limit = limit
        self.done = done
        self.parts: list[bytes] | None = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.parts is None:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.parts = None
            # Agent gives deliverBody protocols an IPushProducer transport.
            cast(IPushProducer, self.transport).stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.parts is None:
            self.done.callback(None)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def _readLimited(response, limit: int) -> defer.Deferred:
    done: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collect(limit, done))
    return done
