"""Public test helpers for sealgate and its plugin authors: fakes of the core's parts and an in-process gateway.

Like treq.testing, these are API.  A protocol plugin's reactor-free tests
drive its relay with L{fakeSession} (a real session, chain and approvals
over a L{FakeStore}) and StringTransports for both legs; its end-to-end
tests start a real gateway with L{startGateway}.
"""

import re
import socketserver
import threading
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from sealgate.approvals import Approvals
from sealgate.chain.verdicts import Deny
from sealgate.config import ConnectionConfig, Rule, loadConfig
from sealgate.gateway import Gateway
from sealgate.identity import AuthenticationFailed, Identity
from sealgate.interfaces import (
    ICommandHook,
    IInterceptorPlugin,
    IOutputHook,
    IRecordingStore,
    ISessionRecording,
)
from sealgate.service import GatewayService, StartupError
from sealgate.session import TO_CLIENT, Session

__all__ = [
    "CommandInterceptor", "EchoBackend", "FakeIdentities", "FakeRecording", "FakeStore", "FakeTransport",
    "OutputRecorder", "RunningGateway", "fakeGateway", "fakeSession", "rule", "startGateway",
]


@implementer(ISessionRecording)
@attrs.define(eq=False)
class FakeRecording:
    """
    A session recording that keeps what it is given: C{frames} as
    C{(direction, data, channel)}, C{events} as C{(kind, fields)}, and the
    close as C{closed = (reason, stats)}.
    """

    sessionId: str
    info: dict = attrs.field(factory=dict)
    frames: list = attrs.field(factory=list)
    events: list = attrs.field(factory=list)
    closed: tuple | None = None

    def frame(self, direction, data, channel=0):
        if self.closed is not None:
            raise AssertionError(f"frame recorded after the close of {self.sessionId}")
        self.frames.append((direction, bytes(data), channel))

    def event(self, kind, fields):
        self.events.append((kind, dict(fields)))

    def close(self, reason, stats):
        self.closed = (reason, stats)
        return defer.succeed(None)

    def bytesTo(self, channel: int | None = None) -> bytes:
        """Everything recorded as sent to the client (on one channel, or all)."""
        return b"".join(d for direction, d, c in self.frames
                        if direction == TO_CLIENT and (channel is None or c == channel))

    def bytesFrom(self, channel: int | None = None) -> bytes:
        """Everything recorded as sent by the client."""
        return b"".join(d for direction, d, c in self.frames
                        if direction != TO_CLIENT and (channel is None or c == channel))

    def eventsOf(self, kind: str) -> list[dict]:
        return [fields for k, fields in self.events if k == kind]


@implementer(IRecordingStore)
@attrs.define(eq=False)
class FakeStore:
    """
    A recording store in memory with the pressure contract: L{setPressure}
    tells every observer, as the real store does when its backlog crosses
    C{max_unsealed}, its writer is restarting or the disk is full.
    """

    recordings: dict = attrs.field(factory=dict)
    events: list = attrs.field(factory=list)
    problem: str | None = None
    _pressure: str | None = None
    _observers: list = attrs.field(factory=list)

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def healthy(self):
        return self.problem

    def openSession(self, sessionId, info):
        rec = self.recordings[sessionId] = FakeRecording(sessionId, dict(info))
        return rec

    def auditEvent(self, event):
        self.events.append(dict(event))

    def pressure(self) -> str | None:
        return self._pressure

    def addPressureObserver(self, fn) -> None:
        self._observers.append(fn)

    def removePressureObserver(self, fn) -> None:
        self._observers.remove(fn)

    def setPressure(self, state: str, reason: str | None = None) -> None:
        """C{state}: "flowing", "paused" or "failed"; C{reason} safe to show."""
        self._pressure = None if state == "flowing" else (reason or state)
        for fn in list(self._observers):
            fn(state, reason)


@attrs.define
class FakeIdentities:
    """Credentials to identities: C{authenticate} knows exactly C{known}."""

    known: dict = attrs.field(factory=dict)

    def authenticate(self, credential):
        identity = self.known.get(credential)
        if identity is None:
            raise AuthenticationFailed("unknown credential")
        return identity


@implementer(IInterceptorPlugin)
@attrs.frozen
class _Given:
    interceptor: Any
    name: str = "given"
    order: int = 0

    def build(self, config, gateway):
        return self.interceptor


@attrs.frozen
class _Config:
    raw: dict = attrs.field(factory=dict)
    connections: tuple = ()


def fakeGateway(interceptors=(), reactor=None, identities=None, store=None) -> Gateway:
    """
    A real L{Gateway} (chain, live sessions, pressure handling) over a
    L{FakeStore}, real L{Approvals} on C{reactor} (a L{MemoryReactorClock}
    by default: advance it to expire tickets) and L{FakeIdentities}.
    C{interceptors} are L{sealgate.interfaces.IInterceptor}s, in order.
    """
    reactor = reactor if reactor is not None else MemoryReactorClock()
    store = store if store is not None else FakeStore()
    return Gateway(_Config(), identities or FakeIdentities(), store,
                   Approvals(reactor, store), [_Given(i) for i in interceptors], reactor)


