"""The postgres plugin's contract and its option checking."""

import pytest
from zope.interface.verify import verifyObject

from sealgate.config import ConfigError, Where
from sealgate.interfaces import IProtocolPlugin
from sealgate.protocols.postgres.plugin import plugin

WHERE = Where("gw.toml", "connections[0] (app).options")


def test_plugin_provides_the_interface():
    assert verifyObject(IProtocolPlugin, plugin)
    assert plugin.name == "postgres"


def test_password_is_resolved_and_kept_out_of_repr(monkeypatch):
    monkeypatch.setenv("PG_TEST_PW", "s3cret-value")
    opts = plugin.parseOptions({"database": "app", "username": "u", "password_env": "PG_TEST_PW"}, WHERE)
    assert opts.password == "s3cret-value"
    assert "s3cret-value" not in repr(opts)


@pytest.mark.parametrize("options, message", [
    ({"username": "u"}, "database: is missing"),
    ({"database": "d", "username": "u", "backend_tls": "maybe"}, "unknown mode 'maybe'"),
    ({"database": "d", "username": "u", "backend_tls": "verify-full"}, "backend_ca"),
    ({"database": "d", "username": "u", "tls_cert": "/x.pem"}, "needs both tls_cert and tls_key"),
    ({"database": "d", "username": "u", "require_tls": True}, "no certificate"),
    ({"database": "d", "username": "u", "password_env": "PG_TEST_UNSET_VAR"}, "is not set"),
    ({"database": "d", "username": "u", "colour": "red"}, "colour: unknown key"),
])
def test_bad_options_name_the_key_and_the_fix(options, message):
    with pytest.raises(ConfigError) as e:
        plugin.parseOptions(options, WHERE)
    assert message in str(e.value)
    assert "connections[0] (app).options" in str(e.value)
