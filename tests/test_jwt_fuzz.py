"""Whatever arrives as a credential, the identity code answers only with AuthenticationFailed."""

import base64
import json

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.identity import AuthenticationFailed
from sealgate.identity.apikeys import APIKeyStore
from sealgate.identity.oidc import OIDCVerifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)

headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "EdDSA", "HS256", "none", "PS256", ""]) | jsonValues},
    optional={"kid": st.text(max_size=10) | jsonValues, "crit": jsonValues, "typ": jsonValues})

tokens = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.tuples(headers, jsonValues, st.binary(max_size=80)).map(
        lambda t: ".".join([b64(json.dumps(t[0]).encode()), b64(json.dumps(t[1]).encode()),
                            b64(t[2])])),
    st.tuples(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30)).map(".".join),
)


@pytest_twisted.ensureDeferred
async def test_arbitrary_tokens_are_refused_cleanly(oidc_issuer):
    verifier = OIDCVerifier(oidc_issuer.issuer, "sealgate", "groups", "sub", 60, 3600)
    await verifier.refresh()
    seen = []
    # Also headers naming real keys, so the signature check itself gets junk.
    realKid = st.fixed_dictionaries({
        "alg": st.sampled_from(["RS256", "ES256", "EdDSA", "Ed25519"]),
        "kid": st.sampled_from(sorted(oidc_issuer.keys))})
    forged = st.tuples(realKid, jsonValues | st.just(oidc_issuer.claims()),
                       st.binary(max_size=300)).map(
        lambda t: ".".join([b64(json.dumps(t[0]).encode()), b64(json.dumps(t[1]).encode()),
                            b64(t[2])]))

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(tokens | forged)
    def collect(token):
        seen.append(token)

    collect()
    for token in seen:
        d = verifier.verify(token)
        # With keys cached, a refusal needs no I/O: the Deferred has already fired.
        assert d.called
        with pytest.raises(AuthenticationFailed):
            await d


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=120) | st.text(max_size=60).map(lambda s: "sgk_" + s))
def test_arbitrary_api_keys_are_refused_cleanly(tmp_path_factory, key):
    store = _store(tmp_path_factory)
    with pytest.raises(AuthenticationFailed):
        store.verify(key)


_stores: dict = {}


def _store(factory) -> APIKeyStore:
    if "s" not in _stores:
        _stores["s"] = APIKeyStore(factory.mktemp("keys") / "identity.sqlite")
        _stores["s"].create("real", ["g"], None)
    return _stores["s"]
