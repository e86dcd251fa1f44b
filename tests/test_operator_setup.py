"""What an operator meets first: the sample config's blocks work as shipped, the CLI needs no backend secret."""

import json
import os
import re
import signal
import subprocess

import pytest

from tests.harness.twistd import REPO, GatewayProcess, environment, runCLI

SAMPLE = REPO / "config" / "sealgate.toml"


def uncommented(marker: str, text: str | None = None) -> str:
    """
    The sample with the connection block under C{marker} uncommented the way
    its comment says: strip one "# " from each line of the block (its
    "# # key = default" lines stay commented).
    """
    lines = (text if text is not None else SAMPLE.read_text()).splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    i = start + 1
    while not lines[i].startswith("# [[connections]]"):
        i += 1
    while i < len(lines) and lines[i].startswith("# "):
        lines[i] = lines[i][2:]
        i += 1
    return "\n".join(lines) + "\n"


def withLoopbackPorts(text: str) -> str:
    """The OS picks the admin and listen ports, as every test does."""
    text = text.replace('admin = "tcp:8700:interface=127.0.0.1"', 'admin = "tcp:0:interface=127.0.0.1"')
    return re.sub(r'listen = "tcp:\d+:interface=127\.0\.0\.1"', 'listen = "tcp:0:interface=127.0.0.1"',
                  text)


def noSecrets() -> dict:
    env = environment()
    for k in list(env):
        if k.endswith(("_PASSWORD", "_TOKEN", "_SECRET", "_KEY")):
            del env[k]
    return env


@pytest.mark.parametrize("marker", ["--- PostgreSQL", "--- SSH", "--- HTTP"])
def test_each_sample_connection_block_passes_config_check_once_uncommented(tmp_path, marker):
    text = uncommented(marker)
    if marker == "--- SSH":
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (tmp_path / "known_hosts").write_text("127.0.0.1 " + (tmp_path / "id_ed25519.pub")
                                              .read_text().rsplit(" ", 1)[0] + "\n")
        text = (text.replace("/etc/sealgate/keys/deploy_ed25519", str(key))
                .replace("/etc/sealgate/known_hosts", str(tmp_path / "known_hosts")))
    cfg = tmp_path / "sealgate.toml"
    cfg.write_text(text)
    r = runCLI("config", "check", "--config", str(cfg), "--no-secrets", "--json",
               env=noSecrets(), cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and len(out["connections"]) == 1


def test_config_check_names_the_file_key_and_fix_and_exits_1(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(SAMPLE.read_text().replace("[masking]", "[masking]\ndetector = []"))
    r = runCLI("config", "check", "--config", str(cfg), env=noSecrets(), check=False)
    assert r.returncode == 1
    assert f"{cfg}: masking.detector: unknown key" in r.stderr
    assert "did you mean 'detectors'?" in r.stderr and "Traceback" not in r.stderr


def test_unknown_rule_key_suggests_the_nearest_matcher(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(SAMPLE.read_text().replace('statements = ["DROP", "TRUNCATE"]',
                                              'statement = ["DROP", "TRUNCATE"]'))
    r = runCLI("config", "check", "--config", str(cfg), env=noSecrets(), check=False)
    assert r.returncode == 1
    assert "rules[0] (no-drop).statement: unknown key" in r.stderr
    # The nearest valid key is a matcher the rule did not use.
    assert "did you mean 'statements'?" in r.stderr


def test_a_misspelt_approver_group_is_a_warning_naming_the_rule(tmp_path):
    cfg = tmp_path / "warn.toml"
    cfg.write_text(SAMPLE.read_text() + '\n[[roles]]\nname = "leads"\ngroups = ["leads"]\n'
                   'connections = ["*"]\n\n[[rules]]\nname = "deletes-need-a-lead"\n'
                   'action = "approve"\nstatements = ["DELETE"]\napprovers = ["laeds"]\n')
    r = runCLI("config", "check", "--config", str(cfg), env=noSecrets(), check=False)
    assert r.returncode == 0
    assert "(deletes-need-a-lead).approvers" in r.stderr
    assert "'laeds'" in r.stderr and "did you mean 'leads'?" in r.stderr


def test_version_prints_the_installed_version():
    r = runCLI("--version", env=noSecrets())
    assert re.fullmatch(r"sealgate \S+\n", r.stdout)


def test_readme_run_command_with_the_sample_postgres_block_logs_in_with_psql(tmp_path, postgres):
    """
    The README's run command (twistd -n --pidfile= sealgate --config
    config/sealgate.toml) with the sample's postgres block uncommented and
    aimed at the test server; the operator's own CLI calls need no backend
    secret; psql logs in with the API key as its password.
    """
    user = "app_scram"
    text = withLoopbackPorts(uncommented("--- PostgreSQL"))
    text = (text.replace('backend = "tcp:host=127.0.0.1:port=5432"',
                         f'backend = "{postgres.endpoint}"')
            .replace('username = "app_rw"', f'username = "{user}"'))
    (tmp_path / "config").mkdir()
    gw = GatewayProcess(tmp_path, text)
    gw.config = tmp_path / "config" / "sealgate.toml"
    gw.config.write_text(text)
    gw.env["APP_DB_PASSWORD"] = postgres.password(user)
    gw.start()
    try:
        # The README's key command, with no backend secret in the environment.
        key = runCLI("--config", str(gw.config), "keys", "create", "--name", "me", "--group", "eng",
                     env=noSecrets(), cwd=tmp_path).stdout.strip().splitlines()[-1]
        env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
        r = subprocess.run([postgres._bin("psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
                            "-p", str(gw.port("app-db")), "-U", "me", "-d", "app-db",
                            "-c", "select current_user, count(*) from customers"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"{user}|3"
        # And the store commands read the state dir without the secret too.
        listed = runCLI("--config", str(gw.config), "sessions", "list", env=noSecrets(),
                        cwd=tmp_path, check=False)
        assert listed.returncode == 0, listed.stderr
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    assert postgres.password(user) not in gw.log()


def test_approvals_find_the_running_gateway_without_a_config(tmp_path):
    text = withLoopbackPorts(SAMPLE.read_text())
    gw = GatewayProcess(tmp_path, text).start()
    try:
        key = gw.cli("keys", "create", "--name", "lead", "--group", "eng").stdout.strip().splitlines()[-1]
        env = noSecrets()
        env.pop("SEALGATE_CONFIG", None)
        # Run where the gateway runs (its state dir is ./var/sealgate), as the
        # hold notice's "sealgate approvals approve ID" is meant to be.
        r = runCLI("approvals", "list", "--json", env=env, token=key, cwd=tmp_path, check=False)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == []
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        r = runCLI("approvals", "list", env=env, token=key, cwd=elsewhere, check=False)
        assert r.returncode == 2
        assert "no running gateway found" in r.stderr and "--admin-url" in r.stderr
    finally:
        assert gw.stop(signal.SIGTERM) == 0


def _complete(script: str, line: str) -> list[str]:
    words = line.split(" ")
    program = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
               f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT={len(line)}; "
               "_shtab_sealgate; printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completion_completes_commands_and_their_actions(tmp_path):
    script = tmp_path / "sealgate.bash"
    script.write_text(runCLI("completion", "bash", env=noSecrets()).stdout)
    assert "keys" in _complete(str(script), "sealgate ke")
    assert set(_complete(str(script), "sealgate keys ")) >= {"create", "list", "revoke"}
    assert "check" in _complete(str(script), "sealgate config ")
