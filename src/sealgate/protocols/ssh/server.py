"""The client leg: Conch server with key-bound or token logins, one gateway session per connection."""

import struct

import attrs
from twisted.conch import avatar, error, interfaces
from twisted.conch.ssh import common, connection, factory, transport, userauth
from twisted.cred import credentials as _creds
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.identity import AuthenticationFailed
from sealgate.interfaces import IPreLoginClient
from sealgate.prelogin import BUSY, SOURCE_BUSY, TOO_LARGE
from sealgate.protocols.ssh import _wire
from sealgate.protocols.ssh.backend import BackendError, connectBackend, preferFastCiphers
from sealgate.protocols.ssh.relay import FlowConnection, ForwardChannel
from sealgate.protocols.ssh.session import BackendSession, ClientSession
from sealgate.session import SessionRefused
from sealgate.throttle import sourceOfClient

MSG_USERAUTH_INFO_REQUEST = 60
MSG_USERAUTH_INFO_RESPONSE = 61


@attrs.frozen
class Authenticated:
    """What a checker hands the realm: the connection chosen and who logged in."""

    connection: object
    identity: object


def _client(t) -> str:
    peer = t.transport.getPeer()
    return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"


@implementer(ICredentialsChecker)
class KeyChecker:
    """Public keys bound to identities (L{sealgate.identity.sshkeys})."""

    credentialInterfaces = (_creds.ISSHPrivateKey,)

    def __init__(self, ctx):
        self.ctx = ctx

    def requestAvatarId(self, c):
        ctx = self.ctx
        gateway = ctx.factory.gateway
        reactor = gateway.reactor
        d = gateway.throttle.wait(sourceOfClient(_client(ctx.transport)),
                                  [c.username.decode("utf-8", "replace")])
        d.addCallback(lambda _: threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), ctx.factory.keys.lookup, c.blob))
        return d.addCallback(self._check, c)

    def _check(self, rec, c):
        from twisted.conch.ssh import keys

        conn = self.ctx.connectionFor(c.username)
        reason = None
        if rec is None:
            reason = "unknown ssh key"
        elif rec.state() != "active":
            reason = f"ssh key {rec.state()}"
        elif conn is None:
            reason = "unknown connection"
        if reason is None and c.signature is not None:
            if not keys.Key.fromString(c.blob).verify(c.signature, c.sigData):
                reason = "bad signature"
        if reason is not None:
            self.ctx.auditFailure(reason, rec.identity if rec else None, c.blob)
            raise UnauthorizedLogin(reason)
        if c.signature is None:
            raise error.ValidPublicKey()
        identity = rec.asIdentity()
        self.ctx.factory.gateway.throttle.succeeded([c.username.decode("utf-8", "replace"),
                                                     identity.id])
        return Authenticated(conn, identity)


@implementer(ICredentialsChecker)
class TokenChecker:
    """An API key or OIDC token given as the password (or keyboard-interactive answer)."""

    credentialInterfaces = (_creds.IUsernamePassword,)

    def __init__(self, ctx):
        self.ctx = ctx

    def requestAvatarId(self, c):
        ctx = self.ctx
        conn = ctx.connectionFor(c.username)
        token = c.password.decode("utf-8", "replace").strip()
        # An unknown connection name costs the same check as a known one, so
        # the answer (and its timing) does not tell which names exist.
        target = conn if conn is not None else ctx.factory.connection
        d = ctx.factory.gateway.authenticate(target, token, _client(ctx.transport))

        def ok(identity):
            if conn is None:
                ctx.auditFailure("unknown connection", identity.id)
                raise UnauthorizedLogin("unknown connection")
            return Authenticated(conn, identity)

        def bad(f):
            f.trap(AuthenticationFailed)
            raise UnauthorizedLogin(f.value.reason)

        return d.addCallbacks(ok, bad)


@implementer(IRealm)
class Realm:
    def __init__(self, ctx):
        self.ctx = ctx

    def requestAvatar(self, avatarId, mind, *interfaces_):
        ctx = self.ctx
        if ctx.transport.login.refused:
            # Timed out (or cut) while the credential was checked: no session.
            raise UnauthorizedLogin("the login took too long")
        try:
            session = ctx.factory.gateway.openSession(
                avatarId.connection, avatarId.identity, _client(ctx.transport),
                {"ssh_user": avatarId.connection.name})
        except SessionRefused as e:
            ctx.banner(f"sealgate: {e}")
            raise UnauthorizedLogin(str(e))
        ctx.transport.login.authenticated()
        session.abort = lambda message: ctx.transport.sendDisconnect(
            transport.DISCONNECT_BY_APPLICATION, f"sealgate: {message}".encode())
        # The core pauses the TCP legs (both: the store cannot keep up); a
        # held command pauses only its own channel.
        session.attach(ctx.transport.transport)
        user = GatewayUser(ctx, avatarId.connection, session)
        return interfaces.IConchUser, user, user.logout


