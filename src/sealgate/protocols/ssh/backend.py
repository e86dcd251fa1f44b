"""The backend leg: a Conch client that logs in with the connection's credential and checks host keys."""

from twisted.conch import error
from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.ssh import connection, keys, transport, userauth
from twisted.internet import defer, endpoints, protocol, threads
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from sealgate.protocols.ssh.hostkeys import knownHostsName
from sealgate.protocols.ssh.relay import FlowConnection


class BackendError(Exception):
    """The backend leg failed; C{str(exc)} is safe to show the client (no secret in it)."""


_FAST_CIPHERS = [b"aes128-ctr", b"aes256-ctr", b"aes192-ctr"]


def preferFastCiphers(t) -> None:
    """AES-CTR first: the fastest cipher both Conch and OpenSSH offer."""
    t.supportedCiphers = [c for c in _FAST_CIPHERS if c in t.supportedCiphers] + [
        c for c in t.supportedCiphers if c not in _FAST_CIPHERS]


class BackendTransport(transport.SSHClientTransport):
    _log = Logger()

    def connectionMade(self):
        preferFastCiphers(self)
        self.factory.leg = self
        super().connectionMade()

    def verifyHostKey(self, pubKey, fingerprint):
        # Synchronous on purpose: known_hosts was read (in a thread) before
        # connecting, and Conch mis-decrypts packets that arrive while an
        # asynchronous verification is pending.
        f = self.factory
        key = keys.Key.fromString(pubKey)
        name = f.hostName.decode()
        try:
            ok = f.knownHosts.hasHostKey(f.hostName, key)
        except error.HostKeyChanged:
            e = BackendError(
                f"the host key of the backend {name} has CHANGED from the one in "
                f"{f.options.known_hosts}; refusing to connect (an operator must check the "
                "server and update known_hosts)")
        else:
            if ok:
                return defer.succeed(True)
            e = BackendError(
                f"the backend {name} presented a host key "
                f"({key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)}) that is not in "
                f"{f.options.known_hosts}; refusing to connect (an operator must add it)")
        self._log.warn("Backend host key refused: {reason}", reason=str(e))
        f.fail(e)
        return defer.fail(e)

    def connectionSecure(self):
        self.requestService(BackendAuth(self.factory.options.username.encode(),
                                        BackendConnection(self.factory)))

    def sendDisconnect(self, reason, desc):
        if reason == transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE:
            self.factory.fail(BackendError(
                "the backend refused the gateway's login (an operator must check the "
                "connection's username and key or password)"))
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode, description):
        self.factory.fail(BackendError(f"the backend disconnected: "
                                       f"{description.decode('utf-8', 'replace')}"))

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.fail(BackendError("the backend closed the connection during login"))
        if self.factory.connection is not None and self.factory.avatar is not None:
            self.factory.avatar.backendLost()


class BackendAuth(userauth.SSHUserAuthClient):
    """Key or password from the connection options; never asks anyone."""

    def __init__(self, user, instance):
        super().__init__(user, instance)
        self._keyTried = False

    def serviceStarted(self):
        opts = self.instance.factory.options
        self.preferredOrder = [b"publickey"] if opts.privateKey is not None else [b"password"]
        super().serviceStarted()

    def getPublicKey(self):
        if self._keyTried or self.instance.factory.options.privateKey is None:
            return None
        self._keyTried = True
        return self.instance.factory.options.privateKey.public()

    def getPrivateKey(self):
        return defer.succeed(self.instance.factory.options.privateKey)

    def getPassword(self, prompt=None):
        pw = self.instance.factory.options.password
        if pw is None or self._keyTried == "password":
            return None
        self._keyTried = "password"
        return defer.succeed(pw.encode())


class BackendConnection(FlowConnection, connection.SSHConnection):
    """The backend SSH connection of one client connection."""

    def __init__(self, factory):
        super().__init__()
        self.factory = factory

    def serviceStarted(self):
        super().serviceStarted()
        self.factory.ready(self)

    def getChannel(self, channelType, windowSize, maxPacket, data):
        # Channels the backend opens towards the client (agent forwarding).
        avatar = self.factory.avatar
        if avatar is None:
            raise error.ConchError("no client", connection.OPEN_CONNECT_FAILED)
        return avatar.backendChannel(channelType, windowSize, maxPacket, data)


class BackendFactory(protocol.ClientFactory):
    """Builds one backend connection; C{result} fires with its L{BackendConnection}."""

    protocol = BackendTransport

    def __init__(self, options, hostName: bytes, avatar, reactor):
        self.options = options
        self.hostName = hostName
        self.avatar = avatar
        self.reactor = reactor
        self.result: defer.Deferred = defer.Deferred()
        self.connection = None
        self.knownHosts = None
        self.leg: BackendTransport | None = None

    def ready(self, conn):
        self.connection = conn
        if not self.result.called:
            self.result.callback(conn)

    def fail(self, exc):
        if not self.result.called:
            self.result.errback(exc)


def connectBackend(reactor, connectionConfig, avatar) -> defer.Deferred:
    """Connect and log in to the backend; fires with a L{BackendConnection}."""
    opts = connectionConfig.options
    try:
        name = (opts.host_key_alias.encode() if opts.host_key_alias
                else knownHostsName(connectionConfig.backend))
    except ValueError:
        return defer.fail(BackendError(
            f"cannot tell the known_hosts name of the backend of {connectionConfig.name}; "
            "an operator must set host_key_alias"))
    factory = BackendFactory(opts, name, avatar, reactor)
    d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), KnownHostsFile.fromPath,
                                  FilePath(opts.known_hosts))

    connecting: list = [None]  # the TCP connect, once known_hosts is read

    def loaded(known):
        if factory.result.called:
            return None  # the deadline passed while known_hosts was read
        factory.knownHosts = known
        ep = endpoints.clientFromString(reactor, connectionConfig.backend)
        connecting[0] = ep.connect(factory)
        return connecting[0]

    def noKnownHosts(f):
        factory.fail(BackendError(f"cannot read the known_hosts file {opts.known_hosts}"))

    def noConnect(f):
        factory.fail(BackendError(f"cannot reach the backend of {connectionConfig.name}: "
                                  f"{f.getErrorMessage()}"))

    d.addCallbacks(loaded, noKnownHosts).addErrback(noConnect)
    timeout = getattr(opts, "connect_timeout", 10.0)

    def silent():
        # A server that accepts and never answers would hold the client's
        # channel open for as long as the client waits.
        factory.fail(BackendError(f"the backend of {connectionConfig.name} did not answer within "
                                  f"{timeout:g} s (connect_timeout); try again later or tell the operator"))
        if connecting[0] is not None:
            connecting[0].cancel()  # still connecting: give up; connected: nothing to do
        if factory.leg is not None and factory.leg.transport is not None:
            factory.leg.transport.abortConnection()

    deadline = reactor.callLater(timeout, silent)

    def settled(result):
        if deadline.active():
            deadline.cancel()
        return result

    return factory.result.addBoth(settled)
