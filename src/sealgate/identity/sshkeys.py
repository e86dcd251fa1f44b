"""SSH public keys bound to identities (groups, expiry, revocation) in identity.sqlite."""

import json
import sqlite3
import time
from pathlib import Path

import attrs
from twisted.conch.ssh import keys
from zope.interface import implementer

from sealgate.fleet.interfaces import ISSHKeyStore
from sealgate.identity._types import Identity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ssh_keys (
    fingerprint TEXT PRIMARY KEY,
    identity    TEXT NOT NULL,
    groups      TEXT NOT NULL,
    key_type    TEXT NOT NULL,
    key_blob    BLOB NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL,
    expires     REAL,
    revoked     REAL
)
"""


class SSHKeyError(Exception):
    """A key file or key operation a person got wrong; the message says how."""


@attrs.frozen
class SSHKeyRecord:
    fingerprint: str
    identity: str
    groups: tuple[str, ...]
    keyType: str
    comment: str
    created: float
    expires: float | None
    revoked: float | None

    def state(self, now: float | None = None) -> str:
        """"active", "expired" or "revoked"."""
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"

    def asIdentity(self) -> Identity:
        return Identity(self.identity, frozenset(self.groups), "sshkey", "sealgate",
                        expires=self.expires, credential=self.fingerprint)


def fingerprintOf(blob: bytes) -> str:
    """OpenSSH's SHA256:... fingerprint of a public key blob."""
    return keys.Key.fromString(blob).fingerprint(keys.FingerprintFormats.SHA256_BASE64)


@implementer(ISSHKeyStore)
class SSHKeyStore:
    """
    The C{ssh_keys} table of C{<state_dir>/identity.sqlite} (shared with the
    API key store, which keeps its own table).  Methods block on SQLite:
    call them from a thread when the reactor runs (L{lookup} is what the
    gateway calls, through C{deferToThreadPool}).
    """

    _UPSERT = ("INSERT OR REPLACE INTO ssh_keys (fingerprint, identity, groups, key_type, "
               "key_blob, comment, created, expires, revoked) VALUES (?,?,?,?,?,?,?,?,NULL)")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def forStateDir(cls, stateDir) -> "SSHKeyStore":
        return cls(Path(stateDir) / "identity.sqlite")

    def _db(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute(_SCHEMA)
        return db

    def add(self, identity: str, publicKey: bytes | str, groups=(),
            expires: float | None = None) -> SSHKeyRecord:
        """Bind an OpenSSH public key line to an identity."""
        if isinstance(publicKey, str):
            publicKey = publicKey.encode()
        line = publicKey.strip()
        try:
            key = keys.Key.fromString(line)
        except Exception:
            raise SSHKeyError("not an OpenSSH public key (expected a line like "
                              "'ssh-ed25519 AAAA... comment', e.g. ~/.ssh/id_ed25519.pub)")
        if not key.isPublic():
            raise SSHKeyError("this is a private key; give the .pub file instead")
        parts = line.split(None, 2)
        comment = parts[2].decode("utf-8", "replace") if len(parts) > 2 else ""
        rec = SSHKeyRecord(key.fingerprint(keys.FingerprintFormats.SHA256_BASE64), identity,
                           tuple(sorted(set(groups))), key.sshType().decode(), comment,
                           time.time(), expires, None)
        with self._db() as db:
            row = db.execute("SELECT identity, revoked FROM ssh_keys WHERE fingerprint = ?",
                             (rec.fingerprint,)).fetchone()
            if row is not None and row[1] is None and row[0] != identity:
                raise SSHKeyError(f"key {rec.fingerprint} is already bound to {row[0]!r}; "
                                  "revoke it there first")
            db.execute(
                self._UPSERT,
                (rec.fingerprint, identity, json.dumps(list(rec.groups)), rec.keyType,
                 key.blob(), comment, rec.created, expires))
        return rec

    def listKeys(self, identity: str | None = None) -> list[SSHKeyRecord]:
        query = "SELECT * FROM ssh_keys"
        args: tuple = ()
        if identity is not None:
            query += " WHERE identity = ?"
            args = (identity,)
        with self._db() as db:
            return [_record(r) for r in db.execute(query + " ORDER BY identity, created", args)]

    def revoke(self, which: str) -> list[SSHKeyRecord]:
        """Revoke one key by fingerprint, or every key of an identity."""
        now = time.time()
        with self._db() as db:
            rows = db.execute("SELECT * FROM ssh_keys WHERE (fingerprint = ? OR identity = ?) "
                              "AND revoked IS NULL", (which, which)).fetchall()
            db.execute("UPDATE ssh_keys SET revoked = ? WHERE (fingerprint = ? OR identity = ?) "
                       "AND revoked IS NULL", (now, which, which))
        return [_record(r) for r in rows]

    def status(self, fingerprint: str) -> str:
        """C{"active"}, C{"expired"}, C{"revoked"} or C{"unknown"}: for re-checking live sessions."""
        with self._db() as db:
            row = db.execute("SELECT * FROM ssh_keys WHERE fingerprint = ?",
                             (fingerprint,)).fetchone()
        return "unknown" if row is None else _record(row).state()

    def lookup(self, blob: bytes) -> SSHKeyRecord | None:
        """The binding of a public key blob (in any state), or None."""
        with self._db() as db:
            row = db.execute("SELECT * FROM ssh_keys WHERE fingerprint = ? AND key_blob = ?",
                             (fingerprintOf(blob), blob)).fetchone()
        return None if row is None else _record(row)


def _record(row) -> SSHKeyRecord:
    fp, identity, groups, keyType, _blob, comment, created, expires, revoked = row
    return SSHKeyRecord(fp, identity, tuple(json.loads(groups)), keyType, comment,
                        created, expires, revoked)
