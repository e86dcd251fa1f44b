"""A real PostgreSQL 15 (initdb + pg_ctl) on 127.0.0.1 in a temp dir, with three auth methods."""

import atexit
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.harness._proc import asUser, freePort, isRoot, removeTree, run, tempDir
from tests.harness.certs import makeServerCert

BINDIR = Path(os.environ.get("SEALGATE_PG_BINDIR", "/usr/lib/postgresql/15/bin"))

#: Login roles, one per backend auth method the proxy must speak.
SCRAM_USER = "app_scram"
MD5_USER = "app_md5"
TRUST_USER = "app_trust"

_SAMPLE = """
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text);
INSERT INTO customers VALUES
  (1, 'Ada Lovelace', 'ada@example.com', '4111 1111 1111 1111'),
  (2, 'Alan Turing', 'alan@example.org', '5500-0000-0000-0004'),
  (3, 'Grace Hopper', 'grace@example.net', '340000000000009');
GRANT ALL ON SCHEMA public TO {md5}, {trust};
GRANT ALL ON ALL TABLES IN SCHEMA public TO {md5}, {trust};
"""


class PostgresServer:
    """
    One PostgreSQL cluster.  As root, everything server-side runs as the
    C{postgres} system user (initdb refuses root).

    pg_hba: C{app_trust} by trust, C{app_md5} by md5 (its password is stored
    as md5), everyone else (C{app_scram}, the superuser) by SCRAM-SHA-256.
    Database C{app} (owner C{app_scram}) holds a C{customers} table with
    e-mails and card numbers for masking tests.

    TLS is offered with a certificate for 127.0.0.1/localhost signed by a
    throwaway CA: C{tls.caFile} (for verify-full), C{tls.certFile}.
    """

    host = "127.0.0.1"
    superuser = "postgres"
    database = "app"

    def __init__(self, bindir: Path = BINDIR):
        self.bindir = Path(bindir)
        self.owner = "postgres" if isRoot() else None
        self.port: int | None = None
        self.passwords: dict[str, str | None] = {
            self.superuser: secrets.token_urlsafe(18),
            SCRAM_USER: secrets.token_urlsafe(18),
            MD5_USER: secrets.token_urlsafe(18),
            TRUST_USER: None,
        }
        self.dir: Path | None = None

    # -- paths ---------------------------------------------------------------

    @property
    def dataDir(self) -> Path:
        return self.dir / "data"

    @property
    def socketDir(self) -> Path:
        return self.dir / "sock"

    @property
    def logPath(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def users(self) -> dict[str, str | None]:
        """Login role -> password (None for the trust role)."""
        return dict(self.passwords)

    def logText(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def binary(self, name: str) -> str:
        """Path of a PostgreSQL 15 program (psql, pgbench, pg_dump, ...)."""
        return str(self.bindir / name)

    _bin = binary

    def _as(self, argv: list[str], what: str, **kw):
        return run(asUser(self.owner, argv), what, cwd=self.dir, **kw)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "PostgresServer":
        self.dir = tempDir("sealgate-pg-", self.owner)
        atexit.register(self.stop)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.passwords[self.superuser] + "\n")
        if self.owner:
            shutil.chown(pwfile, self.owner)
        self._as([self._bin("initdb"), "-D", str(self.dataDir), "-U", self.superuser,
                  "--pwfile", str(pwfile), "-E", "UTF8", "--locale=C.UTF-8", "-N",
                  "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb", timeout=120)
        pwfile.unlink()
        socketDir = self.socketDir
        self._as(["mkdir", "-p", str(socketDir)], "mkdir socket dir")
        self.tls = makeServerCert(self.dir)
        if self.owner:
            for path in (self.tls.certFile, self.tls.keyFile):
                shutil.chown(path, self.owner)
        (self.dataDir / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {TRUST_USER} 127.0.0.1/32 trust\n"
            f"host all {MD5_USER} 127.0.0.1/32 md5\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.dataDir / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{socketDir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 60\n"
                "password_encryption = 'scram-sha-256'\n"
                # TLS is offered, never required: clients choose (sslmode).
                f"ssl = on\nssl_cert_file = '{self.tls.certFile}'\n"
                f"ssl_key_file = '{self.tls.keyFile}'\n"
                # Logs "connection authenticated: ... method=..." so tests can
                # prove which auth method a login really used.
                "log_connections = on\n")
        self._startServer()
        self._createRoles()
        return self

    def _startServer(self) -> None:
        for attempt in range(5):
            self.port = freePort()
            try:
                self._as([self._bin("pg_ctl"), "-D", str(self.dataDir), "-l", str(self.logPath),
                          "-w", "-t", "60", "-o", f"-p {self.port}", "start"], "pg_ctl start",
                         timeout=90)
                return
            except RuntimeError:
                log = self.logText()
                if "could not bind" in log and attempt < 4:
                    continue
                raise RuntimeError(f"postgres did not start:\n{log[-3000:]}")

    def _createRoles(self) -> None:
        p = self.passwords
        self._local("postgres", f"""
            CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{p[SCRAM_USER]}';
            SET password_encryption = 'md5';
            CREATE ROLE {MD5_USER} LOGIN PASSWORD '{p[MD5_USER]}';
            RESET password_encryption;
            CREATE ROLE {TRUST_USER} LOGIN;
            CREATE DATABASE {self.database} OWNER {SCRAM_USER};
            GRANT ALL ON DATABASE {self.database} TO {MD5_USER}, {TRUST_USER};
        """)
        self._local(self.database, "SET ROLE " + SCRAM_USER + ";"
                    + _SAMPLE.format(md5=MD5_USER, trust=TRUST_USER))

    def _local(self, database: str, sql: str) -> str:
        """SQL over the Unix socket as the superuser (trust), for setup."""
        return self._as([self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h",
                         str(self.socketDir), "-p", str(self.port), "-U", self.superuser,
                         "-d", database, "-f", "-"], "setup SQL", input=sql).stdout

    def stop(self) -> None:
        if self.dir is None:
            return
        directory, self.dir = self.dir, None
        atexit.unregister(self.stop)
        try:
            if (directory / "data" / "postmaster.pid").exists():
                subprocess.run(asUser(self.owner, [self._bin("pg_ctl"), "-D",
                                                   str(directory / "data"), "-m", "fast", "-w",
                                                   "-t", "30", "stop"]),
                               capture_output=True, timeout=60, cwd="/")
        finally:
            self._killLeftover(directory)
            removeTree(directory)

    def _killLeftover(self, directory: Path) -> None:
        pidfile = directory / "data" / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 9)
        except (OSError, ValueError, IndexError):
            pass

    # -- clients -------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The Twisted client endpoint string for a connection's C{backend}."""
        return f"tcp:host={self.host}:port={self.port}"

    def password(self, user: str) -> str | None:
        return self.passwords[user]

    def dsn(self, user: str = SCRAM_USER, database: str | None = None, host: str | None = None,
            port: int | None = None, password: str | bool = True, **extra) -> str:
        """
        A libpq keyword DSN (psycopg, psql).  C{password=True} uses the
        user's real password, False leaves it out, a string uses that.
        """
        parts = {"host": host or self.host, "port": port or self.port, "user": user,
                 "dbname": database or self.database}
        if password is True:
            password = self.passwords.get(user)
        if password:
            parts["password"] = password
        parts.update(extra)
        return " ".join(f"{k}={_quote(str(v))}" for k, v in parts.items())

    def env(self, user: str = SCRAM_USER, password: str | bool = True) -> dict[str, str]:
        """Environment for libpq clients (psql, pgbench) aimed at this server."""
        env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=user,
                   PGDATABASE=self.database, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
        env.pop("PGPASSWORD", None)
        if password is True:
            password = self.passwords.get(user)
        if password:
            env["PGPASSWORD"] = password
        return env

    def psql(self, sql: str, user: str | None = None, database: str | None = None,
             host: str | None = None, port: int | None = None, password: str | bool = True,
             check: bool = True, extra: tuple[str, ...] = ()) -> str | subprocess.CompletedProcess:
        """
        Run SQL with the real psql over TCP (unaligned, tuples only).

        @return: stdout when C{check}; else the CompletedProcess.
        """
        user = user or self.superuser
        env = self.env(user, password)
        argv = [self._bin("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", host or self.host, "-p", str(port or self.port), "-U", user,
                "-d", database or self.database, "-w", *extra, "-c", sql]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        if not check:
            return result
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "._-/:@" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
