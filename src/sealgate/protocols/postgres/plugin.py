"""The postgres protocol plugin: options, TLS contexts, the listener factory, replay."""

import attrs
from twisted.internet import ssl
from zope.interface import implementer

from sealgate.config import Table, resolveSecret
from sealgate.endpoint import hostPort
from sealgate.export import TEXT, ExportFormat
from sealgate.interfaces import IProtocolPlugin
from sealgate.protocols.postgres._wire import DEFAULT_MAX_MESSAGE
from sealgate.protocols.postgres.classify import KINDS
from sealgate.protocols.postgres.effects import EFFECTS, PRESETS
from sealgate.tlsfiles import serverOptions, trustRoot

BACKEND_TLS = ("disable", "require", "verify-full")


@attrs.frozen
class PostgresOptions:
    """
    A postgres connection's validated options; the backend password is
    resolved at start-up and kept out of C{repr}.
    """

    database: str
    username: str
    password: str | None = attrs.field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    require_tls: bool = False
    allow_cleartext_on_loopback: bool = False
    backend_tls: str = "disable"
    backend_ca: str | None = None
    backend_tls_hostname: str | None = None
    max_message: int = DEFAULT_MAX_MESSAGE
    #: Seconds to reach the backend and log in to it before the client is told.
    connect_timeout: float = 10.0
    certPEM: bytes = attrs.field(default=b"", repr=False)
    keyPEM: bytes = attrs.field(default=b"", repr=False)
    caPEM: bytes = attrs.field(default=b"", repr=False)


def _readPEM(t: Table, key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise t.where.error(key, f"cannot read {path}: {e.strerror}", "point it at a readable PEM file")
    if b"-----BEGIN" not in data:
        raise t.where.error(key, f"{path} is not a PEM file", "give a PEM-encoded file")
    return data


def parseOptions(options: dict, where) -> PostgresOptions:
    t = Table(options, where)
    database = t.str("database", required=True)
    username = t.str("username", required=True)
    password = resolveSecret(t, "password", required=False)
    cert, key = t.str("tls_cert"), t.str("tls_key")
    if (cert is None) != (key is None):
        raise where.error("tls_cert", "client-leg TLS needs both tls_cert and tls_key",
                          "set both to PEM file paths, or neither")
    certPEM = _readPEM(t, "tls_cert", cert) if cert else b""
    keyPEM = _readPEM(t, "tls_key", key) if key else b""
    if certPEM:
        try:
            serverOptions(certPEM, keyPEM)
        except Exception as e:
            raise where.error("tls_key", f"cannot use {cert} with {key}: {e}",
                              "give the certificate and its matching private key")
    requireTLS = t.bool("require_tls", False)
    if requireTLS and not cert:
        raise where.error("require_tls", "TLS is required but no certificate is configured",
                          "set tls_cert and tls_key")
    backendTLS = t.str("backend_tls", "disable")
    if backendTLS not in BACKEND_TLS:
        raise where.error("backend_tls", f"unknown mode {backendTLS!r}",
                          "use disable, require or verify-full")
    ca = t.str("backend_ca")
    if backendTLS == "verify-full" and not ca:
        raise where.error("backend_ca", "verify-full needs the CA that signed the server's "
                          "certificate", 'set backend_ca = "/path/ca.pem"')
    caPEM = _readPEM(t, "backend_ca", ca) if ca else b""
    opts = PostgresOptions(
        database=database, username=username, password=password, tls_cert=cert, tls_key=key,
        require_tls=requireTLS,
        allow_cleartext_on_loopback=t.bool("allow_cleartext_on_loopback", False),
        backend_tls=backendTLS, backend_ca=ca,
        backend_tls_hostname=t.str("backend_tls_hostname"),
        max_message=int(t.number("max_message", DEFAULT_MAX_MESSAGE, minimum=1024)),
        connect_timeout=t.timeout("connect_timeout", 10.0),
        certPEM=certPEM, keyPEM=keyPEM, caPEM=caPEM,
    )
    t.finish()
    return opts


def clientTLSContext(opts: PostgresOptions):
    if not opts.certPEM:
        return None
    # libpq 17+ offers ALPN "postgresql"; a server that negotiates nothing
    # makes OpenSSL abort the handshake, so agree to it as PostgreSQL does.
    return serverOptions(opts.certPEM, opts.keyPEM, acceptableProtocols=[b"postgresql"])


def backendHost(backend: str) -> str:
    return hostPort(backend)[0]


def backendTLSOptions(connection):
    opts = connection.options
    if opts.backend_tls == "disable":
        return None
    if opts.backend_tls == "require":
        return ssl.CertificateOptions()
    host = opts.backend_tls_hostname or backendHost(connection.backend)
    return ssl.optionsForClientTLS(host, trustRoot=trustRoot(opts.caPEM))


@implementer(IProtocolPlugin)
class PostgresPlugin:
    name = "postgres"
    ruleKeys = ("statements", "effects", "relations", "sql_regex")
    ruleVocabulary = {"statements": KINDS, "effects": tuple(EFFECTS)}
    rulePresets = PRESETS
    exportFormats = (
        ExportFormat("transcript", TEXT, ".sql.txt",
                     "SQL transcript: statements, parameters and results as the client saw them",
                     "sealgate.protocols.postgres.replay:exportTranscript", player="text"),
    )

    def parseOptions(self, options, where):
        return parseOptions(options, where)

    def makeFactory(self, connection, gateway):
        from sealgate.protocols.postgres._client import ListenerFactory

        cache: dict = {}

        def backendTLS(conn):
            if conn.name not in cache:
                cache[conn.name] = backendTLSOptions(conn)
            return cache[conn.name]

        return ListenerFactory(connection, gateway, clientTLSContext(connection.options), backendTLS)

    def replay(self, frames, out, speed):
        from sealgate.protocols.postgres.replay import replay

        replay(frames, out, speed)


plugin = PostgresPlugin()
