"""Fixtures for real backends; the logic lives in tests/harness."""

import pytest
import pytest_twisted


@pytest.fixture
def oidc_issuer():
    """A local OIDC issuer (discovery + JWKS on loopback); see L{OIDCIssuer}."""
    from tests.harness.oidc import OIDCIssuer

    issuer = OIDCIssuer().start()
    yield issuer
    pytest_twisted.blockon(issuer.stop())
