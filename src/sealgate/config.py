"""TOML configuration parsed into attrs classes, validated with errors for people."""

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sealgate.configlimits import Limits, issuerTransport, parseLimits
from sealgate.configrules import (  # noqa: F401  (Rule, BASE_RULE_KEYS: re-exported)
    BASE_RULE_KEYS,
    Rule,
    RuleWords,
    approverWarnings,
    knownConnections,
    parseRule,
)
from sealgate.configtable import (  # noqa: F401  (re-exported: the plugin contract)
    UNRESOLVED_SECRET,
    ConfigError,
    Table,
    Where,
    _resolveSecrets,
    parseDuration,
    parseSize,
    resolveSecret,
    unknownKeyFix,
)
from sealgate.fleetdb import FleetConfig, parseGatewayFleet
from sealgate.logconfig import LoggingConfig, parseLogging
from sealgate.recording.witnessconfig import WitnessPolicy, parseWitnesses


@attrs.frozen
class GatewaySection:
    state_dir: Path
    admin: str = "tcp:8700:interface=127.0.0.1"
    drain_timeout: float = 30.0
    node: str = "sealgate"
    checkpoint_interval: float = 1.0
    #: Bytes (payload plus a fixed cost per item) that may wait for the store's
    #: writer; past it every session's relaying pauses.
    max_unsealed: int = 64 << 20
    #: How long relaying may stay paused on a store that makes no progress
    #: (writer restarting, disk full) before every session is closed.
    store_timeout: float = 10.0
    #: C{store_env}/C{store_file}: the fleet's shared PostgreSQL; None: embedded SQLite.
    fleet: FleetConfig | None = None


@attrs.frozen
class IdentityConfig:
    oidc_issuer: str | None = None
    oidc_audience: str = "sealgate"
    groups_claim: str = "groups"
    subject_claim: str = "sub"
    leeway: float = 60.0
    jwks_min_refresh: float = 30.0
    admins: tuple[str, ...] = ()
    oidc_ca_file: str | None = None
    allow_insecure_issuer: bool = False


@attrs.frozen
class Role:
    name: str
    groups: tuple[str, ...]
    connections: tuple[str, ...]


@attrs.frozen
class MaskingConfig:
    detectors: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    json_fields: tuple[str, ...] = ()
    connections: tuple[str, ...] = ("*",)
    exempt_groups: tuple[str, ...] = ()
    #: A body that is not text: "mask", "refuse" or "pass"; None is
    #: "refuse" with detectors, else "pass" (docs/masking.md).
    unknown_content: str | None = None


@attrs.frozen
class AdminConfig:
    """
    The admin API's roles (identity groups) and the console's login.  Groups
    named as C{approvers} in any rule are approvers too.
    """

    admins: tuple[str, ...] = ()
    approvers: tuple[str, ...] = ()
    auditors: tuple[str, ...] = ()
    console_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = attrs.field(default=None, repr=False)
    login_lifetime: float = 8 * 3600.0


NOTIFY_KINDS = ("webhook", "slack")
NOTIFY_EVENTS = ("requested", "approved", "denied", "expired", "cancelled")


@attrs.frozen
class NotifyConfig:
    """One notification target: a signed JSON webhook or a Slack incoming webhook."""

    name: str
    kind: str
    url: str = attrs.field(repr=False)
    secret: str | None = attrs.field(default=None, repr=False)
    events: tuple[str, ...] = ("requested",)
    retries: int = 5
    backoff: float = 1.0
    timeout: float = 10.0


@attrs.frozen
class ConnectionConfig:
    name: str
    protocol: str
    listen: str
    backend: str
    options: Any = None
    where: Where | None = attrs.field(default=None, eq=False, repr=False)
    #: False: live sessions are not ended when their credential is revoked or expires.
    recheck: bool = True


