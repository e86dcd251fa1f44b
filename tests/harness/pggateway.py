"""sealgate configs for tests that put a gateway in front of the test PostgreSQL."""

import os

from tests.harness.postgres import SCRAM_USER

PASSWORD_ENV = "SEALGATE_TEST_PG_PASSWORD"


def gatewayConfig(postgres, policy: str, connections=("app",), database: str = "app") -> str:
    """
    One role for group eng on every connection; each connection a postgres
    listener on an OS-picked loopback port in front of C{database} as
    app_scram; then C{policy} (rules, masking).  Sets the password variable.
    """
    os.environ[PASSWORD_ENV] = postgres.password(SCRAM_USER)
    text = '[[roles]]\nname = "eng"\ngroups = ["eng"]\nconnections = ["*"]\n'
    for name in connections:
        text += f"""
[[connections]]
name = "{name}"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={postgres.port}"
[connections.options]
database = "{database}"
username = "{SCRAM_USER}"
password_env = "{PASSWORD_ENV}"
allow_cleartext_on_loopback = true
"""
    return text + policy


def clientDSN(gateway, key: str, connection: str = "app") -> str:
    """A libpq DSN for the identity with API key C{key} through C{gateway}."""
    return (f"host=127.0.0.1 port={gateway.port(connection)} user=ci-bot dbname={connection} "
            f"password={key} sslmode=disable connect_timeout=20")
