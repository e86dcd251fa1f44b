"""The gateway's service: store, identity, chain, listeners and admin, started and drained in order."""

import gc
import os
import signal
import sys

from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, Logger

from sealgate.approvals import Approvals
from sealgate.config import ConfigError, loadConfig
from sealgate.gateway import Gateway, PluginError

#: Seconds an aborted session's connection gets to close (and seal) before
#: its session is ended regardless.
ABORT_GRACE = 5.0


class StartupError(Exception):
    """Start-up failed in a way the operator must fix; the message says how."""


class GatewayService(MultiService):
    """
    Runs one gateway.  Listening happens in L{startService}, before the
    reactor runs under twistd, so a port that is taken fails the start with
    a message instead of a half-started gateway.
    """

    _log = Logger()

    def __init__(self, config, reactor=None, onFatal=None, installSignals=True):
        super().__init__()
        self._installSignals = installSignals
        self.config = config
        self._reactor = reactor
        self._onFatal = onFatal or _exitWithMessage
        self.gateway = None
        self.store = None
        #: L{sealgate.fleet.runtime.Fleet} when [gateway] store_env/store_file is set.
        self.fleet = None
        #: Worker 0's L{sealgate.fleet.workers.Workers}; the ports it shares, by what listens.
        self.workers = None
        self._sharedPorts: dict[str, int] = {}
        self.identity = None
        self.ports: dict[str, IListeningPort] = {}
        self.adminPort = None
        self.ready = False
        self._terminating = False
        if installSignals:
            # From the moment twistd builds the service, not once started: a
            # SIGTERM during start-up is a clean stop too (twistd's own
            # handler would exit by the signal, or stop a half-started gateway).
            self._installSignalHandlers()
        #: Set by the tap: twistd's AppLogger logs to the application's
        #: ILogObserver component, which is this ([logging] level/format).
        self.logObserver = None
        self.events = None
        self.witnessing = None

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        setComponent = getattr(parent, "setComponent", None)
        if self.logObserver is not None and setComponent is not None:
            setComponent(ILogObserver, self.logObserver)

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    # -- start ---------------------------------------------------------------

    def startService(self):
        super().startService()
        if self._installSignals:
            # Again once the reactor runs: it installs twistd's handler over ours.
            self.reactor.callWhenRunning(self._installSignalHandlers)
        try:
            self._build()
            self._listen()
        except StartupError as e:
            self._closePorts()
            self._onFatal(str(e))
            return
        d = defer.maybeDeferred(self.store.start)
        d.addCallback(lambda _: self._startFleet())
        d.addCallback(lambda _: defer.maybeDeferred(getattr(self.identity, "start", lambda: None)))
        d.addCallback(self._started)
        d.addErrback(self._startFailed)
        self.startedDeferred = d

    def _build(self):
        from sealgate.admin.api import makeAdminSite
        from sealgate.identity.service import IdentityService
        from sealgate.plugins import interceptorPlugins, protocolPlugins
        from sealgate.recording.store import SQLiteStore

        cfg = self.config
        try:
            cfg.gateway.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StartupError(f"{cfg.path}: gateway.state_dir: cannot create "
                               f"{cfg.gateway.state_dir}: {e.strerror}\n"
                               "  fix: point it at a writable directory")
        self.store = SQLiteStore(cfg.gateway.state_dir, f"sealgate/{cfg.gateway.node}",
                                 reactor=self.reactor,
                                 databaseUrl=cfg.gateway.fleet.url if cfg.gateway.fleet else None,
                                 checkpointInterval=cfg.gateway.checkpoint_interval,
                                 maxUnsealed=cfg.gateway.max_unsealed,
                                 storeTimeout=cfg.gateway.store_timeout)
        self.identity = IdentityService(cfg.identity, cfg.gateway.state_dir, reactor=self.reactor,
                                        fleet=cfg.gateway.fleet)
        self.fleet = None
        if cfg.gateway.fleet is not None:
            from sealgate.fleet.runtime import Fleet

            self.fleet = Fleet(cfg.gateway.fleet, self.reactor)
        self.approvals = Approvals(self.reactor, self.store)
        if self.fleet is not None:
            from sealgate.fleet.sharing import attach

            attach(self.approvals, self.fleet.board)
        try:
            self.gateway = Gateway(cfg, self.identity, self.store, self.approvals,
                                   interceptorPlugins(), self.reactor)
        except PluginError as e:
            raise StartupError(f"sealgate cannot start: {e}\n"
                               "  fix: reinstall sealgate or remove the broken plugin")
        self._protocols = protocolPlugins()
        self._adminSite = makeAdminSite(self)

    def _startFleet(self):
        if self.fleet is None:
            return None
        from sealgate.fleet.logins import PGLoginStore, follow

        sealPeer = getattr(self.store, "sealPeer", None)
        if sealPeer is not None:
            # A store that holds every node's sessions seals a dead peer's as cut off by a peer.
            self.fleet.onPeerDown(sealPeer)
        host = self.adminPort.getHost()
        d = self.fleet.start(self.approvals, f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}")
        d.addCallback(lambda _: self._shareBackoff())
        d.addCallback(lambda _: follow(self._adminSite.admin.logins,
                                       PGLoginStore(self.fleet.db, self.fleet.node), self.reactor))
        d.addCallback(lambda _: self._resumeNotifications())
        return d

    def _resumeNotifications(self):
        from sealgate.fleet.notifications import PGDeliveryStore, resume

        store = PGDeliveryStore(self.fleet.db, self.fleet.node)
        return defer.ensureDeferred(resume(self._adminSite.admin.notifier, store, self.reactor))

    def _shareBackoff(self):
        lease = self.fleet.lease
        self.identity.fleetUp = lambda: lease.renewed
        from sealgate.fleet.backoff import PGBackoffCounters

        self.gateway.throttle.shared = PGBackoffCounters(self.fleet.db)

    def _listen(self):
        shared: dict[str, object] = {}
        for conn in self.config.connections:
            if conn.listen in shared:
                # Connections of one protocol may share a listener; the
                # protocol routes (postgres by dbname, http by Host/path).
                self.ports[conn.name] = shared[conn.listen]
                continue
            factory = self._protocols[conn.protocol].makeFactory(conn, self.gateway)
            port = self.ports[conn.name] = shared[conn.listen] = self._bind(
                conn.listen, factory, f"connection {conn.name!r} listen")
            # Bound now, so a taken port fails the start; accepted once the
            # store is up, so a client arriving meanwhile waits in the
            # backlog instead of being refused a recorded session.
            getattr(port, "stopReading", lambda: None)()
        self.adminPort = self._bind(self.config.gateway.admin, self._adminSite, "gateway.admin")
        # /healthz answers once the gateway has started, not while the store is still opening.
        getattr(self.adminPort, "stopReading", lambda: None)()

    def _bind(self, description, factory, what):
        result = []
        if self.config.gateway.worker is not None:
            from sealgate.fleet.workers import sharedPort

            result.append(sharedPort(self, what, description, factory))
        else:
            ep = endpoints.serverFromString(self.reactor, description)
            ep.listen(factory).addBoth(result.append)
        if not result:
            raise StartupError(f"{self.config.path}: {what}: {description!r} did not start listening")
        port = result[0]
        if isinstance(port, Exception) or hasattr(port, "value"):
            err = getattr(port, "value", port)
            why = err.socketError if isinstance(err, CannotListenError) else err
            raise StartupError(f"{self.config.path}: {what}: cannot listen on {description!r}: "
                               f"{why}\n  fix: stop what uses that port or choose another one")
        return port

    def _started(self, _):
        if not self.running:
            # Stopped while starting: the ports are closed already.
            self._log.info("Start-up finished after the stop began; not accepting connections")
            return self
        self.ready = True
        self.gateway.lifetime.start()
        for name, port in self.ports.items():
            self._log.info("Connection {name} listening on {address}", name=name,
                           address=port.getHost())
        self._writeAdminAddress()
        self._startEvents()
        self._startWitnessing()
        self._startWorkers()
        self._log.info("Admin API on {address}", address=self.adminPort.getHost())
        for port in {id(p): p for p in [*self.ports.values(), self.adminPort]}.values():
            getattr(port, "startReading", lambda: None)()
        if self._installSignals:
            # The process is ours (twistd), not a test's: what start-up
            # built (modules, config, masking tables, plugins) lives as
            # long as it does, so the cyclic collector's full passes stop
            # walking it.  About a sixth of the gateway's CPU per HTTP
            # request (bench/http_proxy.py, issue 18).
            gc.freeze()
        return self

    def _startWorkers(self):
        """Worker 0 of C{workers} > 1 starts the others, once it listens (they share its ports)."""
        if self.config.gateway.worker != 0 or self.config.gateway.workers <= 1:
            return
        from sealgate.fleet.workers import Workers

        self.workers = Workers(self.config, self.reactor, self._sharedPorts)
        self.workers.start()

    def _startEvents(self):
        """The audit event stream ([[events]]) follows the sealed log once the store is up."""
        from sealgate.events import EventStream

        self.events = EventStream(self.config.events, self.config.gateway.state_dir,
                                  self.reactor, self.reactor.getThreadPool())
        self.events.setServiceParent(self)
        self.events.startStreaming()

    def _startWitnessing(self):
        """Witnesses ([[witnesses]]) are sent each new checkpoint, off the writer's path."""
        from sealgate.recording.witnessclient import Witnessing

        self.witnessing = Witnessing(self.config.witnesses, self.config.gateway.state_dir,
                                     self.reactor, self.reactor.getThreadPool())
        self.witnessing.setServiceParent(self)
        self.witnessing.startWitnessing()

    def _adminFile(self):
        return self.config.gateway.state_dir / "admin.json"

    def _writeAdminAddress(self):
        """Tell the CLI where the running admin API is (the config may say port 0)."""
        import json

        host = self.adminPort.getHost()
        scheme = "https" if self.config.gateway.admin.startswith(("ssl:", "tls:")) else "http"
        address = host.host if host.host not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in address:
            address = f"[{address}]"
        self._adminFile().write_text(json.dumps({"url": f"{scheme}://{address}:{host.port}",
                                                 "pid": os.getpid()}))

    def _installSignalHandlers(self):
        signal.signal(signal.SIGHUP, lambda *a: self.reactor.callFromThread(self.reload))
        # twistd's own SIGTERM handler makes the process die by the signal
        # after shutdown; a drained, clean stop is an exit status of 0.
        signal.signal(signal.SIGTERM, lambda *a: self.reactor.callFromThread(self._terminate))

    def _terminate(self):
        if self._terminating:
            return  # a second SIGTERM while draining: the first one's stop goes on
        self._terminating = True
        live = list(self.gateway.sessions.values()) if self.gateway is not None else []
        byConnection: dict[str, int] = {}
        for s in live:
            byConnection[s.connection.name] = byConnection.get(s.connection.name, 0) + 1
        self._log.info("SIGTERM: stop listening, wait up to {t}s for {n} live session(s){where}, exit",
                       t=self.config.gateway.drain_timeout, n=len(live),
                       where=" (" + ", ".join(f"{c}: {k}" for c, k in sorted(byConnection.items())) + ")"
                       if live else "")
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def _startFailed(self, f):
        self._closePorts()
        if not self.running:
            # Whatever start-up step was cut short by the stop, this is a stop, not a failed start.
            self._log.info("Start-up ended by the stop: {why}", why=f.getErrorMessage())
            return
        self._onFatal(f"sealgate cannot start: {f.getErrorMessage()}")

    def _closePorts(self):
        for p in {id(p): p for p in [*self.ports.values(), self.adminPort] if p}.values():
            p.stopListening()
        self.ports.clear()
        self.adminPort = None

    # -- reload --------------------------------------------------------------

    def reload(self):
        """Re-read roles, rules and masking (SIGHUP); keep the running config on error."""
        from twisted.internet.threads import deferToThreadPool

        path = self.config.path
        if self.gateway is None or self._terminating:
            self._log.warn("SIGHUP ignored: the gateway is still starting or already stopping")
            return defer.succeed(None)
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), loadConfig, path)

        def apply(new):
            if [(c.name, c.protocol, c.listen, c.backend) for c in new.connections] != [
                (c.name, c.protocol, c.listen, c.backend) for c in self.config.connections
            ]:
                self._log.warn("Reload: connection changes in {path} take effect at the next "
                               "restart; roles, rules and masking reloaded", path=path)
            self.gateway.setConfig(_withConnections(new, self.config))
            self.config = self.gateway.config
            self._log.info("Reloaded {path}: policy {hash}", path=path,
                           hash=self.gateway.policyHash[:12])

        def bad(f):
            if f.check(ConfigError):
                self._log.error("Reload refused, keeping the running config: {error}",
                                error=f.getErrorMessage())
            else:
                self._log.failure("Reload failed, keeping the running config", f)

        return d.addCallback(apply).addErrback(bad)

    # -- stop ----------------------------------------------------------------

    def stopService(self):
        """Stop listening, let sessions drain, close the rest, flush the store."""
        super().stopService()
        if self.gateway is None:
            return None
        self.gateway.accepting = False
        self.ready = False
        ports = {id(p): p for p in [*self.ports.values(), self.adminPort] if p}.values()
        d = defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        # The other workers drain while this one does (SIGTERM each), not after.
        d.addCallback(lambda _: defer.gatherResults([
            defer.maybeDeferred(self.workers.stop if self.workers is not None else lambda: None),
            defer.maybeDeferred(self._drain)]))
        d.addCallback(lambda _: self.approvals.stop())
        d.addCallback(lambda _: self.fleet.stop() if self.fleet is not None else None)
        d.addCallback(lambda _: getattr(self._adminSite, "admin", None) and self._adminSite.admin.stop())
        d.addCallback(lambda _: defer.maybeDeferred(getattr(self.identity, "stop", lambda: None)))
        d.addCallback(lambda _: self.gateway.stop())
        d.addCallback(lambda _: self.store.stop() if self.store is not None else None)
        d.addCallback(lambda _: self._adminFile().unlink(missing_ok=True))
        d.addErrback(lambda f: self._log.failure("Error while stopping", f))
        return d

    def _drain(self):
        """
        Wait for sessions to end, up to drain_timeout; then ask each protocol
        to close its client cleanly (C{session.abort}) and give the closes
        a moment to land, so every session is sealed before the store stops.
        """
        if not self.gateway.sessions:
            return None
        self._log.info("Draining {n} session(s) for up to {t}s",
                       n=len(self.gateway.sessions), t=self.config.gateway.drain_timeout)
        done: defer.Deferred = defer.Deferred()
        self.gateway.drained = done
        calls = []

        def force():
            for s in list(self.gateway.sessions.values()):
                s.end("gateway shutdown")
            if not done.called:
                done.callback(None)

        def timeout():
            for s in list(self.gateway.sessions.values()):
                self._log.info("Closing session {id} at drain timeout", id=s.id)
                if s.abort is not None:
                    s.abort("the gateway is shutting down")
                else:
                    s.end("gateway shutdown")
            if self.gateway.sessions:
                calls.append(self.reactor.callLater(ABORT_GRACE, force))
            elif not done.called:
                done.callback(None)

        calls.append(self.reactor.callLater(self.config.gateway.drain_timeout, timeout))

        def finished(_):
            for call in calls:
                if call.active():
                    call.cancel()
        return done.addCallback(finished)


def _withConnections(new, old):
    """The new policy with the running connections (which need a restart to change)."""
    import attrs

    return attrs.evolve(new, connections=old.connections, gateway=old.gateway)


def _exitWithMessage(message: str) -> None:
    """Report a start-up failure in one message, no traceback, exit status 1."""
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    os._exit(1)