@attrs.frozen
class GatewayConfig:
    path: str
    gateway: GatewaySection
    identity: IdentityConfig
    roles: tuple[Role, ...]
    connections: tuple[ConnectionConfig, ...]
    rules: tuple[Rule, ...]
    masking: MaskingConfig
    raw: Mapping[str, Any] = attrs.field(eq=False, repr=False, factory=dict)
    admin: AdminConfig = AdminConfig()
    notify: tuple[NotifyConfig, ...] = ()
    #: Things that are valid but probably wrong (logged at start, printed by
    #: C{sealgate config check}).
    warnings: tuple[str, ...] = ()
    logging: LoggingConfig = LoggingConfig()
    #: C{[[events]]}: L{sealgate.events.EventSink}s of the audit event stream.
    events: tuple = ()
    limits: Limits = Limits()
    #: C{[[witnesses]]} and C{[gateway] witness_quorum}.
    witnesses: WitnessPolicy = WitnessPolicy()

    def connection(self, name: str) -> ConnectionConfig | None:
        for c in self.connections:
            if c.name == name:
                return c
        return None


def loadConfig(path: str | os.PathLike, plugins: Mapping[str, Any] | None = None,
               secrets: bool = True) -> GatewayConfig:
    """
    Read and validate a config file.

    @param plugins: protocol name -> L{sealgate.interfaces.IProtocolPlugin};
        None to discover them with twisted.plugin.
    @param secrets: False for commands that never reach a backend (keys,
        approvals, the store): secrets must be configured but are not read,
        so the operator running them needs none in the environment.
    @raise ConfigError: with one message for people.
    """
    token = _resolveSecrets.set(secrets)
    try:
        return _loadConfig(path, plugins)
    finally:
        _resolveSecrets.reset(token)


def _loadConfig(path: str | os.PathLike, plugins: Mapping[str, Any] | None) -> GatewayConfig:
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file\n  fix: pass --config PATH or set SEALGATE_CONFIG")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}\n  fix: correct the syntax at that line")
    if plugins is None:
        from sealgate.plugins import protocolPlugins

        plugins = protocolPlugins()
    return parseConfig(raw, path, plugins)


