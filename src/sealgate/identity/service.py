"""One entry point that turns a credential (API key or OIDC token) into an Identity."""

import base64
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet import defer, ssl
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from sealgate.config import IdentityConfig
from sealgate.identity._types import AuthenticationFailed, Identity
from sealgate.identity.apikeys import PREFIX, APIKeyStore
from sealgate.identity.oidc import OIDCVerifier

#: The API key store's file in the state directory.
KEYS_FILE = "identity.sqlite"


def issuerAgent(config: IdentityConfig, reactor, **kw) -> Agent:
    """
    An Agent for talking to the OIDC issuer (discovery, JWKS, token
    endpoint): it trusts only C{oidc_ca_file} when that is set (a private
    CA), else the system's roots; hostnames are always verified.
    """
    if not config.oidc_ca_file:
        return Agent(reactor, **kw)
    with open(config.oidc_ca_file, "rb") as f:
        certs = x509.load_pem_x509_certificates(f.read())
    roots = ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs])
    return Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=roots), **kw)


def claimHint(credential) -> str | None:
    """
    Who a credential says it is, read without checking it, for the login
    backoff of that identity before the (costlier) check: an API key's id,
    or an unverified token's C{sub}.  Never the secret part.
    """
    if not isinstance(credential, str):
        return None
    credential = credential.strip()
    if credential.lower().startswith("bearer "):
        credential = credential[7:].strip()
    if credential.startswith(PREFIX):
        keyId = credential[len(PREFIX):].split("_", 1)[0]
        return f"apikey-id:{keyId[:16]}" if keyId else None
    parts = credential.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return f"sub:{sub[:200]}" if isinstance(sub, str) and sub else None


class IdentityService:
    """
    Checks credentials for the gateway.  API keys (C{sgk_...}) are verified
    in the reactor's thread pool (SQLite), tokens by L{OIDCVerifier} when an
    issuer is configured.  C{start()} warms the JWKS cache in the background.
    """

    _log = Logger()

    def __init__(self, config: IdentityConfig, stateDir: Path, reactor=None, agent=None,
                 fleet=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        #: The fleet's shared database (L{sealgate.fleetdb.FleetConfig}), or None.
        self.fleet = fleet
        #: With a fleet: whether this node reaches its database (its lease
        #: renews).  While it does not, new logins are refused, whatever the
        #: credential: no ticket could be decided, no key revocation seen.
        self.fleetUp = lambda: True
        self._fleetSSHKeys: Any = None
        if fleet is not None:
            from sealgate.fleet.keys import PGAPIKeyStore

            self.keys: APIKeyStore = PGAPIKeyStore(fleet.url)
        else:
            self.keys = APIKeyStore(Path(stateDir) / KEYS_FILE)
        self._stateDir = Path(stateDir)
        self.oidc: OIDCVerifier | None = None
        self.warmed: defer.Deferred = defer.succeed(None)
        if config.oidc_issuer:
            if config.allow_insecure_issuer and config.oidc_issuer.startswith("http://"):
                self._log.warn("OIDC issuer {issuer} is plain http (allow_insecure_issuer): "
                               "anyone on the path can swap its keys and sign in as anyone",
                               issuer=config.oidc_issuer)
            self.oidc = OIDCVerifier(
                config.oidc_issuer, config.oidc_audience, config.groups_claim,
                config.subject_claim, config.leeway, config.jwks_min_refresh,
                reactor=reactor, agent=agent if agent is not None else issuerAgent(config, reactor))

    def start(self) -> defer.Deferred:
        """
        Fetch the issuer's keys in the background so the first login is fast.
        Never waits for or fails on the issuer: an outage at start-up must not
        keep API-key users out.  C{self.warmed} fires when the attempt ends.
        """
        if self.oidc is not None:
            self.warmed = self.oidc.refresh()
            self.warmed.addErrback(lambda f: self._log.warn(
                "OIDC issuer {issuer} not reachable at start-up ({why}); will retry on login",
                issuer=self.config.oidc_issuer, why=f.getErrorMessage()))
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        self.keys.close()
        return defer.succeed(None)

    def statuses(self, credentials) -> dict[tuple[str, str], str]:
        """
        Where each C{(method, id)} of a live session's API key (key id) or
        SSH key (fingerprint) stands now: "active", "revoked", "expired" or
        "unknown".  Synchronous (SQLite): call it in a thread.
        """
        # Conch (under SSHKeyStore) is loaded only when an SSH session is live.
        from sealgate.identity.sshkeys import SSHKeyStore

        sshKeys: SSHKeyStore | None = None
        out = {}
        for method, ident in credentials:
            if method == "apikey":
                out[(method, ident)] = self.keys.status(ident)
            elif method == "sshkey":
                if sshKeys is None:
                    if self.fleet is not None:
                        from sealgate.fleet.keys import PGSSHKeyStore

                        # One store (its connection per thread) for every re-check.
                        if self._fleetSSHKeys is None:
                            self._fleetSSHKeys = PGSSHKeyStore(self.fleet.url)
                        sshKeys = self._fleetSSHKeys
                    else:
                        sshKeys = SSHKeyStore.forStateDir(self._stateDir)
                out[(method, ident)] = sshKeys.status(ident)
        return out

    def authenticate(self, credential: str) -> defer.Deferred:
        """
        @return: a Deferred firing with an L{Identity} or failing with
            L{AuthenticationFailed} (reason safe to show; never the credential).
        """
        if not isinstance(credential, str):
            try:
                credential = bytes(credential).decode("ascii")
            except (TypeError, ValueError):
                return defer.fail(AuthenticationFailed("malformed credential"))
        credential = credential.strip()
        if credential.lower().startswith("bearer "):
            credential = credential[7:].strip()
        if not credential:
            return defer.fail(AuthenticationFailed("no credential given"))
        if self.fleet is not None and not self.fleetUp():
            return defer.fail(AuthenticationFailed(
                "the gateway cannot reach its fleet database; new sessions are refused until it is back"))
        if credential.startswith(PREFIX):
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                     self.keys.verify, credential)
        if self.oidc is not None:
            return self.oidc.verify(credential)
        return defer.fail(AuthenticationFailed(
            "not an API key, and no OIDC issuer is configured for tokens"))


__all__ = ["IdentityService", "Identity", "AuthenticationFailed", "KEYS_FILE"]
