"""The witness as a Twisted service: its store, a thread pool for SQLite and signing, and the HTTP listener."""

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sealgate.witness.resource import makeSite
from sealgate.witness.store import WitnessStore


class WitnessService(service.Service):
    _log = Logger()

    def __init__(self, config, reactor=None):
        self.config = config
        self._reactor = reactor
        self.port = None
        self.store: WitnessStore | None = None
        # One thread: SQLite writes are serial anyway, and the order of answers follows the order of checks.
        self.threadpool = ThreadPool(1, 1, name="sealgate-witness")

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self):
        super().startService()
        self.threadpool.start()
        self.store = WitnessStore(self.config.state_dir / "witness.sqlite")
        site = makeSite(self.store, self.config, self.reactor, self.threadpool)
        d = endpoints.serverFromString(self.reactor, self.config.listen).listen(site)
        d.addCallback(self._listening)
        d.addErrback(self._cannotListen)
        return d

    def _listening(self, port) -> None:
        self.port = port
        self._log.info("Witness {name} ({vkey}) on {address} for {logs}", name=self.config.cosigner.name,
                       vkey=self.config.cosigner.verifier.vkey(), address=port.getHost(),
                       logs=", ".join(sorted(self.config.logs)))

    def _cannotListen(self, failure) -> None:
        self._log.error("Witness cannot listen on {listen}: {why}", listen=self.config.listen,
                        why=failure.getErrorMessage())
        self.reactor.stop()

    def stopService(self):
        super().stopService()
        d = self.port.stopListening() if self.port is not None else None
        self.threadpool.stop()
        if self.store is not None:
            self.store.close()
        return d
