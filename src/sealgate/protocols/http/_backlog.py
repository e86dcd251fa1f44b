"""Store pressure for a store that cannot report it yet: derived from its backlog and handed to the core, as the store will (interim)."""

from twisted.internet import task
from twisted.logger import Logger


class BacklogPressure:
    """
    Until the recording store reports pressure itself
    (C{IRecordingStore.addPressureObserver}, branch "store"), the HTTP
    listener derives it from C{store.backlog()} the way HTTP's old store
    pacer did, and hands it to the core's own handler
    (C{gateway.pressureChanged}): the core, not the protocol, pauses and
    resumes the legs.  Idle (and never started) for a store that reports
    pressure itself; delete with the pacer's last caller.
    """

    _log = Logger()

    # Items are reads of up to 64 KiB: at most ~64 MiB wait for the writer.
    HIGH = 1024
    LOW = 256
    INTERVAL = 0.01

    def __init__(self, gateway, reactor):
        store = getattr(gateway, "store", None)
        self._gateway = gateway
        self._backlog = getattr(store, "backlog", None)
        self._paused = False
        self._loop = None
        if self._backlog is not None and not hasattr(store, "addPressureObserver") \
                and hasattr(gateway, "pressureChanged"):
            self._loop = task.LoopingCall(self._check)
            self._loop.clock = reactor

    def start(self) -> None:
        if self._loop is not None and not self._loop.running:
            self._loop.start(self.INTERVAL, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._paused:
            self._paused = False
            self._gateway.pressureChanged("flowing", None)

    def _check(self) -> None:
        backlog = self._backlog()
        if not self._paused and backlog > self.HIGH:
            self._paused = True
            self._gateway.pressureChanged("paused", "the recording backlog is over its bound")
        elif self._paused and backlog <= self.LOW:
            self._paused = False
            self._gateway.pressureChanged("flowing", None)
