"""Parts of the core's decision and output steps: decisions, refusals, legs paused for named reasons, the login preamble."""

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from sealgate.chain.verdicts import CONTINUE, Hold, Verdict
from sealgate.protocols._io import writeNow

#: Directions of a recorded frame.
FROM_CLIENT = 0
TO_CLIENT = 1

#: Why a Rewrite became a Deny on a protocol that cannot apply one.
CANNOT_REWRITE = "this protocol cannot apply a rewrite"

#: Reasons the core pauses a leg for (a protocol may add its own).
HOLD = "hold"
STORE = "store"
BACKPRESSURE = "backpressure"

#: An output masker: C{(data, context) -> bytes}, raising
#: L{sealgate.masking.MaskingFailed} for what it cannot vet.
OutputMasker = Callable[[bytes, Mapping[str, Any]], bytes]


class OutputRefused(Exception):
    """
    Output that could not be vetted (masking failed, an output hook denied
    it, the session is over).  The protocol must not send it: it sends its
    own error instead (through C{session.emit} too).  C{str(exc)} is safe to
    show the client; the refusal is already sealed as an audit event.
    """


def unmasked(data: bytes, context: Mapping[str, Any]) -> bytes:
    """
    The output masker for a channel that carries bytes masking would corrupt
    (an SFTP or scp file transfer): passed as they are, on purpose.
    """
    return data


@attrs.frozen
class Decision:
    """
    What the core decided about a command.

    @ivar verdict: L{CONTINUE}, a L{sealgate.chain.verdicts.Rewrite} (only
        when the protocol said it can apply one), a
        L{sealgate.chain.verdicts.Deny}, or the L{Hold} itself (its ticket
        and message are what the protocol tells the client while it waits).
    @ivar pending: for a hold, a L{Deferred} firing with the final verdict
        (L{CONTINUE}, a Rewrite or a Deny; never failing: an undecidable or
        expired approval is a Deny).  The core keeps the session paused
        until it fires.  None otherwise.
    """

    verdict: Verdict
    pending: Deferred | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def held(self) -> bool:
        return isinstance(self.verdict, Hold)

    @property
    def allowed(self) -> bool:
        return self.verdict is CONTINUE


#: The decision about a command nobody objected to (shared: no allocation).
ALLOWED = Decision(CONTINUE)


class Leg:
    """
    One leg of a session (a transport, or anything with
    C{pauseProducing}/C{resumeProducing}) paused for named, counted
    reasons: it is paused while any is in force and resumed when the last
    goes.  Register it as the other leg's producer in place of the raw
    transport, so Twisted's own backpressure (L{BACKPRESSURE}) cannot
    resume a leg the core paused for a hold or for the store.
    """

    def __init__(self, transport: Any):
        self.transport = transport
        self._reasons: dict[str, int] = {}

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def pausedFor(self, reason: str) -> bool:
        return reason in self._reasons

    def pause(self, reason: str) -> None:
        first = not self._reasons
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        if first:
            self.transport.pauseProducing()

    def resume(self, reason: str) -> None:
        n = self._reasons.get(reason)
        if n is None:
            return
        if n > 1:
            self._reasons[reason] = n - 1
            return
        del self._reasons[reason]
        if not self._reasons:
            self.transport.resumeProducing()

    # IPushProducer, for registerProducer: Twisted pauses at most once.
    def pauseProducing(self) -> None:
        if not self.pausedFor(BACKPRESSURE):
            self.pause(BACKPRESSURE)

    def resumeProducing(self) -> None:
        self.resume(BACKPRESSURE)

    def stopProducing(self) -> None:
        stop = getattr(self.transport, "stopProducing", None)
        if stop is not None:
            stop()


class Preamble:
    """
    What a protocol exchanges with its client before a session exists (its
    login): written at once and kept, then recorded into the session as the
    session's first frames (L{into}).  A protocol never hands it a secret
    (the password message itself is left out).  A refusal before any
    session (L{refuse}) has no session to be recorded in: the gateway
    audits the failed login instead.
    """

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes, int]] = []

    def received(self, data: bytes, channel: int = 0) -> None:
        self.frames.append((FROM_CLIENT, data, channel))

    def send(self, transport: Any, data: bytes, channel: int = 0) -> None:
        self.frames.append((TO_CLIENT, data, channel))
        writeNow(transport, data)

    def refuse(self, transport: Any, data: bytes) -> None:
        writeNow(transport, data)

    def into(self, session: Any) -> None:
        """Record what was kept into C{session}, in order."""
        session.recordPreamble(self.frames)
        self.frames = []