def parseConfig(raw: Mapping[str, Any], path: str, plugins: Mapping[str, Any]) -> GatewayConfig:
    top = Table(dict(raw), Where(path, ""))

    g = Table(top._get("gateway", {}, False), Where(path, "gateway"))
    state_dir = Path(g.str("state_dir", "var/sealgate"))
    if not state_dir.is_absolute():
        # Relative to the directory we were started in, like twistd does.
        state_dir = Path.cwd() / state_dir
    fleet, node = parseGatewayFleet(g)
    gateway = GatewaySection(
        state_dir=state_dir, fleet=fleet,
        admin=_endpoint(g, "admin", "tcp:8700:interface=127.0.0.1", server=True),
        drain_timeout=g.duration("drain_timeout", 30.0),
        node=node,
        checkpoint_interval=g.duration("checkpoint_interval", 1.0),
        # Below a few frames' worth every session would pause on each read.
        max_unsealed=g.size("max_unsealed", 64 << 20, minimum=1 << 20),
        store_timeout=g.timeout("store_timeout", 10.0),
    )
    if gateway.store_timeout <= 0:
        raise g.where.error("store_timeout", f"must be more than 0 s, not {gateway.store_timeout:g}",
                            'write e.g. store_timeout = "10s"')
    witnesses = parseWitnesses(top, g, path)
    g.finish()

    i = Table(top._get("identity", {}, False), Where(path, "identity"))
    issuer = i.str("oidc_issuer")
    if issuer is not None and not re.match(r"^https?://", issuer):
        raise i.where.error("oidc_issuer", f"{issuer!r} is not an http(s) URL",
                            'write the issuer URL, e.g. "https://login.example.com/"')
    ca, insecure = issuerTransport(i, issuer)
    identity = IdentityConfig(
        oidc_issuer=issuer,
        oidc_audience=i.str("oidc_audience", "sealgate"),
        groups_claim=i.str("groups_claim", "groups"),
        subject_claim=i.str("subject_claim", "sub"),
        leeway=i.duration("leeway", 60.0),
        jwks_min_refresh=i.duration("jwks_min_refresh", 30.0),
        admins=i.strings("admins"),
        oidc_ca_file=ca, allow_insecure_issuer=insecure,
    )
    i.finish()
    limits = parseLimits(Table(top._get("limits", {}, False), Where(path, "limits")))

    connections = []
    names: set[str] = set()
    used: dict[str, Any] = {}
    for n, c in enumerate(_array(top, "connections")):
        t = Table(c, Where(path, f"connections[{n}]"))
        name = t.str("name", required=True)
        if name in names:
            raise t.where.error("name", f"duplicate connection name {name!r}",
                                "give each [[connections]] entry its own name")
        names.add(name)
        t.where = Where(path, f"connections[{n}] ({name})")
        protocol = t.str("protocol", required=True)
        plugin = plugins.get(protocol)
        if plugin is None:
            known = ", ".join(sorted(plugins)) or "none installed"
            raise t.where.error("protocol", f"unknown protocol {protocol!r}",
                                f"use one of: {known} (or install the plugin that provides it)")
        listen = _endpoint(t, "listen", None, server=True, required=True)
        backend = _endpoint(t, "backend", None, server=False, required=True)
        where = t.where.sub("options")
        try:
            parse = plugin.parseOptions
        except ImportError as e:
            raise t.where.error("protocol", f"the {protocol!r} protocol plugin cannot be loaded: {e}",
                                "reinstall sealgate or the package that provides the plugin")
        options = parse(dict(t._get("options", {}, False)), where)
        used[protocol] = plugin
        recheck = t.bool("recheck_credentials", True)
        t.finish()
        connections.append(ConnectionConfig(name, protocol, listen, backend, options, where,
                                            recheck))

    roles = []
    for n, r in enumerate(_array(top, "roles")):
        t = Table(r, Where(path, f"roles[{n}]"))
        role = Role(t.str("name", required=True), t.strings("groups", required=True),
                    t.strings("connections", required=True))
        knownConnections(t, "connections", role.connections, names)
        t.finish()
        roles.append(role)

    ruleKeys = set(BASE_RULE_KEYS)
    for p in used.values():
        ruleKeys.update(getattr(p, "ruleKeys", ()))
    words = RuleWords(tuple(used.values()))
    rules = []
    for n, r in enumerate(_array(top, "rules")):
        rules.append(parseRule(Table(r, Where(path, f"rules[{n}]")), names, ruleKeys, words))

    m = Table(top._get("masking", {}, False), Where(path, "masking"))
    from sealgate.masking import knownDetectors

    detectors = m.strings("detectors")
    available = knownDetectors()
    for d in detectors:
        if d not in available:
            raise m.where.error("detectors", f"unknown detector {d!r}",
                                f"use any of: {', '.join(sorted(available))}")
    masking = MaskingConfig(detectors=detectors, columns=m.strings("columns"),
                            json_fields=m.strings("json_fields"),
                            connections=m.strings("connections", ("*",)),
                            exempt_groups=m.strings("exempt_groups"),
                            unknown_content=_unknownContent(m))
    knownConnections(m, "connections", masking.connections, names)
    m.finish()

    admin = _admin(Table(top._get("admin", {}, False), Where(path, "admin")))
    notify: list[NotifyConfig] = []
    for n, t in enumerate(_array(top, "notify")):
        notify.append(_notify(Table(t, Where(path, f"notify[{n}]")), {x.name for x in notify}))

    logging = parseLogging(Table(top._get("logging", {}, False), Where(path, "logging")))
    from sealgate.events import parseSink

    sinks: list = []
    for n, t in enumerate(_array(top, "events")):
        sinks.append(parseSink(Table(t, Where(path, f"events[{n}]")), {x.name for x in sinks}))

    top.finish()
    _checkDistinctListeners(connections)
    return GatewayConfig(path, gateway, identity, tuple(roles), tuple(connections),
                         tuple(rules), masking, raw, admin, tuple(notify),
                         warnings=approverWarnings(path, rules, roles, admin, identity),
                         logging=logging, events=tuple(sinks), limits=limits, witnesses=witnesses)


