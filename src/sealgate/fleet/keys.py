"""API keys and SSH keys in the fleet database: one `sealgate keys create` serves every node."""

from contextlib import contextmanager
from pathlib import Path

from zope.interface import implementer

from sealgate.fleet.interfaces import IAPIKeyStore, ISSHKeyStore
from sealgate.fleet.pgsync import SyncDB
from sealgate.identity.apikeys import APIKeyStore
from sealgate.identity.sshkeys import SSHKeyStore

KEYS_FILE = "identity.sqlite"


@implementer(IAPIKeyStore)
class PGAPIKeyStore(APIKeyStore):
    """L{APIKeyStore}'s rules and queries on the fleet database's C{api_keys} table."""

    def __init__(self, url: str, clock=None):
        import time

        self.clock = clock or time.time
        self.db = SyncDB(url)
        self.path = Path("<fleet>")

    def __repr__(self) -> str:
        return f"<PGAPIKeyStore {self.db!r}>"

    @contextmanager  # type: ignore[override]
    def _db(self):
        yield self.db

    def _begin(self, db) -> None:
        # The name check and the insert must not interleave with another node's create.
        db.execute("BEGIN")
        db.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")

    def close(self) -> None:
        self.db.close()


@implementer(ISSHKeyStore)
class PGSSHKeyStore(SSHKeyStore):
    """L{SSHKeyStore} on the fleet database's C{ssh_keys} table."""

    _UPSERT = ("INSERT INTO ssh_keys (fingerprint, identity, groups, key_type, key_blob, comment, "
               "created, expires, revoked) VALUES (?,?,?,?,?,?,?,?,NULL) "
               "ON CONFLICT (fingerprint) DO UPDATE SET identity = EXCLUDED.identity, "
               "groups = EXCLUDED.groups, key_type = EXCLUDED.key_type, "
               "key_blob = EXCLUDED.key_blob, comment = EXCLUDED.comment, "
               "created = EXCLUDED.created, expires = EXCLUDED.expires, revoked = NULL")

    def __init__(self, url: str):
        self.db = SyncDB(url)
        self.path = Path("<fleet>")

    def __repr__(self) -> str:
        return f"<PGSSHKeyStore {self.db!r}>"

    @contextmanager  # type: ignore[override]
    def _db(self):
        with self.db.transaction():
            yield self.db


def apiKeyStore(gateway) -> IAPIKeyStore:
    """The API key store of a C{[gateway]} section: the fleet's, or C{identity.sqlite}."""
    if gateway.fleet is not None:
        return PGAPIKeyStore(gateway.fleet.url)
    return APIKeyStore(Path(gateway.state_dir) / KEYS_FILE)


def sshKeyStore(gateway) -> ISSHKeyStore:
    if gateway.fleet is not None:
        return PGSSHKeyStore(gateway.fleet.url)
    return SSHKeyStore.forStateDir(gateway.state_dir)
