"""Fleet mode's shared PostgreSQL: the config keys, a thread-backed runner, LISTEN, and schema steps.

Shared by the control state (L{sealgate.fleet}) and the recording store.
Nothing here blocks the reactor: queries run in the pool's threads
(L{twisted.enterprise.adbapi.ConnectionPool} over psycopg 3), and LISTEN
runs on its own connection in its own thread, calling back on the reactor.

The connection URL is a secret (it holds a password): it never appears in
a log, an error or a repr; L{redactURL} is what people see.
"""

import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from sealgate.configtable import UNRESOLVED_SECRET, Table, resolveSecret

#: What a node name may be: it becomes part of a log origin and a row key.
NODE_NAME = re.compile(r"^[a-z0-9-]{1,63}$")

#: The embedded default's node name (kept: it is every existing log's origin).
EMBEDDED_NODE = "sealgate"

#: One advisory lock key for every schema step of every component, so
#: nodes starting together never race on CREATE TABLE.
_SCHEMA_LOCK = 0x5EA16A7E


def redactURL(url: str) -> str:
    """C{url} with its password (and any password= parameter) replaced by C{***}."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def hostNode() -> str:
    """The host name as a node name: lower case, other characters as '-', at most 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return (name or "node")[:63]


@attrs.frozen
class FleetConfig:
    """C{[gateway] store_env}/C{store_file}: the shared database of a fleet, and this node's name."""

    url: str = attrs.field(repr=False)
    node: str
    #: Where the URL came from ("env SEALGATE_DB", "file /etc/..."), for messages.
    source: str = ""
    #: C{[gateway] lease}: a node that has not renewed for this long is down.
    lease: float = 10.0

    def __repr__(self) -> str:
        return (f"FleetConfig(url={self.redacted!r}, node={self.node!r}, source={self.source!r}, "
                f"lease={self.lease!r})")

    __str__ = __repr__

    @property
    def redacted(self) -> str:
        return redactURL(self.url)


def parseGatewayFleet(g: Table) -> tuple[FleetConfig | None, str]:
    """
    Read C{store_env}, C{store_file} and C{node} from the C{[gateway]} table.

    @return: (the fleet config or None for the embedded store, the node name).
    @raise sealgate.configtable.ConfigError: naming the file, key and fix.
    """
    env, path = g.data.get("store_env"), g.data.get("store_file")
    url = resolveSecret(g, "store", required=False)
    explicit = g.str("node")
    lease = g.timeout("lease", 10.0)
    if explicit is not None and not NODE_NAME.match(explicit):
        raise g.where.error("node", f"{explicit!r} is not a node name",
                            "use 1 to 63 lower-case letters, digits and '-', e.g. node = \"gw-1\"")
    if url is None:
        return None, explicit or EMBEDDED_NODE
    key = "store_env" if env else "store_file"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise g.where.error(key, "fleet mode needs psycopg, which is not installed",
                            "pip install 'sealgate[postgresql]'")
    source = f"environment variable {env}" if env else f"file {path}"
    if url != UNRESOLVED_SECRET:
        checkURL(url, lambda message, fix: g.where.error(key, f"{source}: {message}", fix))
    return FleetConfig(url, explicit or hostNode(), source, lease), explicit or hostNode()


def checkURL(url: str, error: Callable[[str, str], Exception]) -> None:
    """Refuse what is not a postgresql:// URL with a host and a database (never quoting a password)."""
    fix = "it must hold a URL like postgresql://user:password@host:5432/dbname"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise error("is not a valid URL", fix)
    if parts.scheme not in ("postgresql", "postgres"):
        raise error(f"has scheme {parts.scheme or 'none'!r}, not postgresql", fix)
    if not parts.hostname:
        raise error(f"has no host ({redactURL(url)})", fix)
    if not parts.path.strip("/"):
        raise error(f"names no database ({redactURL(url)})", fix)


class FleetDBError(Exception):
    """The shared database cannot be reached or refused a query; the message is safe to show."""


def safeMessage(error: BaseException, url: str) -> str:
    """An exception's text with the URL and its password taken out."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    password = urllib.parse.urlsplit(url).password
    for secret in (url, urllib.parse.unquote(password) if password else None, password):
        if secret:
            text = text.replace(secret, "***")
    return text


def connect(url: str, autocommit: bool = False, timeout: float = 5.0):
    """A psycopg connection (blocking: call it in a thread)."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as e:
        raise FleetDBError(f"cannot connect to the fleet database {redactURL(url)}: "
                           f"{safeMessage(e, url)}") from None