def fakeSession(interceptors=(), *, gateway=None, protocol="line", connection="test",
                identity=None, client="127.0.0.1:50000", meta=None) -> Session:
    """
    A session opened on L{fakeGateway} (or C{gateway}); its
    C{session.recording} is a L{FakeRecording} and C{session.gateway.store}
    the L{FakeStore}.
    """
    gw = gateway if gateway is not None else fakeGateway(interceptors)
    conn = ConnectionConfig(connection, protocol, "tcp:0:interface=127.0.0.1",
                            "tcp:host=127.0.0.1:port=1")
    return gw.openSession(conn, identity or Identity("alice", {"eng"}, "apikey"), client, meta)


def rule(name: str, action: str, **kw) -> Rule:
    """
    A C{[[rules]]} entry for every connection and group: C{action} "deny",
    "approve" (approvers "leads", 30 s to decide) or "allow"; C{matchers}
    as the config has them (C{{"commands": ["^rm "]}}, C{{"statements": ["DROP"]}}).
    """
    base: dict[str, Any] = dict(connections=("*",), groups=("*",), matchers={},
                                approvers=("leads",), approvals_needed=1, expires=30.0,
                                reason="not here")
    base.update(kw)
    return Rule(name=name, action=action, **base)


@implementer(ICommandHook)
@attrs.define
class CommandInterceptor:
    """
    A command hook with one answer: C{verdict} (None continues), or a
    callable C{verdict(hook)}; C{seen} keeps the commands' texts.
    """

    verdict: Any = None
    name: str = "commands"
    seen: list = attrs.field(factory=list)

    def appliesTo(self, session):
        return True

    def command(self, hook):
        self.seen.append(hook.text)
        return self.verdict(hook) if callable(self.verdict) else self.verdict


@implementer(IOutputHook)
@attrs.define
class OutputRecorder:
    """
    An output hook that keeps what it is shown: C{seen} as C{(data,
    context)}; with C{refuse} it denies everything (the core refuses it).
    """

    name: str = "output"
    refuse: bool = False
    seen: list = attrs.field(factory=list)

    def appliesTo(self, session):
        return True

    def output(self, hook):
        self.seen.append((hook.data, dict(hook.context)))
        return Deny(self.name, "not for you") if self.refuse else None

    def shown(self, channel: int | None = None) -> bytes:
        """Every byte shown, on one channel or all."""
        return b"".join(d for d, ctx in self.seen if channel is None or ctx.get("channel") == channel)


class _EchoLines(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)


class EchoBackend:
    """
    A real TCP backend for end-to-end tests of a line protocol: it listens
    on 127.0.0.1 (a port the OS picks, L{port}) and sends back every line
    it gets.  A context manager; it runs in threads, off the reactor.
    """

    def __init__(self) -> None:
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoLines)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "EchoBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FakeTransport(StringTransport):
    """
    A StringTransport for either leg that counts pauses, so a test can say
    how often the core paused it (C{producerState} says whether it is).
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pauses = 0

    def pauseProducing(self):
        self.pauses += 1
        super().pauseProducing()


def _raise(message: str) -> None:
    raise StartupError(message)


def _tcpPort(listening: IListeningPort) -> int:
    host = listening.getHost()
    if not isinstance(host, (IPv4Address, IPv6Address)):
        raise TypeError(f"{host!r} is not a TCP address; this gateway listens elsewhere")
    return host.port


@attrs.define
class RunningGateway:
    """A started gateway; L{port} tells where a connection listens."""

    service: GatewayService
    path: Path

    @property
    def gateway(self):
        return self.service.gateway

    @property
    def config(self):
        return self.service.config

    @property
    def stateDir(self) -> Path:
        return self.service.config.gateway.state_dir

    def port(self, connection: str) -> int:
        return _tcpPort(self.service.ports[connection])

    @property
    def adminPort(self) -> int:
        return _tcpPort(self.service.adminPort)

    def createKey(self, name: str, groups=(), expires: float | None = None) -> str:
        """Create an API key for a non-human identity; returns the key."""
        from sealgate.identity.apikeys import APIKeyStore

        return APIKeyStore(self.stateDir / "identity.sqlite").create(name, list(groups), expires)

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.service.stopService)


async def startGateway(configText: str, directory: Path, reactor=None) -> RunningGateway:
    """
    Write C{configText} to C{directory}/sealgate.toml and start it in-process.

    Use C{"tcp:0:interface=127.0.0.1"} listen endpoints: the OS picks the
    ports; C{state_dir} defaults to C{directory}/state.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    configText = _testDefaults(configText, directory / "state")
    path = directory / "sealgate.toml"
    path.write_text(configText)
    config = loadConfig(path)
    service = GatewayService(config, reactor=reactor, onFatal=_raise, installSignals=False)
    service.startService()
    await service.startedDeferred
    return RunningGateway(service, path)


def _testDefaults(text: str, stateDir: Path) -> str:
    """
    A state_dir under the test's directory and an admin API on a port the
    OS picks, unless the config sets them: the shipped default (8700) would
    collide between tests.
    """
    lines = ""
    if not re.search(r"^\s*state_dir\s*=", text, re.M):
        lines += f'state_dir = "{stateDir}"\n'
    if not re.search(r"^\s*admin\s*=", text, re.M):
        lines += 'admin = "tcp:0:interface=127.0.0.1"\n'
    if not lines:
        return text
    if "[gateway]\n" in text:
        return text.replace("[gateway]\n", "[gateway]\n" + lines, 1)
    return f"[gateway]\n{lines}\n" + text
