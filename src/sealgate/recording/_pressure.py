"""The store's backpressure machine: may relaying flow, must it pause, or has the store failed."""

from collections.abc import Callable

import attrs
from twisted.logger import Logger

from sealgate.recording._pipe import CANNOT_WRITE, DISK_FULL

FLOWING, PAUSED, FAILED = "flowing", "paused", "failed"
RESTARTING = "the recording store is restarting"
OVER = "the recording backlog is over max_unsealed"

#: Every state of the machine, from the store's condition: the first row
#: whose condition holds decides (state, reason); none holds: flowing.
TABLE = (
    # condition                                  state   reason shown to clients
    (lambda p: p.failure is not None,            FAILED, lambda p: p.failure),
    (lambda p: not p.writerUp,                   PAUSED, lambda p: RESTARTING),
    (lambda p: p.diskProblem is not None,        PAUSED, lambda p: p.diskProblem),
    (lambda p: p.over,                           PAUSED, lambda p: OVER),
)

#: What a pause that outlasts the store timeout became, per reason.
_GAVE_UP = {
    RESTARTING: "its writer process could not be restarted",
    DISK_FULL: "the disk stayed full",
    CANNOT_WRITE: "it could not write to its disk",
    OVER: "it made no progress",
}


@attrs.define
class Pressure:
    """
    The store's condition (set by the store on the reactor thread) and the
    state it means.  A pause with no durable progress for C{timeout}
    seconds turns into a failure; observers hear every change as
    C{fn(state, reason)}.
    """

    clock: object
    timeout: float
    failure: str | None = None
    writerUp: bool = True
    diskProblem: str | None = None
    over: bool = False
    state: str = FLOWING
    reason: str | None = None
    onFailed: Callable[[str], None] = lambda reason: None
    _observers: list = attrs.field(factory=list)
    _timer: object = None

    _log = Logger()

    def addObserver(self, fn) -> None:
        self._observers.append(fn)

    def removeObserver(self, fn) -> None:
        self._observers.remove(fn)

    def update(self) -> None:
        """Re-derive the state from the condition; tell observers if it changed."""
        for holds, state, reason in TABLE:
            if holds(self):
                new = (state, reason(self))
                break
        else:
            new = (FLOWING, None)
        if new == (self.state, self.reason):
            return
        self.state, self.reason = new
        if self.state == PAUSED and self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._gaveUp)  # type: ignore[attr-defined]
        elif self.state != PAUSED and self._timer is not None:
            self._timer.cancel()  # type: ignore[attr-defined]
            self._timer = None
        for fn in list(self._observers):
            try:
                fn(*new)
            except Exception:
                self._log.failure("A store pressure observer failed on {state}", state=new[0])

    def progress(self) -> None:
        """Something became durable: a pause that moves is not a failure."""
        if self._timer is not None:
            self._timer.reset(self.timeout)  # type: ignore[attr-defined]

    def _gaveUp(self) -> None:
        self._timer = None
        what = _GAVE_UP.get(self.reason or "", "it could not record")
        self.failure = f"the recording store failed: {what} for {self.timeout:g} s"
        self.update()
        self.onFailed(self.failure)