def migrate(cursor, component: str, steps: Sequence[str]) -> int:
    """
    Bring C{component}'s tables to C{len(steps)}: run each step above the
    version recorded in C{schema_version}, in one transaction, under an
    advisory lock.  Idempotent (steps should use IF NOT EXISTS too).

    @return: the version now.
    """
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    cursor.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                   "component text PRIMARY KEY, version integer NOT NULL)")
    cursor.execute("SELECT version FROM schema_version WHERE component = %s", (component,))
    row = cursor.fetchone()
    current = row[0] if row else 0
    for step in steps[current:]:
        cursor.execute(step)
    if len(steps) > current:
        cursor.execute("INSERT INTO schema_version (component, version) VALUES (%s, %s) "
                       "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                       (component, len(steps)))
    return max(current, len(steps))


class FleetDB:
    """
    The shared database of a fleet for code on the reactor: C{runInteraction}
    and C{runQuery} run in the pool's threads and return Deferreds;
    C{listen} follows a NOTIFY channel.
    """

    _log = Logger()

    def __init__(self, url: str, reactor=None, minConnections: int = 1, maxConnections: int = 4):
        from twisted.enterprise import adbapi

        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self._reactor = reactor
        self.pool = adbapi.ConnectionPool(
            "psycopg", url, connect_timeout=5, cp_min=minConnections, cp_max=maxConnections,
            cp_reconnect=True, cp_noisy=False, cp_reactor=reactor)
        self._listeners: list[_Listener] = []

    def __repr__(self) -> str:
        return f"<FleetDB {redactURL(self.url)}>"

    @property
    def redacted(self) -> str:
        return redactURL(self.url)

    def _safe(self, failure):
        import psycopg

        if failure.check(psycopg.Error, OSError):
            raise FleetDBError(f"fleet database {self.redacted}: "
                               f"{safeMessage(failure.value, self.url)}")
        return failure

    def runInteraction(self, fn: Callable[..., Any], *args, **kw) -> defer.Deferred:
        """C{fn(cursor, *args)} in a pool thread, in one transaction (committed when it returns)."""
        return self.pool.runInteraction(fn, *args, **kw).addErrback(self._safe)

    def runQuery(self, sql: str, args: Sequence = ()) -> defer.Deferred:
        return self.pool.runQuery(sql, tuple(args)).addErrback(self._safe)

    def runOperation(self, sql: str, args: Sequence = ()) -> defer.Deferred:
        return self.pool.runOperation(sql, tuple(args)).addErrback(self._safe)

    def migrate(self, component: str, steps: Sequence[str]) -> defer.Deferred:
        return self.runInteraction(migrate, component, steps)

    def notify(self, channel: str, payload: str) -> defer.Deferred:
        return self.runOperation("SELECT pg_notify(%s, %s)", (channel, payload))

    def listen(self, channel: str, callback: Callable[[str | None], None],
               backoff: tuple[float, float] = (0.2, 5.0)) -> "_Listener":
        """
        Run LISTEN C{channel} on a dedicated connection in its own thread and
        call C{callback(payload)} on the reactor for each notification, and
        C{callback(None)} after each (re)connect: notifications sent while
        disconnected are lost, so the caller re-reads what it follows.
        Reconnects with exponential backoff; stopped by L{close}.
        """
        listener = _Listener(self, channel, callback, backoff)
        self._listeners.append(listener)
        listener.start()
        return listener

    def close(self) -> defer.Deferred:
        """
        Stop the listeners and the pool; fires once the pool's threads are
        gone.  adbapi's own close joins them on the calling thread: on the
        reactor, a query still waiting for its answer (from a server behind
        a proxy this reactor runs, say) would hold the reactor, and with it
        the answer, for good.  The join runs in a thread of its own instead.
        """
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        pool, reactor = self.pool, self._reactor
        for trigger in ("startID", "shutdownID"):  # what pool.close does on the reactor
            if getattr(pool, trigger) is not None:
                reactor.removeSystemEventTrigger(getattr(pool, trigger))
                setattr(pool, trigger, None)
        closed: defer.Deferred = defer.Deferred()

        def join() -> None:
            try:
                pool.finalClose()
            finally:
                reactor.callFromThread(closed.callback, None)

        threading.Thread(target=join, name="sealgate-fleetdb-close", daemon=True).start()
        return closed


@attrs.define(eq=False)
class _Listener:
    db: FleetDB
    channel: str
    callback: Callable[[str | None], None]
    backoff: tuple[float, float]
    connected: bool = False
    _stopping: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None
    _log = Logger()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sealgate-listen-{self.channel}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _call(self, payload) -> None:
        self.db._reactor.callFromThread(self.callback, payload)

    def _run(self) -> None:
        from psycopg import sql

        delay = self.backoff[0]
        while not self._stopping.is_set():
            conn = None
            try:
                conn = connect(self.db.url, autocommit=True)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self.connected = True
                delay = self.backoff[0]
                self._call(None)
                while not self._stopping.is_set():
                    for n in conn.notifies(timeout=0.5):
                        self._call(n.payload)
            except Exception as e:
                if self.connected or delay == self.backoff[0]:
                    self.db._reactor.callFromThread(
                        self._log.warn, "Fleet database LISTEN {channel} lost: {why}; "
                        "reconnecting", channel=self.channel, why=safeMessage(e, self.db.url))
                self.connected = False
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff[1])
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
        self.connected = False


def resolveFleet(path: str) -> FleetConfig | None:
    """Read only the C{[gateway]} fleet keys of a config file, the URL resolved (for commands)."""
    import tomllib

    from sealgate.configtable import ConfigError, Where

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}")
    fleet, _ = parseGatewayFleet(Table(dict(raw.get("gateway", {})), Where(path, "gateway")))
    return fleet
