"""The http protocol plugin: options, the shared listener per listen endpoint, replay."""

import base64
import re
import weakref

import attrs
from zope.interface import implementer

from sealgate.config import Table, resolveSecret
from sealgate.export import TEXT, ExportFormat
from sealgate.interfaces import IProtocolPlugin

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@attrs.frozen
class HTTPOptions:
    """
    A connection's validated options.  Secrets are resolved already and
    kept out of C{repr}.

    @ivar inject: (header name, value) pairs put on every forwarded request.
    """

    hosts: tuple[str, ...] = ()
    path_prefix: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    preserve_host: bool = False
    secret_headers: frozenset = frozenset()
    max_masked_body: int = 32 << 20
    browser_login: bool = False
    oidc_client_id: str = "sealgate"
    oidc_scopes: tuple[str, ...] = ("openid", "profile", "email")
    session_lifetime: float = 8 * 3600.0
    idle_timeout: float = 120.0
    #: Largest request body taken (bytes); past it, 413 and the connection closes.
    max_body: int = 64 << 20
    #: How long the backend may go silent (before or inside its response).
    backend_timeout: float = 60.0
    #: Keep encoded slashes, dots, backslashes and controls in targets.
    lenient_targets: bool = False
    inject: tuple[tuple[bytes, bytes], ...] = attrs.field(default=(), repr=False)
    oidc_client_secret: str | None = attrs.field(default=None, repr=False)


def parseOptions(options: dict, where) -> HTTPOptions:
    t = Table(options, where)
    inject: list[tuple[bytes, bytes]] = []
    secretHeaders = {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"}

    bearer = resolveSecret(t, "backend_bearer", required=False)
    if bearer is not None:
        inject.append((b"Authorization", b"Bearer " + bearer.encode()))

    user = t.str("backend_basic_user")
    password = resolveSecret(t, "backend_basic_password", required=False)
    if (user is None) != (password is None):
        raise where.error("backend_basic_user", "basic auth needs both a user and a password",
                          "set backend_basic_user and backend_basic_password_env together")
    if user is not None:
        if bearer is not None:
            raise where.error("backend_basic_user", "both bearer and basic backend auth are set",
                              "keep one of backend_bearer_env or backend_basic_user")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        inject.append((b"Authorization", b"Basic " + token.encode()))

    header = t.str("backend_header")
    value = resolveSecret(t, "backend_header", required=False)
    if (header is None) != (value is None):
        raise where.error("backend_header", "a backend header needs a name and a value",
                          'set backend_header = "X-Api-Key" and backend_header_env = "VAR"')
    if header is not None:
        if not _HEADER_NAME.match(header):
            raise where.error("backend_header", f"{header!r} is not a header name",
                              'write a token such as "X-Api-Key"')
        assert value is not None  # set together with header, checked just above
        inject.append((header.encode(), value.encode()))
        secretHeaders.add(header.lower().encode())

    for h in t.strings("secret_headers"):
        if not _HEADER_NAME.match(h):
            raise where.error("secret_headers", f"{h!r} is not a header name")
        secretHeaders.add(h.lower().encode())

    prefix = t.str("path_prefix")
    if prefix is not None and not prefix.startswith("/"):
        raise where.error("path_prefix", f"{prefix!r} does not start with /", 'write e.g. "/grafana"')
    cert, key = t.str("tls_cert"), t.str("tls_key")
    if (cert is None) != (key is None):
        raise where.error("tls_cert", "TLS needs both tls_cert and tls_key",
                          "set both to PEM file paths, or neither")
    if cert is not None:
        for k, path in (("tls_cert", cert), ("tls_key", key)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise where.error(k, f"cannot read {path}: {e.strerror}",
                                  "point it at a readable PEM file")
    browser = t.bool("browser_login", False)
    clientSecret = resolveSecret(t, "oidc_client_secret", required=False)
    scopes = t.strings("oidc_scopes", ("openid", "profile", "email"))
    if browser and "openid" not in scopes:
        raise where.error("oidc_scopes", "browser login needs the openid scope",
                          'write oidc_scopes = ["openid", ...]')
    opts = HTTPOptions(
        hosts=tuple(h.lower() for h in t.strings("hosts")),
        path_prefix=prefix.rstrip("/") or None if prefix else None,
        tls_cert=cert, tls_key=key,
        preserve_host=t.bool("preserve_host", False),
        secret_headers=frozenset(secretHeaders),
        max_masked_body=int(t.number("max_masked_body", 32 << 20, minimum=1024)),
        browser_login=browser,
        oidc_client_id=t.str("oidc_client_id", "sealgate"),
        oidc_scopes=scopes,
        session_lifetime=t.duration("session_lifetime", 8 * 3600.0),
        idle_timeout=t.duration("idle_timeout", 120.0),
        max_body=int(t.number("max_body", 64 << 20, minimum=0)),
        backend_timeout=_positive(t, "backend_timeout", 60.0),
        lenient_targets=t.bool("lenient_targets", False),
        inject=tuple(inject),
        oidc_client_secret=clientSecret,
    )
    t.finish()
    return opts


def _positive(t: Table, key: str, default: float) -> float:
    value = t.duration(key, default)
    if value <= 0:
        raise t.where.error(key, f"must be longer than 0 s, not {value}", f'write e.g. {key} = "60s"')
    return value


@implementer(IProtocolPlugin)
class HTTPPlugin:
    """
    HTTP(S) reverse proxy.  Connections sharing a listen string share one
    listener, which routes by Host name and path prefix; C{makeFactory}
    returns that same listener for each of them.
    """

    name = "http"
    ruleKeys = ("query",)
    exportFormats = (
        ExportFormat("har", "application/json", ".har", "HAR 1.2 (browser devtools, HAR viewers)",
                     "sealgate.protocols.http.har:exportHar"),
        ExportFormat("transcript", TEXT, ".txt", "the exchanges as text",
                     "sealgate.protocols.http.har:exportTranscript", player="text"),
    )

    def __init__(self):
        self._sites: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def parseOptions(self, options, where):
        return parseOptions(options, where)

    def makeFactory(self, connection, gateway):
        from sealgate.protocols.http._relay import buildListener

        sites = self._sites.setdefault(gateway, {})
        key = (connection.listen, id(gateway.config))
        factory = sites.get(key)
        if factory is None:
            shared = [c for c in gateway.config.connections
                      if c.protocol == "http" and c.listen == connection.listen]
            if connection not in shared:
                shared.append(connection)
            factory = sites[key] = buildListener(shared, gateway)
        return factory

    def replay(self, frames, out, speed):
        from sealgate.protocols.http.har import replay

        replay(frames, out, speed)


plugin = HTTPPlugin()
