"""OIDC token verification against a real local issuer (discovery + JWKS over HTTP)."""

import time

import pytest
import pytest_twisted

from sealgate.identity import AuthenticationFailed, Identity
from sealgate.identity.oidc import OIDCVerifier
from tests.harness.oidc import forge, forgeHS256


def verifier(issuer, **kw) -> OIDCVerifier:
    kw.setdefault("minRefresh", 0)
    return OIDCVerifier(issuer.issuer, "sealgate", "groups", "sub", kw.pop("leeway", 60), **kw)


async def refused(v: OIDCVerifier, token: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        await v.verify(token)
    shown = f"{info.value} {info.value.claimed}"
    for part in token.split("."):
        assert len(part) < 8 or part not in shown
    return info.value


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["RSA", "EC", "OKP"])
async def test_valid_token_gives_identity_with_groups(oidc_issuer, kind):
    token = oidc_issuer.mint("alice", ["eng", "oncall"], kid=oidc_issuer.kid(kind))
    identity = await verifier(oidc_issuer).verify(token)
    assert identity == Identity("alice", frozenset({"eng", "oncall"}), "oidc", oidc_issuer.issuer)


@pytest_twisted.ensureDeferred
async def test_expired_token_is_refused_beyond_leeway(oidc_issuer):
    v = verifier(oidc_issuer, leeway=60)
    err = await refused(v, oidc_issuer.mint("alice", exp=time.time() - 120))
    assert err.reason == "token has expired"
    assert err.claimed == "alice"
    # Inside the leeway the same clock skew is tolerated.
    await v.verify(oidc_issuer.mint("alice", exp=time.time() - 5))


@pytest_twisted.ensureDeferred
async def test_token_for_another_audience_is_refused(oidc_issuer):
    err = await refused(verifier(oidc_issuer), oidc_issuer.mint("bob", aud="other-app"))
    assert "audience" in err.reason
    assert err.claimed == "bob"


@pytest_twisted.ensureDeferred
async def test_audience_list_containing_ours_is_accepted(oidc_issuer):
    identity = await verifier(oidc_issuer).verify(oidc_issuer.mint("bob", aud=["x", "sealgate"]))
    assert identity.subject == "bob"


@pytest_twisted.ensureDeferred
async def test_token_from_another_issuer_is_refused(oidc_issuer):
    token = oidc_issuer.mint("carol", iss="https://evil.example.com/")
    err = await refused(verifier(oidc_issuer), token)
    assert err.reason == "token was issued by a different issuer"


@pytest_twisted.ensureDeferred
async def test_not_yet_valid_and_future_iat_are_refused(oidc_issuer):
    v = verifier(oidc_issuer, leeway=30)
    err = await refused(v, oidc_issuer.mint("dave", nbf=int(time.time()) + 600))
    assert "nbf" in err.reason
    err = await refused(v, oidc_issuer.mint("dave", iat=int(time.time()) + 600))
    assert "iat" in err.reason


@pytest_twisted.ensureDeferred
async def test_missing_exp_is_refused(oidc_issuer):
    token = oidc_issuer.mint("erin", exp=0)
    claims = oidc_issuer.claims("erin")
    del claims["exp"]
    from joserfc import jwt

    kid = oidc_issuer.kid("RSA")
    token = jwt.encode({"alg": "RS256", "kid": kid}, claims, oidc_issuer.key(kid))
    err = await refused(verifier(oidc_issuer), token)
    assert "exp" in err.reason


@pytest_twisted.ensureDeferred
async def test_unknown_kid_refetches_jwks_and_accepts_rotated_key(oidc_issuer):
    v = verifier(oidc_issuer, minRefresh=0)
    await v.verify(oidc_issuer.mint("alice"))
    assert oidc_issuer.jwksFetches == 1
    await v.verify(oidc_issuer.mint("alice", kid=oidc_issuer.kid("EC")))
    assert oidc_issuer.jwksFetches == 1, "a cached key must not cause a fetch"

    newKid = oidc_issuer.rotate("RSA")
    identity = await v.verify(oidc_issuer.mint("alice", kid=newKid))
    assert identity.subject == "alice"
    assert oidc_issuer.jwksFetches == 2


@pytest_twisted.ensureDeferred
async def test_unknown_kid_refetch_is_rate_limited(oidc_issuer):
    v = verifier(oidc_issuer, minRefresh=3600)
    await v.verify(oidc_issuer.mint("alice"))
    newKid = oidc_issuer.rotate("EC")
    token = oidc_issuer.mint("alice", kid=newKid)
    for _ in range(3):
        err = await refused(v, token)
        assert err.reason == "token signed with an unknown key"
    assert oidc_issuer.jwksFetches == 1


@pytest_twisted.ensureDeferred
async def test_key_never_published_is_refused(oidc_issuer):
    hidden = oidc_issuer.addKey("RSA", publish=False)
    v = verifier(oidc_issuer)
    err = await refused(v, oidc_issuer.mint("mallory", kid=hidden))
    assert err.reason == "token signed with an unknown key"
    oidc_issuer.publish(hidden)
    assert (await v.verify(oidc_issuer.mint("mallory", kid=hidden))).subject == "mallory"


