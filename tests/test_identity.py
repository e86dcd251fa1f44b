"""API keys, the identity service and `sealgate keys`, against real SQLite, issuer and CLI."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from sealgate.config import IdentityConfig
from sealgate.identity import AuthenticationFailed, Identity
from sealgate.identity.apikeys import APIKeyError, APIKeyStore
from sealgate.identity.service import KEYS_FILE, IdentityService


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return APIKeyStore(tmp_path / "state" / KEYS_FILE, clock=clock)


def refusal(store, key) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as info:
        store.verify(key)
    assert len(key) < 8 or key not in f"{info.value} {info.value.claimed}"
    return info.value


def test_created_key_verifies_to_its_identity(store):
    key = store.create("ci-deploy", ["deployers", "ci"], None)
    assert key.startswith("sgk_")
    assert store.verify(key) == Identity("ci-deploy", {"deployers", "ci"}, "apikey", "sealgate")


def test_keys_are_random_and_carry_256_bits(store):
    a = store.create("a", ["g"], None)
    b = store.create("b", ["g"], None)
    assert a != b
    secret = a.split("_", 2)[2]
    assert len(secret) == 43  # base64url of 32 bytes


def test_store_file_is_private_and_holds_no_key(store, tmp_path):
    key = store.create("ci-deploy", ["deployers"], None)
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode == 0o600
    raw = b"".join(p.read_bytes() for p in store.path.parent.iterdir())
    assert key.split("_", 2)[2].encode() not in raw
    assert b"ci-deploy" in raw  # the file is the store we think it is


def test_wrong_secret_and_unknown_key_are_refused(store):
    key = store.create("ci-deploy", ["deployers"], None)
    prefix, keyId, secret = key.split("_", 2)
    forged = f"{prefix}_{keyId}_{'A' * 43}"
    err = refusal(store, forged)
    assert err.reason == "unknown API key"
    assert err.claimed == "ci-deploy"
    err = refusal(store, f"sgk_{'0' * 16}_{secret}")
    assert err.reason == "unknown API key" and err.claimed is None
    for junk in ("sgk_", "sgk_zz_zz", key + "x", key[:-1], ""):
        assert refusal(store, junk).reason == "unknown API key"


def test_expired_key_is_refused(store, clock):
    key = store.create("nightly", ["ci"], 3600)
    assert store.verify(key).subject == "nightly"
    clock.now += 3599
    assert store.verify(key).subject == "nightly"
    clock.now += 1
    err = refusal(store, key)
    assert err.reason == "API key expired"
    assert err.claimed == "nightly"


def test_revoked_key_is_refused_and_name_can_be_reused(store):
    old = store.create("ci-deploy", ["deployers"], None)
    with pytest.raises(APIKeyError, match="active key named 'ci-deploy' exists"):
        store.create("ci-deploy", ["deployers"], None)
    assert store.revoke("ci-deploy") == 1
    assert refusal(store, old).reason == "API key revoked"
    new = store.create("ci-deploy", ["deployers"], None)
    assert store.verify(new).subject == "ci-deploy"
    assert refusal(store, old).reason == "API key revoked"
    with pytest.raises(APIKeyError):
        store.revoke("nobody")


def test_list_shows_state_and_last_use_never_the_key(store, clock):
    a = store.create("a", ["g1"], None)
    store.create("b", ["g2", "g3"], 60)
    store.create("c", ["g4"], None)
    store.revoke("c")
    clock.now += 10
    store.verify(a)
    clock.now += 100
    infos = {i.name: i for i in store.list()}
    assert infos["a"].lastUsed == clock.now - 100
    assert infos["b"].lastUsed is None
    assert infos["b"].groups == ("g2", "g3")
    assert {n: i.status(clock.now) for n, i in infos.items()} == {
        "a": "active", "b": "expired", "c": "revoked"}
    text = json.dumps([i.asDict(clock.now) for i in infos.values()])
    assert a.split("_", 2)[2] not in text


def test_bad_create_arguments_are_refused(store):
    for name, groups, expires in [("", ["g"], None), ("x y", ["g"], None), ("ok", [], None),
                                  ("ok", ["a,b"], None), ("ok", ["g"], 0)]:
        with pytest.raises(APIKeyError):
            store.create(name, groups, expires)


def test_store_is_usable_from_another_thread(store):
    from concurrent.futures import ThreadPoolExecutor

    key = store.create("t", ["g"], None)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(store.verify, [key] * 8))
    assert {r.subject for r in results} == {"t"}


# -- the service -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_service_checks_api_keys_and_tokens(tmp_path, oidc_issuer):
    config = IdentityConfig(oidc_issuer=oidc_issuer.issuer, oidc_audience="sealgate",
                            jwks_min_refresh=0)
    service = IdentityService(config, tmp_path)
    key = service.keys.create("ci-deploy", ["deployers"], None)
    assert (await service.authenticate(key)).method == "apikey"
    identity = await service.authenticate("Bearer " + oidc_issuer.mint("alice", ["eng"]))
    assert identity == Identity("alice", {"eng"}, "oidc", oidc_issuer.issuer)
    with pytest.raises(AuthenticationFailed, match="unknown API key"):
        await service.authenticate(key[:-2] + "xx")
    with pytest.raises(AuthenticationFailed, match="audience"):
        await service.authenticate(oidc_issuer.mint("alice", aud="other"))
    assert (tmp_path / KEYS_FILE).exists()


@pytest_twisted.ensureDeferred
async def test_service_start_warms_the_jwks_cache_and_survives_an_outage(tmp_path, oidc_issuer):
    config = IdentityConfig(oidc_issuer=oidc_issuer.issuer, jwks_min_refresh=3600)
    service = IdentityService(config, tmp_path)
    await service.start()
    await service.warmed
    assert oidc_issuer.jwksFetches == 1
    assert (await service.authenticate(oidc_issuer.mint("alice"))).subject == "alice"
    assert oidc_issuer.jwksFetches == 1
    await service.stop()

    down = IdentityService(IdentityConfig(oidc_issuer="http://127.0.0.1:1/x"), tmp_path)
    await down.start()
    await down.warmed
    key = down.keys.create("svc", ["g"], None)
    assert (await down.authenticate(key)).subject == "svc"
    await down.stop()


@pytest_twisted.ensureDeferred
async def test_service_without_issuer_refuses_tokens(tmp_path, oidc_issuer):
    service = IdentityService(IdentityConfig(), tmp_path)
    with pytest.raises(AuthenticationFailed, match="no OIDC issuer"):
        await service.authenticate(oidc_issuer.mint("alice"))
    with pytest.raises(AuthenticationFailed, match="no credential"):
        await service.authenticate("  ")


# -- the CLI -----------------------------------------------------------------


def sealgate(*args, env=None) -> subprocess.CompletedProcess:
    """The real `sealgate` command, from the same source tree these tests import."""
    import sealgate as package

    source = str(Path(package.__file__).resolve().parents[1])
    argv = [sys.executable, "-c", "import sys; from sealgate.cli.main import main; sys.exit(main())"]
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environ.get("PYTHONPATH")]))
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=60,
                          env=environ)


def test_cli_create_prints_key_on_last_line_and_list_never_shows_it(tmp_path):
    state = str(tmp_path / "state")
    out = sealgate("keys", "create", "--state-dir", state, "--name", "ci-deploy",
                   "--group", "deployers", "--group", "ci", "--expires", "30d")
    assert out.returncode == 0, out.stderr
    key = out.stdout.splitlines()[-1]
    assert key.startswith("sgk_") and " " not in key
    identity = APIKeyStore(Path(state) / KEYS_FILE).verify(key)
    assert identity == Identity("ci-deploy", {"deployers", "ci"}, "apikey", "sealgate")

    listed = sealgate("keys", "list", "--state-dir", state)
    assert listed.returncode == 0
    assert "ci-deploy" in listed.stdout and "deployers,ci" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout
    rows = json.loads(sealgate("keys", "list", "--json", "--state-dir", state).stdout)
    assert rows[0]["name"] == "ci-deploy" and rows[0]["status"] == "active"
    assert 29.9 * 86400 < rows[0]["expires"] - rows[0]["created"] <= 30 * 86400

    assert sealgate("keys", "revoke", "--state-dir", state, "ci-deploy").returncode == 0
    with pytest.raises(AuthenticationFailed, match="revoked"):
        APIKeyStore(Path(state) / KEYS_FILE).verify(key)
    again = sealgate("keys", "revoke", "--state-dir", state, "ci-deploy")
    assert again.returncode == 2
    assert "no unrevoked key named 'ci-deploy'" in again.stderr
    assert "Traceback" not in again.stderr


def test_cli_finds_state_dir_through_config(tmp_path):
    state = tmp_path / "from-config"
    config = tmp_path / "sealgate.toml"
    config.write_text(f'[gateway]\nstate_dir = "{state}"\n')
    out = sealgate("keys", "create", "--name", "svc", "--group", "g",
                   env={"SEALGATE_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr
    assert APIKeyStore(state / KEYS_FILE).verify(out.stdout.splitlines()[-1]).subject == "svc"
    out = sealgate("--config", str(config), "keys", "list")
    assert "svc" in out.stdout


def test_cli_bad_duration_is_one_line_error(tmp_path):
    out = sealgate("keys", "create", "--state-dir", str(tmp_path), "--name", "x",
                   "--group", "g", "--expires", "soon")
    assert out.returncode == 2
    assert "--expires 'soon' is not a duration" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
