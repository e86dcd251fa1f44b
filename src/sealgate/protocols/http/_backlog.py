"""Store pressure for a store that cannot report it yet: derived from its backlog by HTTP's streams and handed to the core (interim)."""

from twisted.internet import task
from twisted.logger import Logger


class BacklogPressure:
    """
    Until the recording store reports pressure itself
    (C{IRecordingStore.addPressureObserver}, branch "store"), HTTP's
    streams (response and request bodies that take more than one read)
    look at C{store.backlog()} as HTTP's old store pacer did, and hand
    what they find to the core's own handler (C{gateway.pressureChanged}):
    the core, not the protocol, pauses and resumes the legs.  Exchanges
    answered in one read never look (the writer's ticks would pause every
    session for them).  Disabled for a store that reports pressure itself;
    delete once every store does.
    """

    _log = Logger()

    # Stream pieces are reads of up to 64 KiB: at most ~64 MiB wait for the writer.
    HIGH = 1024
    LOW = 256
    INTERVAL = 0.005

    def __init__(self, gateway, reactor):
        store = getattr(gateway, "store", None)
        self._gateway = gateway
        self._backlog = getattr(store, "backlog", None)
        self.enabled = (self._backlog is not None and not hasattr(store, "addPressureObserver")
                        and hasattr(gateway, "pressureChanged"))
        self._paused = False
        self._loop = task.LoopingCall(self._drained)
        self._loop.clock = reactor

    def check(self) -> None:
        """A stream moved a piece: past the bound, the store is under pressure until it drains."""
        if self.enabled and not self._paused and self._backlog() > self.HIGH:
            self._paused = True
            self._gateway.pressureChanged("paused", "the recording backlog is over its bound")
            self._loop.start(self.INTERVAL, now=False)

    def _drained(self) -> None:
        if self._backlog() <= self.LOW:
            self.stop()

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._paused:
            self._paused = False
            self._gateway.pressureChanged("flowing", None)