@pytest_twisted.ensureDeferred
async def test_alg_none_is_refused(oidc_issuer):
    claims = oidc_issuer.claims("mallory")
    for alg in ("none", "None", "NONE"):
        token = forge({"alg": alg, "kid": oidc_issuer.kid("RSA")}, claims)
        err = await refused(verifier(oidc_issuer), token)
        assert "not accepted" in err.reason
        assert err.claimed == "mallory"
    assert oidc_issuer.jwksFetches == 0, "an unacceptable alg is refused before any fetch"


@pytest_twisted.ensureDeferred
async def test_hs256_signed_with_the_public_key_is_refused(oidc_issuer):
    kid = oidc_issuer.kid("RSA")
    claims = oidc_issuer.claims("mallory", groups=["admins"])
    v = verifier(oidc_issuer)
    await v.verify(oidc_issuer.mint("alice"))
    for secret in (oidc_issuer.publicPEM(kid), oidc_issuer.key(kid).as_der(private=False)):
        err = await refused(v, forgeHS256({"alg": "HS256", "kid": kid}, claims, secret))
        assert "'HS256' is not accepted" in err.reason


@pytest_twisted.ensureDeferred
async def test_alg_that_does_not_match_key_type_is_refused(oidc_issuer):
    # An ES256 header pointing at the RSA key must not be tried against it.
    ecToken = oidc_issuer.mint("mallory", kid=oidc_issuer.kid("EC"))
    header, payload, sig = ecToken.split(".")
    from tests.harness.oidc import b64url

    rsaKid = oidc_issuer.kid("RSA")
    swapped = b64url(f'{{"alg":"ES256","kid":"{rsaKid}"}}'.encode())
    err = await refused(verifier(oidc_issuer), f"{swapped}.{payload}.{sig}")
    assert "does not match" in err.reason


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("kind", ["RSA", "EC", "OKP"])
async def test_tampered_signature_or_payload_is_refused(oidc_issuer, kind):
    v = verifier(oidc_issuer)
    token = oidc_issuer.mint("alice", ["eng"], kid=oidc_issuer.kid(kind))
    header, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    err = await refused(v, f"{header}.{payload}.{flipped}")
    assert err.reason == "token signature is invalid"
    other = oidc_issuer.mint("alice", ["eng", "admins"], kid=oidc_issuer.kid(kind))
    err = await refused(v, f"{header}.{other.split('.')[1]}.{sig}")
    assert err.reason == "token signature is invalid"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("junk", ["", "abc", "a.b", "a.b.c", "sgk_x_y", "x" * 20000])
async def test_malformed_tokens_are_refused_without_fetching(oidc_issuer, junk):
    err = await refused(verifier(oidc_issuer), junk)
    assert err.claimed is None
    assert oidc_issuer.jwksFetches == 0


@pytest_twisted.ensureDeferred
async def test_groups_from_configured_claim_and_subject_claim(oidc_issuer):
    v = OIDCVerifier(oidc_issuer.issuer, "sealgate", "roles", "preferred_username", 60, 0)
    token = oidc_issuer.mint("uuid-1", roles=["dba"], preferred_username="alice@example.com")
    identity = await v.verify(token)
    assert identity.subject == "alice@example.com"
    assert identity.groups == frozenset({"dba"})
    err = await refused(v, oidc_issuer.mint("uuid-2", roles="not-a-list", preferred_username=None))
    assert err.claimed == "uuid-2"


@pytest_twisted.ensureDeferred
async def test_concurrent_first_verifications_share_one_fetch(oidc_issuer):
    from twisted.internet import defer

    v = verifier(oidc_issuer)
    tokens = [oidc_issuer.mint(f"user{i}") for i in range(5)]
    results = await defer.gatherResults([v.verify(t) for t in tokens])
    assert [r.subject for r in results] == [f"user{i}" for i in range(5)]
    assert oidc_issuer.jwksFetches == 1


@pytest_twisted.ensureDeferred
async def test_unreachable_issuer_fails_closed_with_a_safe_reason(oidc_issuer):
    token = oidc_issuer.mint("alice")
    v = OIDCVerifier("http://127.0.0.1:1/nowhere", "sealgate", "groups", "sub", 60, 0, timeout=5)
    err = await refused(v, token)
    assert err.reason == "identity provider unavailable; try again"


@pytest_twisted.ensureDeferred
async def test_discovery_naming_another_issuer_is_refused(oidc_issuer):
    # Same server, but configured with a trailing slash: OIDC requires an exact match.
    v = OIDCVerifier(oidc_issuer.issuer + "/", "sealgate", "groups", "sub", 60, 0)
    err = await refused(v, oidc_issuer.mint("alice"))
    assert err.reason == "identity provider unavailable; try again"


@pytest_twisted.ensureDeferred
async def test_failed_fetch_backs_off_instead_of_fetching_per_login(oidc_issuer):
    from twisted.internet import reactor
    from twisted.web.client import Agent

    class CountingAgent:
        def __init__(self):
            self.calls = 0
            self.agent = Agent(reactor)

        def request(self, *a, **kw):
            self.calls += 1
            return self.agent.request(*a, **kw)

    agent = CountingAgent()
    v = OIDCVerifier("http://127.0.0.1:1/down", "sealgate", "groups", "sub", 60, 30, agent=agent)
    token = oidc_issuer.mint("alice")
    for _ in range(3):
        err = await refused(v, token)
        assert err.reason == "identity provider unavailable; try again"
    assert agent.calls == 1
