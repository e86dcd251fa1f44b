"""A small line-based protocol plugin that lives outside sealgate (the plugin API's proof).

Client protocol: the first line is C{AUTH <credential>}; the gateway answers
C{OK <session id>} or C{ERR <why>}.  Every later line is a command: it goes to
the backend, or the client gets C{ERR ...} (denied) or C{HOLD ...} (waiting
for approval).  Backend lines come back to the client, masked.

It uses only the published contract (C{sealgate}, C{sealgate.interfaces}):
commands go through C{session.decide}, every byte to the client through
C{session.send} (masking, output hooks, recording), the login through a
C{Preamble}; the core pauses the legs for holds and for the store.
"""

from twisted.internet import endpoints, protocol
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from sealgate import (
    CONTINUE,
    FROM_CLIENT,
    AuthenticationFailed,
    OutputRefused,
    Preamble,
    Rewrite,
    SessionRefused,
    Table,
)
from sealgate.interfaces import IProtocolPlugin


class _Backend(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.factory.client.backendReady(self)

    def lineReceived(self, line):
        self.factory.client.fromBackend(line)

    def connectionLost(self, reason):
        self.factory.client.transport.loseConnection()


class LineClient(LineReceiver):
    delimiter = b"\n"

    def connectionMade(self):
        self.session = None
        self.backend = None
        self.state = "login"  # login -> opening -> ready <-> held
        self.queued = []
        self.preamble = Preamble()

    def lineReceived(self, line):
        if self.state == "login":
            self.state = "opening"
            return self._login(line)
        if self.state != "ready":
            self.queued.append(line)
            return
        self._command(line)

    def _login(self, line):
        if not line.startswith(b"AUTH "):
            return self._refuse("the first line must be AUTH <credential>")
        # The credential line is never recorded or logged.
        peer = self.transport.getPeer()
        client = f"{peer.host}:{peer.port}"
        d = self.factory.gateway.authenticate(self.factory.connection, line[5:].decode(), client)
        d.addCallback(self._authenticated, client)
        d.addErrback(lambda f: self._refuse(str(f.trap(AuthenticationFailed) and f.value)))

    def _authenticated(self, identity, client):
        try:
            self.session = self.factory.gateway.openSession(self.factory.connection, identity, client)
        except SessionRefused as e:
            return self._refuse(str(e))
        self.session.abort = self._refuse
        self.preamble.into(self.session)
        f = protocol.ClientFactory.forProtocol(_Backend)
        f.client = self
        ep = endpoints.clientFromString(self.factory.gateway.reactor, self.factory.connection.backend)
        ep.connect(f).addErrback(lambda _: self._refuse("the backend is unavailable"))

    def backendReady(self, backend):
        self.backend = backend
        self.session.attach(self.transport, backend.transport)
        self._send(b"OK " + self.session.id.encode())
        self._ready()

    def _ready(self):
        self.state = "ready"
        while self.queued and self.state == "ready":
            self._command(self.queued.pop(0))

    def _command(self, line):
        self.session.received(line + b"\n")
        decision = self.session.decide("line", line.decode("utf-8", "replace"))
        if decision.held:
            # The core pauses the client leg until it is decided; lines
            # already read wait in the queue.
            self.state = "held"
            self._send(b"HOLD " + decision.verdict.message.encode())
            decision.pending.addCallback(self._decided, line).addCallback(lambda _: self._ready())
        else:
            self._decided(decision.verdict, line)

    def _decided(self, verdict, line):
        if verdict is CONTINUE:
            self.backend.sendLine(line)
        elif isinstance(verdict, Rewrite):
            self.backend.sendLine(str(verdict.value).encode())
        else:
            self._send(f"ERR denied by {verdict.rule}: {verdict.reason}".encode())

    def fromBackend(self, line):
        self._send(line)

    def _send(self, line):
        try:
            self.session.send(self.transport, line + b"\n")
        except OutputRefused as e:
            self._refuse(f"output withheld: {e}")

    def _refuse(self, message):
        data = b"ERR " + message.encode() + b"\n"
        if self.session is None:
            self.preamble.refuse(self.transport, data)
        elif not self.session.ended:
            try:
                self.session.send(self.transport, data)
            except OutputRefused:
                pass  # the hang-up says it
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.backend is not None:
            self.backend.transport.loseConnection()
        if self.session is not None:
            self.session.end("client closed")


@implementer(IProtocolPlugin)
class LinePlugin:
    name = "line"

    def parseOptions(self, options, where):
        t = Table(options, where)
        greeting = t.str("greeting", "")
        t.finish()
        return {"greeting": greeting}

    def makeFactory(self, connection, gateway):
        f = protocol.Factory.forProtocol(LineClient)
        f.connection, f.gateway = connection, gateway
        return f

    def replay(self, frames, out, speed):
        for frame in frames:
            arrow = b"> " if frame.direction == FROM_CLIENT else b"< "
            out.write(arrow + (frame.data or b"[redacted]\n"))


plugin = LinePlugin()