class UserAuthServer(userauth.SSHUserAuthServer):
    """
    Conch's user auth with a portal per client connection (checkers know the
    transport for audit and banners) and keyboard-interactive for tokens.
    """

    _log = Logger()
    protocolMessages = dict(userauth.SSHUserAuthServer.protocolMessages)
    protocolMessages[MSG_USERAUTH_INFO_RESPONSE] = "MSG_USERAUTH_INFO_RESPONSE"

    def serviceStarted(self):
        self.factory = real = self.transport.factory
        self._portal = Portal(Realm(self), [KeyChecker(self), TokenChecker(self)])
        # Conch reads the portal off the factory; ours is per client connection.
        self.transport.factory = _ProxyFactory(real, self._portal)
        try:
            super().serviceStarted()
        finally:
            self.transport.factory = real
        self.supportedAuthentications.append(b"keyboard-interactive")
        self._kbd = None

    def ssh_USERAUTH_REQUEST(self, packet):
        # A client may abandon keyboard-interactive for another attempt.
        self._kbd = None
        return super().ssh_USERAUTH_REQUEST(packet)

    def connectionFor(self, username: bytes):
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return self.factory.connectionNamed(name)

    def auditFailure(self, reason, claimed=None, blob=None):
        extra = {"user": (self.user or b"").decode("utf-8", "replace")}
        if blob is not None:
            from sealgate.identity.sshkeys import fingerprintOf

            extra["key"] = fingerprintOf(blob)
        self.factory.gateway.loginFailed(self.factory.connection, _client(self.transport),
                                         reason, claimed=claimed, claims=[extra["user"]], **extra)

    def banner(self, text: str) -> None:
        assert self.transport is not None  # only called while authenticating
        self.transport.sendPacket(userauth.MSG_USERAUTH_BANNER,
                                  common.NS(text.encode() + b"\r\n") + common.NS(b"en"))

    def auth_keyboard_interactive(self, packet):
        if self._kbd is not None:
            return defer.fail(error.ConchError("keyboard-interactive already in progress"))
        self._kbd = defer.Deferred()
        self.transport.sendPacket(
            MSG_USERAUTH_INFO_REQUEST,
            common.NS(b"sealgate") + common.NS(b"Give an API key or an OIDC access token.")
            + common.NS(b"") + struct.pack(">L", 1) + common.NS(b"Token: ") + b"\x00")
        user = self.user

        def answered(token):
            c = _creds.UsernamePassword(user, token)
            return self._portal.login(c, None, interfaces.IConchUser).addErrback(
                self._ebPassword)

        return self._kbd.addCallback(answered)

    def ssh_USERAUTH_INFO_RESPONSE(self, packet):
        d, self._kbd = self._kbd, None
        if d is None:
            return
        try:
            (count,) = struct.unpack(">L", packet[:4])
            token = common.getNS(packet[4:])[0] if count >= 1 else b""
        except Exception:
            token = b""
        d.callback(token)


class _ProxyFactory:
    """The factory as C{SSHUserAuthServer.serviceStarted} sees it: with our portal."""

    def __init__(self, real, portal):
        self._real = real
        self.portal = portal

    def __getattr__(self, name):
        return getattr(self._real, name)


