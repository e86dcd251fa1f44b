"""Credentials checked for their whole life: live sessions end when their key is revoked or their token expires."""

from typing import Any

from twisted.internet import task
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

#: Close reasons sealed when a live session's credential stops being valid.
REVOKED = "credential revoked"
EXPIRED = "credential expired"

_MESSAGES = {
    REVOKED: "your {what} was revoked; the session ends",
    EXPIRED: "your {what} expired; log in again",
}
_WHAT = {"apikey": "API key", "sshkey": "SSH key", "oidc": "token"}


def closeReasonFor(failure: Exception) -> str:
    """The close reason of a session whose credential failed a re-check."""
    return EXPIRED if "expired" in str(failure) else REVOKED


class CredentialLifetime:
    """
    Owned by the gateway.  Every C{recheck_interval} it looks at each live
    session whose connection does not opt out (C{recheck_credentials =
    false}): a credential past its expiry, or an API key or SSH key revoked
    or gone from the store since login, ends the session in its protocol's
    words (C{session.fail}), sealed with close reason L{REVOKED} or
    L{EXPIRED}.  Revocation is read in the reactor's thread pool (SQLite).

    Per-request protocols (HTTP) also ask L{fresh} before each request: a
    credential checked within C{credential_cache} seconds and not expired
    is used as it is, otherwise the protocol checks it again.
    """

    _log = Logger()

    def __init__(self, gateway, limits, reactor):
        self._gateway = gateway
        self._limits = limits
        self._reactor = reactor
        self._checked: dict[str, float] = {}
        self._loop: Any = None
        #: Runs the revocation look-up off the reactor thread (tests run it inline).
        self.inThread = lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a)

    def start(self) -> None:
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(self._limits.recheck_interval, now=False).addErrback(
            lambda f: self._log.failure("Credential re-check loop failed", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    # -- per request ---------------------------------------------------------

    def opened(self, session) -> None:
        """A session was opened right after its credential was checked."""
        self._checked[session.id] = self._reactor.seconds()

    def ended(self, session) -> None:
        self._checked.pop(session.id, None)

    def fresh(self, session) -> bool:
        """May C{session}'s credential be used without checking it again?"""
        now = self._reactor.seconds()
        expires = getattr(session.identity, "expires", None)
        if expires is not None and now >= expires:
            return False
        at = self._checked.get(session.id)
        return at is not None and now - at < self._limits.credential_cache

    async def recheck(self, session, credential: str, client: str) -> None:
        """
        Check a kept-alive session's credential again (through the gateway:
        backoff, and a failure is sealed).

        @raise AuthenticationFailed: it no longer holds; the caller ends the
            session with L{closeReasonFor} and refuses the request.
        """
        await self._gateway.authenticate(session.connection, credential, client)
        if session.id in self._checked:
            self._checked[session.id] = self._reactor.seconds()

    # -- the periodic check --------------------------------------------------

    def check(self):
        """
        One pass over the live sessions.  @return: a Deferred when a
        revocation look-up is under way (the loop waits for it), else None.
        """
        now = self._reactor.seconds()
        live = [s for s in list(self._gateway.sessions.values())
                if getattr(s.connection, "recheck", True) and not s.ended]
        for s in live:
            expires = getattr(s.identity, "expires", None)
            if expires is not None and now >= expires:
                self._end(s, EXPIRED)
        keyed = [s for s in live if not s.ended and s.identity.method in ("apikey", "sshkey")
                 and s.identity.credential]
        lookup = getattr(self._gateway.identity, "statuses", None)
        if not keyed or lookup is None:
            return None
        wanted = {(s.identity.method, s.identity.credential) for s in keyed}
        d = self.inThread(lookup, wanted)

        def apply(statuses):
            for s in keyed:
                state = statuses.get((s.identity.method, s.identity.credential))
                if s.ended or state in (None, "active"):
                    continue
                self._end(s, EXPIRED if state == "expired" else REVOKED)

        def failed(f):
            # Not knowing is not a revocation: the next pass tries again.
            self._log.failure("Re-checking live credentials failed", f)

        return d.addCallbacks(apply, failed)

    def _end(self, session, reason: str) -> None:
        what = _WHAT.get(session.identity.method, "credential")
        self._log.info("Ending session {session} of {identity}: {reason}",
                       session=session.id, identity=session.identity.id, reason=reason)
        session.fail(reason, _MESSAGES[reason].format(what=what))
