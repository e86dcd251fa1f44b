"""API keys for non-human identities: random, shown once, stored hashed, expiring, revocable."""

import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import attrs
from zope.interface import implementer

from sealgate.fleet.interfaces import IAPIKeyStore
from sealgate.identity._types import AuthenticationFailed, Identity

PREFIX = "sgk_"
#: Seconds between last_used updates of one key.
LAST_USED_RESOLUTION = 60.0
_KEY = re.compile(r"^sgk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    groups     TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    created    REAL NOT NULL,
    expires    REAL,
    revoked    REAL,
    last_used  REAL
);
CREATE INDEX IF NOT EXISTS api_keys_name ON api_keys (name);
"""


class APIKeyError(Exception):
    """A key cannot be created or revoked; the message is for people."""


@attrs.frozen
class APIKeyInfo:
    """What C{list()} shows about a key: never the key or its hash."""

    name: str
    keyId: str
    groups: tuple[str, ...]
    created: float
    expires: float | None
    revoked: float | None
    lastUsed: float | None

    def status(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def asDict(self, now: float) -> dict:
        return {"name": self.name, "key_id": self.keyId, "groups": list(self.groups),
                "created": self.created, "expires": self.expires, "revoked": self.revoked,
                "last_used": self.lastUsed, "status": self.status(now)}


def _hash(secret: str) -> bytes:
    # A single SHA-256 is enough here: the secret is 256 random bits, so there
    # is nothing for a slow password hash to protect against guessing.
    return hashlib.sha256(b"sealgate-apikey-v1\x00" + secret.encode("ascii")).digest()


@implementer(IAPIKeyStore)
class APIKeyStore:
    """
    API keys in a SQLite file (mode 0600), e.g. C{<state_dir>/identity.sqlite}.

    A key reads C{sgk_<key id>_<secret>}: the 64-bit key id finds the row, the
    256-bit secret is checked against its stored SHA-256 in constant time.

    Synchronous: callers on the reactor thread must use a thread
    (L{sealgate.identity.service.IdentityService} does).
    """

    def __init__(self, path: str | os.PathLike, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Create the file ourselves so it is never world-readable, not even briefly.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        with self._db() as db:
            # WAL: readers never wait for the last_used writes.
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)

    def _db(self) -> nullcontext[sqlite3.Connection]:
        # One connection per thread: sqlite3 connections must stay on their
        # thread, and reopening one per check costs more than the check.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            # Losing a last_used stamp in a power cut is fine; keys themselves
            # are written in their own committed transaction.
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return nullcontext(db)

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            db.close()

    def create(self, name: str, groups, expires_seconds: float | None = None) -> str:
        """
        Make a key and return it; this is the only time it is available.

        @raise APIKeyError: bad name or groups, or an active key of that name exists.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise APIKeyError(f"invalid key name {name!r}: use letters, digits and . _ @ -")
        groups = tuple(dict.fromkeys(groups))
        if not groups or not all(isinstance(g, str) and g and "," not in g for g in groups):
            raise APIKeyError("give at least one group (non-empty, without commas)")
        if expires_seconds is not None and expires_seconds <= 0:
            raise APIKeyError("expiry must be in the future")
        now = self.clock()
        keyId = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        expires = None if expires_seconds is None else now + expires_seconds
        with self._db() as db:
            self._begin(db)
            try:
                if self._active(db, name, now):
                    raise APIKeyError(f"an active key named {name!r} exists; revoke it first")
                db.execute("INSERT INTO api_keys (key_id, name, groups, secret_sha256, created, "
                           "expires) VALUES (?, ?, ?, ?, ?, ?)",
                           (keyId, name, ",".join(groups), _hash(secret), now, expires))
            except BaseException:
                # The connection is reused: never leave it inside a transaction.
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return f"{PREFIX}{keyId}_{secret}"

    def _begin(self, db) -> None:
        # Immediate: two creates of one name cannot both see no active key.
        db.execute("BEGIN IMMEDIATE")

    def _active(self, db, name: str, now: float) -> list:
        return db.execute("SELECT key_id FROM api_keys WHERE name = ? AND revoked IS NULL "
                          "AND (expires IS NULL OR expires > ?)", (name, now)).fetchall()

    def list(self) -> list[APIKeyInfo]:
        with self._db() as db:
            rows = db.execute("SELECT name, key_id, groups, created, expires, revoked, last_used "
                              "FROM api_keys ORDER BY created, name").fetchall()
        return [APIKeyInfo(r[0], r[1], tuple(r[2].split(",")), r[3], r[4], r[5], r[6])
                for r in rows]

    def revoke(self, name: str) -> int:
        """
        Revoke every unrevoked key with this name.

        @return: how many were revoked.
        @raise APIKeyError: no such unrevoked key.
        """
        with self._db() as db:
            count = db.execute("UPDATE api_keys SET revoked = ? WHERE name = ? AND revoked IS NULL",
                               (self.clock(), name)).rowcount
        if not count:
            raise APIKeyError(f"no unrevoked key named {name!r} (see `sealgate keys list`)")
        return count

    def verify(self, key: str) -> Identity:
        """
        @return: the key's L{Identity} (method "apikey", issuer "sealgate").
        @raise AuthenticationFailed: unknown, expired or revoked key.
        """
        m = _KEY.match(key.strip()) if isinstance(key, str) else None
        keyId, secret = (m.group(1), m.group(2)) if m else ("", "")
        with self._db() as db:
            row = db.execute("SELECT name, groups, secret_sha256, expires, revoked, last_used "
                             "FROM api_keys WHERE key_id = ?", (keyId,)).fetchone()
            # Compare even when there is no row so timing says nothing about key ids.
            stored = row[2] if row else b"\x00" * 32
            good = hmac.compare_digest(stored, _hash(secret)) and row is not None and m is not None
            if not good:
                raise AuthenticationFailed("unknown API key", row[0] if row else None)
            name, groups, _, expires, revoked, lastUsed = row
            now = self.clock()
            # State is disclosed only to holders of the secret.
            if revoked is not None:
                raise AuthenticationFailed("API key revoked", name)
            if expires is not None and now >= expires:
                raise AuthenticationFailed("API key expired", name)
            # A CI job may authenticate many times a minute; one write a minute is enough.
            if lastUsed is None or not (0 <= now - lastUsed < LAST_USED_RESOLUTION):
                db.execute("UPDATE api_keys SET last_used = ? WHERE key_id = ?", (now, keyId))
        return Identity(name, frozenset(groups.split(",")), "apikey", "sealgate",
                        expires=expires, credential=keyId)

    def status(self, keyId: str) -> str:
        """C{"active"}, C{"expired"}, C{"revoked"} or C{"unknown"}: for re-checking live sessions."""
        with self._db() as db:
            row = db.execute("SELECT expires, revoked FROM api_keys WHERE key_id = ?",
                             (keyId,)).fetchone()
        if row is None:
            return "unknown"
        if row[1] is not None:
            return "revoked"
        if row[0] is not None and self.clock() >= row[0]:
            return "expired"
        return "active"
