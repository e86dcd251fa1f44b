"""The L{IGateway} protocols call: credentials to identities, identities to sessions."""

import hashlib
import json
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from sealgate.chain import Chain
from sealgate.chain.verdicts import Deny
from sealgate.flow import STORE
from sealgate.identity import AuthenticationFailed
from sealgate.identity.service import claimHint
from sealgate.interfaces import IGateway
from sealgate.lifetime import CredentialLifetime
from sealgate.masking import maskEvent
from sealgate.prelogin import PreLoginGuard
from sealgate.session import Session, SessionRefused, newSessionId
from sealgate.throttle import LoginThrottle, sourceOfClient


class PluginError(Exception):
    """An interceptor plugin could not be built; the message names it."""


def policyHash(config) -> str:
    """SHA-256 over the policy (roles, rules, masking) a session starts under."""
    raw = config.raw
    policy = {k: raw.get(k) for k in ("roles", "rules", "masking")}
    blob = json.dumps(policy, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


@implementer(IGateway)
class Gateway:
    """
    Shared by every protocol factory.  Holds the current policy (replaced
    whole on reload: sessions keep the chain they started with, new ones get
    the new one) and the live sessions.
    """

    _log = Logger()

    def __init__(self, config, identity, store, approvals, interceptorPlugins, reactor):
        self.reactor = reactor
        self.identity = identity
        self.store = store
        self.approvals = approvals
        self._plugins = interceptorPlugins
        self.sessions: dict[str, Session] = {}
        self.accepting = True
        #: Set by the service while draining; fires when the last session ends.
        self.drained = None
        # Limits are the process's (fds, memory): fixed at start, not reloaded.
        self.prelogin = PreLoginGuard(config.limits, reactor)
        self.throttle = LoginThrottle(config.limits, reactor, store)
        self.lifetime = CredentialLifetime(self, config.limits, reactor)
        #: True while the store asks relaying to wait (every leg is paused).
        self.storePaused = False
        self.setConfig(config)
        observe = getattr(store, "addPressureObserver", None)
        if observe is not None:
            observe(self.pressureChanged)
            self.storePaused = store.pressure() is not None

    def pressureChanged(self, state: str, reason: str | None) -> None:
        """
        The store's pressure observer (called on the reactor thread):
        "paused" pauses both legs of every live session, "flowing" resumes
        them, "failed" ends each in its protocol's words, sealed as
        "store failed".
        """
        if state == "paused":
            if not self.storePaused:
                self._log.warn("Relaying paused: {reason}", reason=reason)
            self.storePaused = True
            for s in list(self.sessions.values()):
                s.pauseLegs(STORE)
        elif state == "flowing":
            if self.storePaused:
                self._log.info("Relaying resumed: the store takes writes again")
            self.storePaused = False
            for s in list(self.sessions.values()):
                s.resumeLegs(STORE)
        elif state == "failed":
            self._log.error("The recording store failed ({reason}); ending {n} session(s)",
                            reason=reason, n=len(self.sessions))
            message = f"the recording store failed ({reason or 'no reason given'}); the session ends"
            for s in list(self.sessions.values()):
                s.fail("store failed", message)

    def setConfig(self, config) -> None:
        """Build the chain for a (new) config.  Raises if a plugin refuses it."""
        interceptors = []
        for p in self._plugins:
            try:
                i = p.build(config, self)
            except Exception as e:
                raise PluginError(f"interceptor plugin {p.name!r} failed to load: "
                                  f"{type(e).__name__}: {e}") from e
            if i is not None:
                interceptors.append(i)
        self.config = config
        self.chain = Chain(interceptors)
        self.policyHash = policyHash(config)

    def connectionsSharing(self, connection) -> list:
        """
        The connections one listener serves: C{connection}'s protocol and
        listen endpoint, in file order (the service builds one factory for
        them, with the first; the protocol picks one per client).
        """
        same = [c for c in self.config.connections
                if c.protocol == connection.protocol and c.listen == connection.listen]
        return same or [connection]

    def authenticate(self, connection, credential, client, claimed=None):
        """
        Check a credential, after the login backoff of the client's address
        and of the identities it claims; a failure is sealed (aggregated per
        source and interval by L{LoginThrottle}).

        @param connection: the L{ConnectionConfig}, or a listener's name
            (e.g. C{"admin"}) for logins that open no proxied session.
        """
        source = sourceOfClient(client)
        claims = [claimed, claimHint(credential)]
        d = self.throttle.wait(source, claims)
        d.addCallback(lambda _: self.identity.authenticate(credential))

        def ok(identity):
            self.throttle.succeeded([*claims, identity.id])
            return identity

        def failed(f):
            if f.check(AuthenticationFailed):
                reason, who = f.value.reason, f.value.claimed
            else:
                self._log.failure("Authentication error for {client}", f, client=client)
                reason, who = "authentication is unavailable", None
            # Both claims: the one inside the credential (a key's name, a
            # token's sub) and the user name the client's protocol gave.
            self.loginFailed(connection, client, reason, claimed=who, protocol_user=claimed,
                             claims=claims)
            raise AuthenticationFailed(reason, who or claimed)

        return d.addCallbacks(ok, failed)

    def loginFailed(self, connection, client: str, reason: str, claimed=None, claims=(),
                    **fields) -> None:
        """Seal (or fold into the next aggregate) one failed login, and slow the next."""
        name = getattr(connection, "name", connection)
        protocol = getattr(connection, "protocol", name)
        event = {"kind": "login_failed", "connection": name, "protocol": protocol,
                 "client": client, "claimed": claimed, "reason": reason}
        event.update(fields)
        if self.throttle.failed(sourceOfClient(client), [claimed, *claims], event):
            # Later ones from this address are logged (and sealed) as one count per interval.
            self._log.info("Login refused on {connection} from {client} "
                           "(claimed {claimed}): {reason}", connection=name,
                           client=client, claimed=claimed or fields.get("protocol_user"),
                           reason=reason)

    def stop(self) -> None:
        """At shutdown: no more re-checks; pending failed-login aggregates are sealed."""
        self.lifetime.stop()
        self.throttle.stop()

    def openSession(self, connection, identity, client, meta=None) -> Session:
        if not self.accepting:
            raise SessionRefused("the gateway is shutting down", "shutdown")
        problem = self.store.healthy()
        if problem is not None:
            self._log.error("Refusing a session on {connection}: {problem}",
                            connection=connection.name, problem=problem)
            raise SessionRefused(f"sessions cannot be recorded: {problem}", "store")
        session = Session(newSessionId(), connection, identity, client, meta=dict(meta or {}))
        session.chain = self.chain.forSession(session)
        verdict = session.chain.sessionStart()
        if isinstance(verdict, Deny):
            self.store.auditEvent({
                "kind": "access_denied", "connection": connection.name,
                "protocol": connection.protocol, "client": client,
                "identity": identity.asDict(), "rule": verdict.rule, "reason": verdict.reason,
            })
            raise SessionRefused(verdict.reason, "access")
        masker = session.chain.masker
        # Startup fields the client chose (application_name) are input: sealed masked.
        meta = session.meta if masker is None else maskEvent(masker, session.meta)
        info: dict[str, Any] = {
            "connection": connection.name, "protocol": connection.protocol,
            "identity": identity.asDict(), "client": client,
            "policy_hash": self.policyHash, "meta": meta,
        }
        session.recording = self.store.openSession(session.id, info)
        session.gateway = self
        self.sessions[session.id] = session
        self.lifetime.opened(session)
        self._log.info("Session {session} opened: {subject} on {connection} from {client}",
                       session=session.id, subject=identity.id,
                       connection=connection.name, client=client)
        return session

    def sessionEnded(self, session: Session, reason: str) -> None:
        self.sessions.pop(session.id, None)
        self.lifetime.ended(session)
        self.approvals.cancelSession(session.id)
        if not self.sessions and self.drained is not None and not self.drained.called:
            self.drained.callback(None)
        self._log.info("Session {session} closed: {reason}", session=session.id, reason=reason)