def _admin(t: Table) -> AdminConfig:
    url = t.str("console_url")
    if url is not None and not re.match(r"^https?://", url):
        raise t.where.error("console_url", f"{url!r} is not an http(s) URL",
                            'write the URL people open, e.g. "https://sealgate.example.com:8700/"')
    admin = AdminConfig(
        admins=t.strings("admins"), approvers=t.strings("approvers"), auditors=t.strings("auditors"),
        console_url=url.rstrip("/") + "/" if url else None,
        oidc_client_id=t.str("oidc_client_id"),
        oidc_client_secret=resolveSecret(t, "oidc_client_secret", required=False),
        login_lifetime=t.duration("login_lifetime", 8 * 3600.0),
    )
    t.finish()
    return admin


def _notify(t: Table, names: set[str]) -> NotifyConfig:
    name = t.str("name", required=True)
    if name in names:
        raise t.where.error("name", f"duplicate notify name {name!r}",
                            "give each [[notify]] entry its own name")
    t.where = Where(t.where.path, f"{t.where.table} ({name})")
    kind = t.str("kind", "webhook")
    if kind not in NOTIFY_KINDS:
        raise t.where.error("kind", f"unknown kind {kind!r}", f"use one of: {', '.join(NOTIFY_KINDS)}")
    # A Slack webhook URL is itself a secret, so it may come from the environment or a file.
    url = t.str("url")
    if url is None:
        url = resolveSecret(t, "url", required=False)
    elif t.data.get("url_env") or t.data.get("url_file"):
        raise t.where.error("url", "both url and url_env/url_file are set", "keep one of them")
    if not url:
        raise t.where.error("url", "is missing", 'add url = "https://..." (or url_env / url_file)')
    if not re.match(r"^https?://[^/\s]+", url):
        raise t.where.error("url", "is not an http(s) URL", 'write e.g. "https://hooks.example.com/sealgate"')
    secret = resolveSecret(t, "secret", required=(kind == "webhook"))
    events = t.strings("events", ("requested",))
    for e in events:
        if e not in NOTIFY_EVENTS:
            raise t.where.error("events", f"unknown event {e!r}", f"use any of: {', '.join(NOTIFY_EVENTS)}")
    cfg = NotifyConfig(name=name, kind=kind, url=url, secret=secret, events=events,
                       retries=int(t.number("retries", 5, minimum=0)),
                       backoff=t.duration("backoff", 1.0), timeout=t.duration("timeout", 10.0))
    t.finish()
    return cfg


def _unknownContent(m: Table) -> str | None:
    from sealgate.masking import UNKNOWN_CONTENT

    value = m.str("unknown_content")
    if value is not None and value not in UNKNOWN_CONTENT:
        raise m.where.error("unknown_content", f"unknown value {value!r}",
                            f"use one of: {', '.join(UNKNOWN_CONTENT)}")
    return value


def _array(top: Table, key: str) -> list:
    v = top._get(key, [], False)
    if not isinstance(v, list):
        raise top.where.error(key, "must be an array of tables", f"write it as [[{key}]]")
    return v


def _endpoint(t: Table, key: str, default, server: bool, required=False) -> str:
    desc = t.str(key, default, required=required)
    from twisted.internet import endpoints

    try:
        # Built against no reactor: this only parses, it neither listens nor connects.
        if server:
            endpoints.serverFromString(None, desc)
        else:
            endpoints.clientFromString(None, desc)
    except Exception as e:
        kind = "listen" if server else "connect"
        raise t.where.error(key, f"cannot parse endpoint {desc!r} ({e})",
                            f'write a Twisted {kind} endpoint, e.g. '
                            + ('"tcp:6432:interface=127.0.0.1"' if server
                               else '"tcp:host=127.0.0.1:port=5432"'))
    return desc


def _checkDistinctListeners(connections: list[ConnectionConfig]) -> None:
    seen: dict[str, ConnectionConfig] = {}
    for c in connections:
        other = seen.get(c.listen)
        if other is not None and other.protocol != c.protocol:
            assert c.where is not None
            raise c.where.error("listen", f"{c.listen!r} is also used by connection "
                                f"{other.name!r} with protocol {other.protocol!r}",
                                "give each protocol its own listen endpoint")
        seen.setdefault(c.listen, c)