class GatewayUser(avatar.ConchUser):
    """One authenticated client connection: its session and its backend leg."""

    _log = Logger()

    def __init__(self, ctx, connectionConfig, session):
        super().__init__()
        self.transport = ctx.transport
        self.factory = ctx.factory
        self.connection = connectionConfig
        self.options = connectionConfig.options
        self.session = session
        self.reactor = self.factory.gateway.reactor
        self.agentForwarding = False
        self.backendConn = None
        self.failure: str | None = None
        self._ended = False
        self._waiters: list[defer.Deferred] = []
        self.factory.users.add(self)
        connectBackend(self.reactor, connectionConfig, self).addCallbacks(
            self._backendUp, self._backendDown)

    def _whenBackend(self) -> defer.Deferred:
        if self.backendConn is not None:
            return defer.succeed(self.backendConn)
        if self.failure is not None:
            return defer.fail(BackendError(self.failure))
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    def _backendUp(self, conn):
        self.backendConn = conn
        self.session.attach(None, conn.transport.transport)
        if self._ended:
            conn.transport.loseConnection()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(conn)

    def _backendDown(self, f):
        # A backend's disconnect text is its own words: masked before it is
        # told to the client (channel open failures) or sealed (CLOSE).
        reason = self._maskText(str(f.value)) if f.check(BackendError) else "the backend leg failed"
        if not f.check(BackendError):
            self._log.failure("Backend leg failed for session {session}", f,
                              session=self.session.id)
        self.failure = reason
        self.session.audit("backend_failed", reason=reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(BackendError(reason))

    def openChannel(self, channelType, window, maxPacket, data):
        if channelType == b"session":
            client = ClientSession(self, remoteWindow=window, remoteMaxPacket=maxPacket)
            return self._pair(client, BackendSession(), b"")
        if channelType == b"direct-tcpip":
            if not self.options.allow_port_forwarding:
                raise error.ConchError("port forwarding is not enabled for this connection",
                                       connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
            host, o = _wire._string(data, 0)
            port = struct.unpack(">L", data[o:o + 4])[0]
            self.session.audit("port_forward", host=host.decode("utf-8", "replace"), port=port)
            client = ForwardChannel(remoteWindow=window, remoteMaxPacket=maxPacket)
            backend = ForwardChannel()
            backend.name = client.name = b"direct-tcpip"
            return self._pair(client, backend, data)
        raise error.ConchError(f"channel type {channelType.decode('ascii', 'replace')} is not "
                               "supported", connection.OPEN_UNKNOWN_CHANNEL_TYPE)

    def _pair(self, client, backend, extra):
        def up(conn):
            backend.conn = conn
            backend.peer, client.peer = client, backend
            conn.openChannel(backend, extra)
            return backend.opened

        def opened(_):
            if isinstance(client, ForwardChannel):
                client.session = backend.session = self.session
                client.clientSide = True
            return client

        def failed(f):
            # The reason may be the backend's own text (its open failure, its
            # disconnect message): masked like any output before it is sent.
            if f.check(error.ConchError) and len(f.value.args) == 2:
                text, code = f.value.args
                raise error.ConchError(self._maskText(str(text)), code)
            raise error.ConchError(self._maskText(self.failure or "the backend is not available"),
                                   connection.OPEN_CONNECT_FAILED)

        return self._whenBackend().addCallback(up).addCallbacks(opened, failed)

    def _maskText(self, text: str) -> str:
        masker = self.session.chain.masker
        return text if masker is None else masker.maskText(text)

    def backendChannel(self, channelType, window, maxPacket, data):
        """The backend opens a channel to the client: only agent forwarding."""
        if channelType != b"auth-agent@openssh.com" or not self.agentForwarding:
            raise error.ConchError("refused by sealgate", connection.OPEN_ADMINISTRATIVELY_PROHIBITED)
        backend = ForwardChannel(remoteWindow=window, remoteMaxPacket=maxPacket)
        client = ForwardChannel()
        client.name = backend.name = channelType
        client.conn = self.transport.service
        client.peer, backend.peer = backend, client
        client.session = backend.session = self.session
        client.clientSide = True
        client.conn.openChannel(client, b"")
        return client.opened.addCallback(lambda _: backend)

    def logout(self):
        self._ended = True
        self.factory.users.discard(self)
        if self.backendConn is not None and self.backendConn.transport is not None:
            self.backendConn.transport.loseConnection()
        self.session.end(self.failure or "client disconnected")

    def backendLost(self):
        """The backend connection ended: close the client connection once its channels drain."""
        self.backendConn = None
        if self.failure is None:
            self.failure = "the backend closed the connection"
        service = getattr(self.transport, "service", None)
        if self._ended or not isinstance(service, ServerConnection):
            return
        channels = list(service.channels.values())
        for chan in channels:
            chan.closeAfterData()
        if not channels:
            self.transport.loseConnection()


class ServerConnection(FlowConnection, connection.SSHConnection):
    def getChannel(self, channelType, windowSize, maxPacket, data):
        return self.transport.avatar.openChannel(channelType, windowSize, maxPacket, data)

    def channelClosed(self, channel):
        super().channelClosed(channel)
        user = self.transport.avatar
        if not self.channels and user.backendConn is None and user.failure is not None:
            # The backend is gone and the last channel has drained.
            self.transport.loseConnection()


#: What parsing a malformed message raises in Conch.
_MALFORMED = (struct.error, ValueError, IndexError)
#: What Conch's transport-layer handlers raise for a message before the one it depends on.
_OUT_OF_ORDER = (AttributeError, KeyError, TypeError)
_TRANSPORT_ERRORS = _MALFORMED + _OUT_OF_ORDER
#: Disconnect reasons of the pre-login refusals (RFC 4253 section 11.1).
_REFUSAL_CODES = {BUSY: transport.DISCONNECT_TOO_MANY_CONNECTIONS,
                  SOURCE_BUSY: transport.DISCONNECT_TOO_MANY_CONNECTIONS,
                  TOO_LARGE: transport.DISCONNECT_PROTOCOL_ERROR}


@implementer(IPreLoginClient)
class ServerTransport(transport.SSHServerTransport):
    #: No software version: a banner naming Twisted's tells a scanner which CVEs to try.
    ourVersionString = b"SSH-2.0-sealgate"
    _log = Logger()
    login = None

    def connectionMade(self):
        preferFastCiphers(self)
        super().connectionMade()
        self.login = self.factory.gateway.prelogin.admit(self.factory.connection.name,
                                                         self.transport, self)

    def dataReceived(self, data):
        if self.login.dataReceived(len(data)):
            super().dataReceived(data)

    def refuseLogin(self, kind: str, message: str) -> None:
        """The pre-login guard's refusal, as an SSH disconnect."""
        self.sendDisconnect(_REFUSAL_CODES.get(kind, transport.DISCONNECT_BY_APPLICATION),
                            f"sealgate: {message}".encode())

    def connectionLost(self, reason):
        if self.login is not None:
            self.login.connectionLost()
        super().connectionLost(reason)

    def receiveError(self, reasonCode, description):
        """
        The client sent a disconnect.  Conch logs every one as an error; a
        client that logs out (DISCONNECT_BY_APPLICATION: "disconnected by
        user") has done nothing wrong, so that one is an info line.
        """
        text = description.decode("utf-8", "replace") if isinstance(description, bytes) else description
        if reasonCode == transport.DISCONNECT_BY_APPLICATION:
            self._log.info("Client {peer} disconnected: {why}", peer=self.transport.getPeer(), why=text)
        else:
            self._log.warn("Client {peer} disconnected with code {code}: {why}",
                           peer=self.transport.getPeer(), code=reasonCode, why=text)

    def dispatchMessage(self, messageNum, payload):
        # Conch parses messages where it handles them, so a malformed one
        # (a KEXINIT with a string past its end, say) raises from deep in
        # the transport, and its key exchange handlers assume the messages
        # came in order (a KEXDH_INIT before any KEXINIT finds no
        # algorithm): one line and a protocol-error disconnect, not a
        # traceback per connection in the log.
        refused = _TRANSPORT_ERRORS if messageNum < 50 else _MALFORMED
        try:
            super().dispatchMessage(messageNum, payload)
        except refused as e:
            name = transport.messages.get(messageNum, f"message {messageNum}")
            what = "malformed" if isinstance(e, _MALFORMED) else "out-of-order"
            self._log.warn("SSH client {client} sent a {what} {message} ({error}); disconnected",
                           client=_client(self), what=what, message=name.removeprefix("MSG_"),
                           error=f"{type(e).__name__}: {e}")
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, f"{what} {name}".encode())


class GatewaySSHFactory(factory.SSHFactory):
    """
    Listens for one or more SSH connections sharing a listen endpoint; the
    SSH user name picks the connection.
    """

    protocol = ServerTransport
    services = {b"ssh-userauth": UserAuthServer, b"ssh-connection": ServerConnection}

    def __init__(self, connectionConfig, gateway, hostKeys, keyStore):
        self.connection = connectionConfig
        self.gateway = gateway
        self.hostKeys = hostKeys
        self.keys = keyStore
        self.portal = None
        #: Live L{GatewayUser}s (one per authenticated client connection).
        self.users: set = set()

    def connectionNamed(self, name: str):
        for c in self.gateway.connectionsSharing(self.connection):
            if c.name == name:
                return c
        return None

    def getPublicKeys(self):
        return {t: k.public() for t, k in self.hostKeys.items()}

    def getPrivateKeys(self):
        return dict(self.hostKeys)
