"""C{[gateway] workers = N}: N processes on one host sharing the listening sockets (SO_REUSEPORT), each a fleet node.

The process twistd starts is worker 0 (node C{<node>-0}, the configured
state_dir); once it listens it starts workers 1..N-1 as child twistd
processes (node C{<node>-<i>}, state_dir C{<state_dir>/worker-<i>}, the SSH
host keys shared), telling them the ports it bound, restarts one that dies,
and stops them (SIGTERM, so each drains) when it stops.  The kernel spreads
new connections over the processes listening on a port.
"""

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import attrs
from twisted.internet import defer, protocol
from twisted.logger import Logger

#: Set in a child's environment: its worker index, and the ports worker 0 bound.
WORKER_ENV = "SEALGATE_WORKER"
PORTS_ENV = "SEALGATE_WORKER_PORTS"
PARENT_ENV = "SEALGATE_WORKER_PARENT"

_TCP = re.compile(r"^tcp:(?:port=)?(\d+)((?::(?:interface|backlog)=[^:]+)*)$")

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0


def workerIndex() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def dieWithParent() -> None:
    """A worker whose worker 0 died (even by SIGKILL) gets SIGTERM: no orphan keeps serving."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the operator's supervisor (systemd) stops the group
    # Worker 0 may have died before the line above: then no signal comes.
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):
        sys.stderr.write("sealgate: worker 0 is gone; this worker does not start\n")
        raise SystemExit(1)


def workerConfig(config, index: int):
    """The config of worker C{index}: its node name, its own state_dir (but worker 0's)."""
    g = config.gateway
    node = f"{g.node}-{index}"[:63]
    stateDir = g.state_dir if index == 0 else g.state_dir / f"worker-{index}"
    fleet = attrs.evolve(g.fleet, node=node) if g.fleet is not None else None
    return attrs.evolve(config, gateway=attrs.evolve(g, node=node, state_dir=stateDir,
                                                     fleet=fleet, worker=index))


def shareHostKeys(mainStateDir: Path, stateDir: Path) -> None:
    """Every worker answers with the same SSH host keys: its ssh/ is worker 0's."""
    stateDir.mkdir(parents=True, exist_ok=True, mode=0o700)
    link = stateDir / "ssh"
    (mainStateDir / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    if not link.exists() and not link.is_symlink():
        link.symlink_to(mainStateDir / "ssh")


def parseTCP(description: str) -> tuple[int, str, int] | None:
    """C{tcp:8700:interface=127.0.0.1} -> (8700, "127.0.0.1", 50); None if not plain tcp."""
    m = _TCP.match(description)
    if not m:
        return None
    opts = dict(part.split("=", 1) for part in m.group(2).split(":") if part)
    return int(m.group(1)), opts.get("interface", ""), int(opts.get("backlog", 50))


def listenReusePort(reactor, description: str, factory, port: int | None = None):
    """
    Listen on a plain tcp: endpoint with SO_REUSEPORT (C{port} overrides
    the described one: a child takes the port worker 0 got for port 0).
    """
    parsed = parseTCP(description)
    if parsed is None:
        raise ValueError(f"{description!r}: workers > 1 shares plain tcp: listeners only")
    configured, interface, backlog = parsed
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, configured if port is None else port))
        sock.listen(backlog)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        # adoptStreamPort took a duplicate of the descriptor.
        sock.close()


def sharedPort(service, what: str, description: str, factory):
    """
    Bind for a worker: worker 0 takes the configured port (port 0: what the
    kernel picks) and records it; the others take the one worker 0 got.
    Returns the port, or the exception (as L{GatewayService._bind} expects).
    """
    from twisted.internet.error import CannotListenError

    if service.config.gateway.worker == 0:
        port = None
    else:
        # By what listens (two listeners may both be described "tcp:0").
        port = json.loads(os.environ.get(PORTS_ENV) or "{}").get(what)
    try:
        listening = listenReusePort(service.reactor, description, factory, port)
    except OSError as e:
        return CannotListenError(None, description, e)
    service._sharedPorts[what] = listening.getHost().port
    return listening


class _Child(protocol.ProcessProtocol):
    def __init__(self, supervisor, index):
        self.supervisor, self.index = supervisor, index
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason):
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class Workers:
    """Worker 0's supervisor of workers 1..N-1."""

    _log = Logger()

    def __init__(self, config, reactor, ports: dict[str, int]):
        self.config = config
        self.reactor = reactor
        self.ports = ports
        self.children: dict[int, _Child] = {}
        self.stopping = False

    def start(self) -> None:
        for i in range(1, self.config.gateway.workers):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        g = self.config.gateway
        shareHostKeys(g.state_dir, g.state_dir / f"worker-{index}")
        env = dict(os.environ, **{WORKER_ENV: str(index), PORTS_ENV: json.dumps(self.ports),
                                  PARENT_ENV: str(os.getpid())})
        child = _Child(self, index)
        twistd = str(Path(sys.executable).parent / "twistd")
        argv = [twistd, "-n", "--pidfile=", "sealgate", "--config", self.config.path]
        # Its log lines go where this process's go.
        self.reactor.spawnProcess(child, twistd, argv, env=env, path=os.getcwd(),
                                  childFDs={0: "w", 1: 1, 2: 2})
        self.children[index] = child
        self._log.info("Worker {i} started (pid {pid})", i=index,
                       pid=getattr(child.transport, "pid", None))

    def _ended(self, child: _Child, reason) -> None:
        if self.children.get(child.index) is child:
            del self.children[child.index]
        if self.stopping:
            return
        self._log.warn("Worker {i} exited ({why}); starting it again in {t:g}s", i=child.index,
                       why=reason.getErrorMessage(), t=RESTART_DELAY)
        self.reactor.callLater(RESTART_DELAY, self._respawn, child.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping:
            self._spawn(index)

    def stop(self) -> defer.Deferred:
        """SIGTERM every worker (each drains as twistd does) and wait for them."""
        self.stopping = True
        waits = []
        for child in list(self.children.values()):
            try:
                child.transport.signalProcess(signal.SIGTERM)  # type: ignore[union-attr]
            except Exception:
                continue
            waits.append(child.ended)
        return defer.gatherResults(waits)
