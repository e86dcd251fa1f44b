"""The shared OIDC code flow against the local issuer: PKCE, state, nonce, expiry."""

import base64
import hashlib
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent

from sealgate.identity.oidcflow import CodeFlow, LoginError, PendingLogin


@pytest_twisted.ensureDeferred
async def test_begin_sends_pkce_state_and_nonce_and_take_is_once(oidc_issuer):
    flow = CodeFlow(oidc_issuer.issuer, Agent(reactor), reactor)
    state, url = await flow.begin("console", "http://127.0.0.1:1/cb", ("openid", "groups"))
    query = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    pending = flow.pending[state]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(pending.verifier.encode()).digest()).rstrip(b"=")
    assert query["code_challenge"] == challenge.decode() and query["code_challenge_method"] == "S256"
    assert (query["state"], query["nonce"], query["scope"]) == (state, pending.nonce, "openid groups")
    assert flow.take(state) is pending
    with pytest.raises(LoginError, match="not started here"):
        flow.take(state)


def test_expired_login_is_refused():
    flow = CodeFlow("http://issuer.invalid/", None, None, ttl=60)
    flow.pending["s"] = PendingLogin("v", "n", "r", created=0.0)
    with pytest.raises(LoginError):
        flow.take("s")


def test_nonce_must_match_the_login(oidc_issuer):
    pending = PendingLogin("v", "right", "r", created=0.0)
    assert CodeFlow.nonceMatches(oidc_issuer.mint("alice", ["eng"], nonce="right"), pending)
    assert not CodeFlow.nonceMatches(oidc_issuer.mint("alice", ["eng"], nonce="wrong"), pending)
    assert not CodeFlow.nonceMatches(oidc_issuer.mint("alice", ["eng"]), pending)
    assert not CodeFlow.nonceMatches("not-a-jwt", pending)


@pytest_twisted.ensureDeferred
async def test_issuer_refusal_and_missing_code_are_errors(oidc_issuer):
    flow = CodeFlow(oidc_issuer.issuer, Agent(reactor), reactor)
    pending = PendingLogin("v", "n", "http://127.0.0.1:1/cb", created=0.0)
    with pytest.raises(LoginError, match="refused the login: access_denied"):
        await flow.finish(pending, {"error": "access_denied"}, "console", None)
    with pytest.raises(LoginError, match="no authorization code"):
        await flow.finish(pending, {}, "console", None)
