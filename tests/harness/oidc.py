"""A local OIDC issuer on loopback (discovery + JWKS) that mints real signed tokens."""

import base64
import hmac
import json
import secrets
import time
import warnings
from typing import Any

from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OKPKey, RSAKey
from twisted.web import resource, server

_ALG_FOR_KTY = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    """A compact JWS with any header and signature, for tokens no issuer would mint."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    return f"{h}.{p}.{b64url(signature)}"


def forgeHS256(header: dict, claims: dict, secret: bytes) -> str:
    """An HS256 token signed with C{secret} (e.g. the issuer's public key bytes)."""
    h = b64url(json.dumps(header).encode())
    p = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{h}.{p}".encode(), "sha256").digest()
    return f"{h}.{p}.{b64url(mac)}"


class _Issuer(resource.Resource):
    isLeaf = True

    def __init__(self, owner: "OIDCIssuer"):
        super().__init__()
        self.owner = owner

    def render_GET(self, request):
        path = request.path.decode()
        self.owner.requests.append(path)
        base = self.owner.path.rstrip("/")
        if path == base + "/.well-known/openid-configuration":
            doc = self.owner.discovery()
        elif path == base + "/jwks":
            doc = self.owner.jwks()
        elif path == base + "/authorize":
            return self.owner.authorize(request)
        else:
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(doc).encode()

    def render_POST(self, request):
        path = request.path.decode()
        self.owner.requests.append(path)
        if path != self.owner.path.rstrip("/") + "/token":
            request.setResponseCode(404)
            return b"not found\n"
        status, doc = self.owner.token({k.decode(): v[0].decode() for k, v in request.args.items()})
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(doc).encode()


class OIDCIssuer:
    """
    Serves C{<issuer>/.well-known/openid-configuration} and C{<issuer>/jwks}
    on 127.0.0.1 (OS-chosen port) in the running reactor.

    Keys are generated per instance: one RSA, one EC P-256 and one Ed25519.

    @ivar issuer: the issuer URL (what tokens carry in C{iss}).
    @ivar requests: paths fetched, in order (to count JWKS fetches).
    """

    def __init__(self, reactor=None, path: str = "/realms/test", audience: str = "sealgate"):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.path = path
        self.audience = audience
        self.keys: dict[str, Any] = {}
        self.requests: list[str] = []
        self._port = None
        self._hidden: dict[str, Any] = {}
        #: Who the test-only authorization endpoint logs in, without asking
        #: (C{None}: it refuses with C{error=access_denied}).
        self.loginAs: tuple[str, tuple[str, ...]] | None = ("alice", ("eng",))
        self._codes: dict[str, dict] = {}
        for kind in ("RSA", "EC", "OKP"):
            self.addKey(kind)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "OIDCIssuer":
        site = server.Site(_Issuer(self))
        site.noisy = False
        self._port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        return self

    def stop(self):
        """@return: a Deferred that fires when the port is closed."""
        port, self._port = self._port, None
        return port.stopListening()

    @property
    def port(self) -> int:
        return self._port.getHost().port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def jwksFetches(self) -> int:
        return sum(1 for p in self.requests if p.endswith("/jwks"))

    def discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict:
        return {"keys": [k.as_dict(private=False) for k in self.keys.values()]}

    # -- authorization code + PKCE (test-only: no login form, no consent) ----

    def authorize(self, request) -> bytes:
        """Log C{loginAs} in at once and send the browser back with a code."""
        from urllib.parse import urlencode

        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        redirect = args.get("redirect_uri", "")
        if (args.get("response_type") != "code" or args.get("code_challenge_method") != "S256"
                or not args.get("code_challenge") or not redirect.startswith("http")):
            request.setResponseCode(400)
            return b"bad authorization request\n"
        if self.loginAs is None:
            query = {"error": "access_denied", "state": args.get("state", "")}
        else:
            code = secrets.token_urlsafe(16)
            self._codes[code] = {**args, "user": self.loginAs}
            query = {"code": code, "state": args.get("state", "")}
        request.redirect((redirect + "?" + urlencode(query)).encode())
        return b""

    def token(self, form: dict) -> tuple[int, dict]:
        """Exchange a code once, checking the PKCE verifier, client and redirect URI."""
        import hashlib

        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        challenge = b64url(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if (challenge != grant["code_challenge"] or form.get("client_id") != grant["client_id"]
                or form.get("redirect_uri") != grant["redirect_uri"]):
            return 400, {"error": "invalid_grant"}
        sub, groups = grant["user"]
        token = self.mint(sub, groups, aud=grant["client_id"], nonce=grant.get("nonce"))
        return 200, {"id_token": token, "access_token": token, "token_type": "Bearer", "expires_in": 300}

    # -- keys ----------------------------------------------------------------

    def addKey(self, kind: str = "RSA", publish: bool = True) -> str:
        """Generate a key (RSA, EC or OKP); return its kid."""
        kid = f"{kind.lower()}-{secrets.token_hex(4)}"
        params = {"kid": kid, "use": "sig"}
        if kind == "RSA":
            key = RSAKey.generate_key(2048, parameters=params)
        elif kind == "EC":
            key = ECKey.generate_key("P-256", parameters=params)
        elif kind == "OKP":
            key = OKPKey.generate_key("Ed25519", parameters=params)
        else:
            raise ValueError(kind)
        if publish:
            self.keys[kid] = key
        else:
            self._hidden[kid] = key
        return kid

    def publish(self, kid: str) -> None:
        """Put a key made with C{publish=False} into the JWKS."""
        self.keys[kid] = self._hidden.pop(kid)

    def retire(self, kid: str) -> None:
        """Take a key out of the JWKS (tokens it signed become unverifiable)."""
        self._hidden[kid] = self.keys.pop(kid)

    def rotate(self, kind: str = "RSA") -> str:
        """Publish a new key (the old ones stay published); return its kid."""
        return self.addKey(kind)

    def kid(self, kind: str = "RSA") -> str:
        """The first published key of a kind."""
        return next(k for k, v in self.keys.items() if v.key_type == kind)

    def key(self, kid: str):
        return self.keys.get(kid) or self._hidden[kid]

    def publicPEM(self, kid: str) -> bytes:
        return self.key(kid).as_pem(private=False)

    # -- tokens --------------------------------------------------------------

    def claims(self, sub: str = "alice", groups=("eng",), aud: Any = None, exp: float | None = None,
               iss: str | None = None, **extra) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer if iss is None else iss,
            "sub": sub,
            "aud": self.audience if aud is None else aud,
            "iat": now,
            "exp": int(now + 300 if exp is None else exp),
            # A bare string is sent as such: some issuers do, for one group.
            "groups": groups if isinstance(groups, str) else list(groups),
        }
        claims.update(extra)
        return claims

    def mint(self, sub: str = "alice", groups=("eng",), aud: Any = None, exp: float | None = None,
             kid: str | None = None, alg: str | None = None, iss: str | None = None,
             **extra) -> str:
        """
        A token signed by one of this issuer's keys.

        @param exp: absolute expiry (epoch seconds); default five minutes ahead.
        @param kid: which key; default the RSA key.
        @param alg: default from the key type (RS256, ES256, EdDSA).
        @param extra: more claims (nbf, preferred_username, ...); a claim
            given as None is left out.
        """
        kid = kid or self.kid("RSA")
        key = self.key(kid)
        alg = alg or _ALG_FOR_KTY[key.key_type]
        claims = {k: v for k, v in self.claims(sub, groups, aud, exp, iss, **extra).items()
                  if v is not None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, claims, key,
                              algorithms=[alg])
