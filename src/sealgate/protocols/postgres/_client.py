"""The client leg: TLS, the client's login with its token or API key, then the relay."""

import ipaddress
import secrets

from twisted.internet import endpoints
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from sealgate import noDelay
from sealgate.endpoint import listensOnLoopbackOnly
from sealgate.flow import OutputRefused, Preamble
from sealgate.identity import AuthenticationFailed
from sealgate.interfaces import IPreLoginClient
from sealgate.prelogin import BUSY, SOURCE_BUSY, TIMEOUT, TOO_LARGE
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._backend import BackendLeg, CancelSender
from sealgate.protocols.postgres._relay import Relay
from sealgate.protocols.postgres._state import LocalProtocolError, Phase, PhaseEvent, phaseStep
from sealgate.protocols.postgres.settings import SessionSettings
from sealgate.session import SessionRefused

#: Startup parameters the gateway decides; the rest go to the backend as sent.
_OWN_PARAMS = frozenset({"user", "database", "application_name", "replication"})


def _passOn(key: str) -> bool:
    return key not in _OWN_PARAMS and not key.startswith("_pq_.")


#: SQLSTATEs of the pre-login refusals: what PostgreSQL itself sends for an
#: authentication timeout, too many connections, and an oversized message.
#: SQLSTATEs of a session the core ends, by close reason (else 57P01, shutdown).
_ABORT_CODES = {"store failed": "58030", "credential revoked": "28000",
                "credential expired": "28000"}

_REFUSAL_CODES = {TIMEOUT: "57014", BUSY: "53300", SOURCE_BUSY: "53300", TOO_LARGE: "08P01"}


def isLoopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@implementer(IPreLoginClient)
class ClientLeg(Relay, Protocol):
    """One client connection, from SSLRequest to Terminate."""

    _log = Logger()

    _deadline = None  # the backend login's connect_timeout, while it runs
    _silent = False   # the backend missed it
    _fatal: str | None = None  # why the gateway hung up, for the sealed close

    def __init__(self, factory):
        self.factory = factory
        self.phase = Phase.STARTUP
        self.tls = False
        # Before login a message may be only as big as the pre-login
        # allowance, not max_message: nobody unauthenticated buffers 256 MB.
        limits = factory.gateway.config.limits
        self.reader = w.Reader(frontend=True, startup=True, maxMessage=limits.max_prelogin_bytes)
        self.login = None
        self._refusal: tuple[str, str] | None = None
        self.session = None
        self.backend = None
        self.connection = None
        self.startup = None
        self.closed = False
        self.fakeKey = None
        self._early = Preamble()
        self.sqlSettings = SessionSettings()

    @property
    def options(self):
        return self.connection.options

    def advance(self, event: PhaseEvent) -> None:
        """Move the connection's phase by its one table; a transition it lacks raises L{LocalProtocolError}."""
        self.phase = phaseStep(self.phase, event)

    def connectionMade(self):
        # Small request/response messages: Nagle plus delayed ACKs would add
        # tens of milliseconds to every round trip.
        noDelay(self.transport)
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", "")
        self.client = f"{self.peer}:{getattr(peer, 'port', '')}"
        self.login = self.factory.gateway.prelogin.admit(self.factory.connection.name,
                                                         self.transport, self)

    # -- startup and login ---------------------------------------------------------

    def dataReceived(self, data):
        phase = self.phase
        if phase is Phase.READY:
            try:
                self.relayFromClient(data)
            except (w.ProtocolError, LocalProtocolError) as e:
                self.fatal("08P01", f"sealgate: protocol violation: {e}")
            return
        if self._refusal is not None:
            return self._refusedData(data)
        if phase is Phase.CLOSED or not self.login.dataReceived(len(data)):
            return
        self.reader.receive_data(data)
        try:
            while self.phase is Phase.STARTUP or self.phase is Phase.PASSWORD:
                ev = self.reader.next_event()
                if ev is w.NEED_DATA:
                    return
                self._startupEvent(ev)
        except (w.ProtocolError, LocalProtocolError) as e:
            self.fatal("08P01", f"sealgate: protocol violation: {e}")

    def _startupEvent(self, ev):
        if self.phase is Phase.PASSWORD:
            if ev.type != ord("p"):
                raise w.ProtocolError(f"expected a password message, got {chr(ev.type)!r}")
            self._password(w.decodeFrame(ev, True).password())
            return
        msg = w.decodeFrame(ev, True)
        if isinstance(msg, w.SSLRequest):
            if self.tls or self.reader.pending():
                # Bytes sent before the handshake could be injected by anyone
                # on the path (CVE-2021-23214): refuse rather than trust them.
                raise w.ProtocolError("data after SSLRequest before TLS started")
            ctx = self.factory.tlsContext
            if ctx is None:
                self._early.send(self.transport, b"N")
            else:
                self._early.send(self.transport, b"S")
                self.transport.startTLS(ctx)
                self.tls = True
            self.reader.expectStartup()
        elif isinstance(msg, w.GSSENCRequest):
            self._early.send(self.transport, b"N")
            self.reader.expectStartup()
        elif isinstance(msg, w.CancelRequest):
            self.factory.cancel(msg.pid, msg.key)
            self.advance(PhaseEvent.CLOSE)
            self.transport.loseConnection()
        else:
            self._startupMessage(msg, ev.raw)

    def _startupMessage(self, msg: w.StartupMessage, raw: bytes):
        self.startup = msg
        self.sqlSettings.startup(msg.params)
        user = msg.get("user") or ""
        dbname = msg.get("database") or user
        if msg.get("replication") not in (None, "false", "0", "off", "no"):
            return self.fatal("0A000", "sealgate: replication connections are not supported")
        conn = self.factory.route(dbname)
        if conn is None:
            names = ", ".join(self.factory.names())
            return self.fatal("3D000", f'sealgate: no connection named "{dbname}" here; '
                              f"use one of: {names} as the database name")
        self.connection = conn
        opts = conn.options
        if opts.require_tls and not self.tls:
            return self.fatal("28000", f"sealgate: connection {conn.name} requires TLS; "
                              "connect with sslmode=require or stricter")
        if not self.tls and not (opts.allow_cleartext_on_loopback and isLoopback(self.peer)
                                 and self.factory.loopbackOnly):
            return self.fatal("28000", _cleartextRefusal(conn.name, self.factory.tlsContext is not None,
                                                         opts.allow_cleartext_on_loopback))
        self.claimed = user
        self._early.received(raw)
        ask = w.Authentication(w.AUTH_CLEARTEXT).encode()
        unknown = tuple(k for k, _ in msg.params if k.startswith("_pq_."))
        if msg.version != w.PROTOCOL_V3 or unknown:
            # Both legs speak 3.0: say so, as a server that predates the
            # client's minor version or options does.
            ask = w.NegotiateProtocolVersion(0, unknown).encode() + ask
        self._early.send(self.transport, ask)
        self.advance(PhaseEvent.STARTUP_SENT)

    def _password(self, credential: str):
        self.advance(PhaseEvent.PASSWORD_SENT)
        self.transport.pauseProducing()
        gw = self.factory.gateway
        d = gw.authenticate(self.connection, credential, self.client, claimed=self.claimed or None)
        del credential
        d.addCallbacks(self._authenticated, self._authFailed)
        d.addErrback(self._bug)

    def _authFailed(self, f):
        f.trap(AuthenticationFailed)
        self.fatal("28P01", f"sealgate: login refused: {f.value}")

    def _bug(self, f):
        self._log.failure("Login of {client} failed", f, client=self.client)
        self.fatal("XX000", "sealgate: internal error during login")

    def _authenticated(self, identity):
        if self.closed or self.phase is Phase.CLOSED:
            return
        gw = self.factory.gateway
        app = self.startup.get("application_name") or ""
        meta = {"database_user": self.claimed, "application_name": app, "tls": self.tls}
        try:
            self.session = gw.openSession(self.connection, identity, self.client, meta)
        except SessionRefused as e:
            return self.fatal("28000", f"sealgate: {e}")
        self.login.authenticated()
        self.session.abort = self._abort
        self._early.into(self.session)
        self.startOutput()
        name = f"sealgate:{identity.id}" + (f" ({app})" if app else "")
        params = [("user", self.options.username), ("database", self.options.database),
                  ("application_name", name.encode()[:63].decode("utf-8", "ignore"))]
        params += [(k, v) for k, v in self.startup.params if _passOn(k)]
        leg = BackendLeg(self, self.options, tuple(params), self.factory.backendTLS(self.connection))
        ep = endpoints.clientFromString(gw.reactor, self.connection.backend)
        d = ep.connect(_OneShot(leg))
        d.addErrback(self._backendUnreachable)
        # A server that accepts and never answers (or a filtered port) would
        # otherwise hold the client until its own timeout, if it has one.
        self._deadline = gw.reactor.callLater(self.options.connect_timeout, self._backendSilent, d)

    def _backendSilent(self, connecting):
        self._deadline = None
        self._silent = True
        t = self.options.connect_timeout
        self._log.warn("Backend of {connection} did not complete the login within {t} s",
                       connection=self.connection.name, t=t)
        self.fatal("08001", f"sealgate: the database behind connection {self.connection.name} did not "
                   f"answer within {t:g} s (connect_timeout); try again later or tell the operator")
        connecting.cancel()  # still connecting: give up; connected: nothing to do
        if self.backend is not None:
            self.backend.transport.abortConnection()

    def _stopDeadline(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _backendUnreachable(self, f):
        self._stopDeadline()
        if self._silent:
            return  # the deadline said why
        why = f.getErrorMessage()
        self._log.warn("Backend of {connection} unreachable: {why}",
                       connection=self.connection.name, why=why)
        self.fatal("08001", f"sealgate: cannot reach the database behind connection "
                   f"{self.connection.name} ({why}); try again later or tell the operator")

    # -- backend events --------------------------------------------------------------

    def backendConnected(self, leg):
        self.backend = leg
        if self.closed:
            leg.transport.loseConnection()

    def backendAuthenticated(self):
        self.toClient(w.Authentication(w.AUTH_OK).encode())

    def backendStartupMessage(self, raw: bytes):
        self.sqlSettings.observe(raw)
        self.toClient(raw)

    def backendReady(self, raw: bytes):
        self._stopDeadline()
        if self.closed or self.phase is Phase.CLOSED:
            return  # the client was already told why
        try:
            self.advance(PhaseEvent.BACKEND_READY)
        except LocalProtocolError as e:
            self.fatal("08P01", f"sealgate: protocol violation: {e}")
            return
        self.fakeKey = self.factory.register(self, self.backend.pid)
        self.toClient(w.BackendKeyData(*self.fakeKey).encode() + raw)
        self.startRelay()
        if self.closed or self.phase is not Phase.READY:
            return  # the login's answer could not be vetted: the client was told
        # The login's own pause ends; from here the core pauses the legs (a
        # held statement, a store that cannot keep up).
        self.transport.resumeProducing()
        s = self.session
        s.attach(self.transport, self.backend.transport)
        # Backpressure both ways: a slow reader pauses the other side's reads
        # instead of queueing a whole COPY in memory.  The legs, not the raw
        # transports, so a drained buffer cannot resume a leg the core paused.
        self.transport.registerProducer(s.backendLeg, True)
        self.backend.transport.registerProducer(s.clientLeg, True)

    def backendFailed(self, err):
        self.fatal(err.code, f"sealgate: connection {self.connection.name}: {err}")

    def backendLost(self, reason, wasReady):
        self.backend = None
        self._stopDeadline()
        if self.closed or self.phase is Phase.CLOSED:
            return  # the client was already told why
        if self.phase is Phase.READY and self._terminating:
            self.transport.loseConnection()
            return
        if wasReady:
            self.fatal("08006", f"sealgate: the database behind connection {self.connection.name} "
                       "closed the connection")
            return
        why = reason.getErrorMessage()
        self._log.warn("Backend login on {connection} ended: {why}",
                       connection=self.connection.name, why=why)
        self.fatal("08006", f"sealgate: the database behind connection {self.connection.name} "
                   f"closed the connection during login ({why})")

    def cancelQuery(self):
        """A CancelRequest carried our key: withdraw a held ticket or cancel on the server."""
        if self.phase is not Phase.READY or self.cancelHeld():
            return
        b = self.backend
        if b is None or b.pid is None:
            return
        ep = endpoints.clientFromString(self.factory.gateway.reactor, self.connection.backend)
        ep.connect(_OneShot(CancelSender(b.pid, b.key))).addErrback(lambda f: None)

    # -- ending ------------------------------------------------------------------------

    def _abort(self, message: str) -> None:
        # The errors PostgreSQL itself sends: an I/O error when the store
        # cannot record, the shutdown error at drain timeout.
        reason = self.session.closeReason if self.session is not None else None
        self.fatal(_ABORT_CODES.get(reason or "", "57P01"), f"sealgate: {message}")

    def fatal(self, code: str, message: str):
        """Tell the client why with a FATAL ErrorResponse, then hang up (once)."""
        if self.closed or self.phase is Phase.CLOSED:
            return
        data = w.ErrorResponse.make("FATAL", code, message).encode()
        if self.session is None:
            self._early.refuse(self.transport, data)
        elif not self.session.ended:
            try:
                self.session.send(self.transport, data)
            except OutputRefused:
                pass  # even the error could not be vetted: the hang-up says it
        self.advance(PhaseEvent.CLOSE)
        self._fatal = f"{code}: {message}"  # the sealed close says why the gateway hung up
        self.transport.loseConnection()

    def refuseLogin(self, kind: str, message: str) -> None:
        """The pre-login guard's refusal, in PostgreSQL's words."""
        refusal = (_REFUSAL_CODES.get(kind, "08P01"), f"sealgate: {message}")
        if kind in (BUSY, SOURCE_BUSY) and self.phase is Phase.STARTUP and not self.tls:
            # libpq shows an error only once it has sent its startup message
            # (PostgreSQL's own "too many clients" comes then, too): answer
            # an SSLRequest with "N" and refuse the startup that follows.
            self._refusal = refusal
            return
        self.fatal(*refusal)

    def _refusedData(self, data: bytes) -> None:
        assert self._refusal is not None
        self.reader.receive_data(data)
        try:
            while self.phase is not Phase.CLOSED:
                ev = self.reader.next_event()
                if ev is w.NEED_DATA:
                    return
                if isinstance(w.decodeFrame(ev, True), (w.SSLRequest, w.GSSENCRequest)):
                    self._early.send(self.transport, b"N")
                    self.reader.expectStartup()
                else:
                    self.fatal(*self._refusal)
        except w.ProtocolError:
            self.fatal(*self._refusal)

    def connectionLost(self, reason):
        self._stopDeadline()
        self.closed = True
        self.advance(PhaseEvent.CLOSE)
        if self.login is not None:
            self.login.connectionLost()
        self.factory.unregister(self)
        if self.backend is not None:
            self.backend.transport.loseConnection()
        if self.session is not None:
            self.auditUnfinished()
            d = self.session.end(self._fatal or ("closed" if self._terminating else "client disconnected"))
            if d is not None:
                d.addErrback(lambda f: self._log.failure("Closing the recording of {session} failed",
                                                         f, session=self.session.id))


class _OneShot(Factory):
    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


class ListenerFactory(Factory):
    """
    One listener's factory.  Several postgres connections may share a listen
    endpoint; the client's database name picks one.  It also maps the keys it
    hands clients to live sessions, so a CancelRequest reaches only its own.
    """

    _log = Logger()

    def __init__(self, connection, gateway, tlsContext, backendTLS):
        self.connection = connection
        self.gateway = gateway
        self.tlsContext = tlsContext
        self.backendTLS = backendTLS
        self.options = connection.options
        self._keys: dict[tuple[int, int], ClientLeg] = {}
        self.loopbackOnly = _loopbackListen(connection.listen)

    def buildProtocol(self, addr):
        return ClientLeg(self)

    def _siblings(self):
        return self.gateway.connectionsSharing(self.connection)

    def names(self):
        return [c.name for c in self._siblings()]

    def route(self, dbname: str):
        sibs = self._siblings()
        for c in sibs:
            if c.name == dbname:
                return c
        if len(sibs) == 1 and dbname == sibs[0].options.database:
            return sibs[0]
        return None

    def register(self, leg, pid: int | None = None) -> tuple[int, int]:
        """
        The BackendKeyData to give C{leg}'s client: the real backend pid (so
        notifications and pg_terminate_backend mean what they do directly)
        with a secret of our own, so only this client can cancel its query.
        """
        while True:
            key = (secrets.randbits(31) if pid is None else pid, secrets.randbits(32))
            if key not in self._keys:
                self._keys[key] = leg
                return key

    def unregister(self, leg) -> None:
        if leg.fakeKey is not None:
            self._keys.pop(leg.fakeKey, None)

    def cancel(self, pid: int, key: int) -> None:
        leg = self._keys.get((pid, key))
        if leg is not None:
            leg.cancelQuery()


def _loopbackListen(listen: str) -> bool:
    return listensOnLoopbackOnly(listen)


def _cleartextRefusal(name: str, hasTLS: bool, loopbackAllowed: bool) -> str:
    """Why a password without TLS is refused, naming what would fix it: the client's or the operator's setting."""
    head = "sealgate: the password (your token or API key) is accepted only over TLS"
    if hasTLS:
        return f"{head}; connect with sslmode=require"
    if loopbackAllowed:
        return (f"{head}, or from loopback to a loopback-only listener; connection {name} has no "
                "certificate, so connect from this host (or the operator sets tls_cert and tls_key "
                f"in the [connections.options] of {name})")
    return (f"{head}, and connection {name} has no certificate: the operator sets tls_cert and "
            f"tls_key in its [connections.options], or, for a listener on loopback only, "
            "allow_cleartext_on_loopback = true")
