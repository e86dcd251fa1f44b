"""Config validation: every kind of mistake gets one message naming file, key and fix."""

import sys
import textwrap
from pathlib import Path

import pytest

from sealgate.config import ConfigError, loadConfig, parseDuration, parseSize

sys.path.insert(0, str(Path(__file__).parent / "plugins_oot"))
import linegate  # noqa: E402

PLUGINS = {"line": linegate.plugin}

GOOD = """
[gateway]
state_dir = "{state}"
admin = "tcp:0:interface=127.0.0.1"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["echo"]

[[connections]]
name = "echo"
protocol = "line"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port=7"

[[rules]]
name = "no-rm"
action = "deny"
commands = ["^rm "]

[masking]
detectors = ["credit_card"]
"""


def load(tmp_path, text):
    path = tmp_path / "sealgate.toml"
    path.write_text(textwrap.dedent(text).replace("{state}", str(tmp_path / "state")))
    return path, loadConfig(path, PLUGINS)


def error(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    message = str(e.value)
    assert message.startswith(str(tmp_path / "sealgate.toml") + ": ")
    assert "Traceback" not in message
    return message


def test_good_config_parses(tmp_path):
    _, cfg = load(tmp_path, GOOD)
    assert [c.name for c in cfg.connections] == ["echo"]
    assert cfg.connection("echo").options == {"greeting": ""}
    assert cfg.rules[0].matchers == {"commands": ("^rm ",)}
    assert cfg.gateway.state_dir == tmp_path / "state"


def test_unknown_key_names_the_table_and_the_known_keys(tmp_path):
    m = error(tmp_path, GOOD.replace('admin = "tcp', 'admni = "x"\nadmin = "tcp'))
    assert "gateway.admni: unknown key" in m
    assert "did you mean 'admin'?" in m and "valid keys: admin" in m


def test_wrong_type(tmp_path):
    m = error(tmp_path, GOOD.replace('groups = ["eng"]', 'groups = 3'))
    assert "roles[0].groups: must be a list of strings" in m and "fix:" in m


def test_unknown_protocol_lists_installed_ones(tmp_path):
    m = error(tmp_path, GOOD.replace('protocol = "line"', 'protocol = "mysql"'))
    assert "connections[0] (echo).protocol: unknown protocol 'mysql'" in m
    assert "line" in m.split("fix:")[1]


def test_missing_secret_names_the_variable_not_a_value(tmp_path, monkeypatch):
    from sealgate.config import Table, Where, resolveSecret

    monkeypatch.delenv("NO_SUCH_SECRET_VAR", raising=False)
    t = Table({"password_env": "NO_SUCH_SECRET_VAR"}, Where("x.toml", "connections[0].options"))
    with pytest.raises(ConfigError) as e:
        resolveSecret(t, "password")
    assert str(e.value).startswith("x.toml: connections[0].options.password_env: ")
    assert "NO_SUCH_SECRET_VAR is not set" in str(e.value)
    monkeypatch.setenv("NO_SUCH_SECRET_VAR", "s3cret-value")
    assert resolveSecret(Table({"password_env": "NO_SUCH_SECRET_VAR"}, t.where), "password") == "s3cret-value"


def test_duplicate_connection_name(tmp_path):
    dup = GOOD + GOOD[GOOD.index("[[connections]]"):GOOD.index("[[rules]]")]
    m = error(tmp_path, dup)
    assert "connections[1].name: duplicate connection name 'echo'" in m


def test_unparseable_endpoint(tmp_path):
    m = error(tmp_path, GOOD.replace('backend = "tcp:host=127.0.0.1:port=7"', 'backend = "127.0.0.1:5432"'))
    assert "connections[0] (echo).backend: cannot parse endpoint '127.0.0.1:5432'" in m
    assert 'e.g. "tcp:host=127.0.0.1:port=5432"' in m


def test_rule_naming_an_unknown_connection(tmp_path):
    m = error(tmp_path, GOOD.replace('action = "deny"', 'action = "deny"\nconnections = ["db"]'))
    assert "rules[0] (no-rm).connections: no connection named 'db'" in m


def test_bad_regex_and_action(tmp_path):
    assert "bad regular expression" in error(tmp_path, GOOD.replace('"^rm "', '"(rm"'))
    assert "unknown action 'block'" in error(tmp_path, GOOD.replace('"deny"', '"block"'))


def test_approve_rule_needs_approvers(tmp_path):
    m = error(tmp_path, GOOD.replace('action = "deny"', 'action = "approve"'))
    assert "rules[0] (no-rm).approvers: an approve rule needs approver groups" in m


def test_unknown_detector(tmp_path):
    m = error(tmp_path, GOOD.replace('["credit_card"]', '["credit_card", "dna"]'))
    assert "masking.detectors: unknown detector 'dna'" in m and "email" in m


def test_unknown_content_setting(tmp_path):
    m = error(tmp_path, GOOD + 'unknown_content = "maybe"\n')
    assert "masking.unknown_content: unknown value 'maybe'" in m and "mask, refuse, pass" in m
    _, cfg = load(tmp_path, GOOD + 'unknown_content = "pass"\n')
    assert cfg.masking.unknown_content == "pass"


def test_toml_syntax_error(tmp_path):
    assert "not valid TOML" in error(tmp_path, GOOD + "\n[broken\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        loadConfig(tmp_path / "nope.toml", PLUGINS)


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("30d", 2592000),
                                          (15, 15), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parseDuration(text) == seconds


def test_bad_duration(tmp_path):
    m = error(tmp_path, GOOD.replace('admin = "tcp', 'drain_timeout = "soon"\nadmin = "tcp'))
    assert "gateway.drain_timeout: is not a duration" in m


@pytest.mark.parametrize("text,size", [("64MiB", 64 << 20), ("512KiB", 512 << 10), ("1GiB", 1 << 30),
                                       ("2MB", 2_000_000), (1048576, 1 << 20), ("1.5 MiB", 3 << 19)])
def test_sizes(text, size):
    assert parseSize(text) == size


def test_store_bounds_default_and_are_read(tmp_path):
    _, cfg = load(tmp_path, GOOD)
    assert (cfg.gateway.max_unsealed, cfg.gateway.store_timeout) == (64 << 20, 10.0)
    _, cfg = load(tmp_path, GOOD.replace('admin = "tcp', 'max_unsealed = "8MiB"\nstore_timeout = "30s"\nadmin = "tcp'))
    assert (cfg.gateway.max_unsealed, cfg.gateway.store_timeout) == (8 << 20, 30.0)


@pytest.mark.parametrize("line,says", [
    ('max_unsealed = "lots"', ["gateway.max_unsealed: is not a size: 'lots'", 'fix: write a number of bytes or e.g. "64MiB"']),
    ('max_unsealed = "10KiB"', ["gateway.max_unsealed: must be at least 1,048,576 bytes, not 10,240", "fix: raise it"]),
    ("max_unsealed = true", ["gateway.max_unsealed: is not a size: True"]),
    ('store_timeout = "0s"', ["gateway.store_timeout: must be more than 0 s, not 0", "fix:"]),
    ('store_timeout = "whenever"', ["gateway.store_timeout: is not a duration"]),
])
def test_bad_store_bounds_name_the_file_the_key_and_the_fix(tmp_path, line, says):
    m = error(tmp_path, GOOD.replace('admin = "tcp', f'{line}\nadmin = "tcp'))
    for text in says:
        assert text in m
