"""Credentials for their whole life, without a reactor: expiry, revocation, the opt-out and the per-request cache."""

import attrs
import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from sealgate.config import ConnectionConfig, Limits
from sealgate.identity import AuthenticationFailed, Identity
from sealgate.lifetime import EXPIRED, REVOKED, closeReasonFor
from sealgate.testing import FakeIdentities, fakeGateway


@attrs.define
class Identities(FakeIdentities):
    """Knows where each key stands, as IdentityService.statuses does."""

    states: dict = attrs.field(factory=dict)
    asked: list = attrs.field(factory=list)

    def statuses(self, wanted):
        self.asked.append(set(wanted))
        return {k: self.states.get(k, "active") for k in wanted}


def gateway(reactor, **limits):
    ids = Identities()
    gw = fakeGateway(reactor=reactor, identities=ids)
    gw.lifetime._limits = Limits(**limits)
    gw.lifetime.inThread = lambda f, *a: defer.succeed(f(*a))
    return gw, ids


def open(gw, identity, recheck=True):
    conn = ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=h:port=1", recheck=recheck)
    s = gw.openSession(conn, identity, "192.0.2.1:5000")
    aborted = []
    s.abort = aborted.append
    return s, aborted


def key(name="ci", keyId="00ff00ff00ff00ff", expires=None):
    return Identity(name, {"eng"}, "apikey", expires=expires, credential=keyId)


def test_a_revoked_api_key_ends_its_session_at_the_next_pass_sealed_as_revoked():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor, recheck_interval=60.0)
    gw.lifetime.start()
    s, aborted = open(gw, key())
    reactor.advance(60)
    assert not s.ended and ids.asked == [{("apikey", "00ff00ff00ff00ff")}]
    ids.states[("apikey", "00ff00ff00ff00ff")] = "revoked"
    reactor.advance(59)
    assert not s.ended
    reactor.advance(1)
    assert s.ended and s.closeReason == REVOKED
    assert aborted == ["your API key was revoked; the session ends"]
    assert s.recording.closed[0] == REVOKED
    gw.stop()


def test_an_expired_token_or_key_ends_its_session_without_a_lookup():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor, recheck_interval=10.0)
    gw.lifetime.start()
    s, aborted = open(gw, Identity("alice", {"eng"}, "oidc", "https://idp", expires=25.0))
    reactor.advance(20)
    assert not s.ended
    reactor.advance(10)
    assert s.closeReason == EXPIRED and aborted == ["your token expired; log in again"]
    assert ids.asked == []
    gw.stop()


def test_a_key_gone_from_the_store_counts_as_revoked_and_an_expired_one_as_expired():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor)
    gone, _ = open(gw, key("a", "1" * 16))
    old, _ = open(gw, Identity("bob", {"eng"}, "sshkey", credential="SHA256:x"))
    ids.states.update({("apikey", "1" * 16): "unknown", ("sshkey", "SHA256:x"): "expired"})
    gw.lifetime.check()
    assert gone.closeReason == REVOKED and old.closeReason == EXPIRED


def test_a_connection_that_opts_out_keeps_its_session():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor)
    s, aborted = open(gw, key(expires=1.0), recheck=False)
    ids.states[("apikey", "00ff00ff00ff00ff")] = "revoked"
    reactor.advance(5)
    gw.lifetime.check()
    assert not s.ended and aborted == [] and ids.asked == []


def test_a_failed_lookup_ends_nothing():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor)
    s, _ = open(gw, key())
    gw.lifetime.inThread = lambda f, *a: defer.fail(OSError("database is locked"))
    gw.lifetime.check()
    assert not s.ended


def test_the_per_request_cache_is_short_and_never_outlives_the_expiry():
    reactor = MemoryReactorClock()
    gw, _ = gateway(reactor, credential_cache=5.0)
    s, _ = open(gw, key(expires=8.0))
    assert gw.lifetime.fresh(s)
    reactor.advance(5)
    assert not gw.lifetime.fresh(s)
    gw.lifetime._checked[s.id] = reactor.seconds()  # what a successful recheck does
    assert gw.lifetime.fresh(s)
    reactor.advance(3)
    assert not gw.lifetime.fresh(s)  # expired: checked again whatever the cache says


@pytest_twisted.ensureDeferred
async def test_a_recheck_goes_through_the_gateway_and_a_failure_is_sealed():
    reactor = MemoryReactorClock()
    gw, ids = gateway(reactor)
    s, _ = open(gw, key())
    ids.known["sgk_good"] = key()
    await gw.lifetime.recheck(s, "sgk_good", "192.0.2.1:5000")
    try:
        await gw.lifetime.recheck(s, "sgk_revoked", "192.0.2.1:5000")
    except AuthenticationFailed as e:
        assert closeReasonFor(e) == REVOKED
    else:
        raise AssertionError("a bad credential passed the recheck")
    assert [e["kind"] for e in gw.store.events] == ["login_failed"]
    assert closeReasonFor(AuthenticationFailed("token has expired")) == EXPIRED
