"""How the gateway reaches its OIDC issuer: a private CA in oidc_ca_file, plain http only on loopback or when allowed."""

import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from sealgate.config import ConfigError, parseConfig
from sealgate.testing import startGateway
from tests.harness.oidc import OIDCIssuer


def identity(text: str, path="/etc/sealgate.toml"):
    import tomllib

    return parseConfig(tomllib.loads(text), path, {}).identity


def test_a_plain_http_issuer_off_loopback_is_refused_naming_the_key_and_the_fix():
    with pytest.raises(ConfigError) as e:
        identity('[identity]\noidc_issuer = "http://login.example.com/realms/x"\n')
    assert str(e.value).startswith("/etc/sealgate.toml: identity.oidc_issuer: ")
    assert "plain http on a non-loopback host" in str(e.value)
    assert "fix: use the issuer's https:// URL" in str(e.value)
    for loopback in ("http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]:9/x"):
        assert identity(f'[identity]\noidc_issuer = "{loopback}"\n').oidc_issuer == loopback
    allowed = identity('[identity]\noidc_issuer = "http://login.lab/x"\n'
                       "allow_insecure_issuer = true\n")
    assert allowed.allow_insecure_issuer and allowed.oidc_issuer == "http://login.lab/x"


def test_an_unreadable_or_non_pem_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as e:
        identity(f'[identity]\noidc_ca_file = "{tmp_path}/missing.pem"\n')
    assert "identity.oidc_ca_file: cannot read" in str(e.value) and "fix:" in str(e.value)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as e:
        identity(f'[identity]\noidc_ca_file = "{tmp_path}/junk.pem"\n')
    assert "holds no PEM certificate" in str(e.value)


def _config(issuer, http_backend, ca=None, extra=""):
    return f"""
[identity]
oidc_issuer = "{issuer}"
{f'oidc_ca_file = "{ca}"' if ca else ''}
{extra}

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "api"
protocol = "http"
listen = "tcp:0:interface=127.0.0.1"
backend = "{http_backend.endpoint}"
"""


def _curl(port, token):
    return subprocess.run(["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code}",
                           "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}/json"],
                          capture_output=True, text=True, timeout=60).stdout


@pytest_twisted.ensureDeferred
async def test_a_private_issuer_ca_in_oidc_ca_file_lets_curl_in_with_a_token(tmp_path, http_backend):
    issuer = OIDCIssuer(tlsDirectory=tmp_path).start()
    try:
        assert issuer.issuer.startswith("https://")
        g = await startGateway(_config(issuer.issuer, http_backend, issuer.tls.caFile),
                               tmp_path / "trusting")
        try:
            token = issuer.mint(sub="alice", groups=["eng"])
            assert await threads.deferToThread(_curl, g.port("api"), token) == "200"
            assert issuer.jwksFetches >= 1
        finally:
            await g.stop()
        # The same issuer without its CA: the system roots do not know it.
        g = await startGateway(_config(issuer.issuer, http_backend), tmp_path / "untrusting")
        try:
            assert await threads.deferToThread(_curl, g.port("api"), issuer.mint()) == "401"
        finally:
            await g.stop()
    finally:
        await issuer.stop()


@pytest_twisted.ensureDeferred
async def test_allow_insecure_issuer_is_logged_once_at_start(tmp_path, http_backend, logs):
    g = await startGateway(_config("http://login.lab.invalid/x", http_backend,
                                   extra="allow_insecure_issuer = true"), tmp_path)
    await g.stop()
    warned = [line for line in logs if "is plain http (allow_insecure_issuer)" in line]
    assert len(warned) == 1 and "login.lab.invalid" in warned[0]
