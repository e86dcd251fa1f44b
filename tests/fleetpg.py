"""Fresh fleet databases on the test PostgreSQL, as libpq URLs (for the fleet tests)."""

import secrets
import urllib.parse


def fleetDatabase(postgres) -> str:
    """A new empty database on C{postgres}; returns its postgresql:// URL (superuser)."""
    name = "fleet_" + secrets.token_hex(4)
    postgres.psql(f"CREATE DATABASE {name}")
    password = urllib.parse.quote(postgres.password(postgres.superuser), safe="")
    return f"postgresql://{postgres.superuser}:{password}@{postgres.host}:{postgres.port}/{name}"
