"""The postgres client leg's state machines, each in one transition table (h11 style), and the relay's records of statements in flight."""

from collections.abc import Callable
from typing import Any

import attrs

from sealgate.protocols._machine import FastEnum, LocalProtocolError, step

__all__ = ["LocalProtocolError", "Phase", "PhaseEvent", "Flow", "FlowEvent", "phaseStep", "flowStep",
           "Statement", "SYNC", "Held"]


class Phase(FastEnum):
    """Where a client connection is, from its first byte to its end."""

    #: Before the StartupMessage (SSLRequest and GSSENCRequest are answered here).
    STARTUP = "startup"
    #: Asked for the password (the token or API key).
    PASSWORD = "password"
    #: The gateway checks the credential and logs in to the backend.
    LOGIN = "login"
    #: Relaying between the client and its backend.
    READY = "ready"
    #: Told why (or hung up); what the client sends now is dropped.
    CLOSED = "closed"


class PhaseEvent(FastEnum):
    STARTUP_SENT = "startup message"
    PASSWORD_SENT = "password message"
    BACKEND_READY = "backend ready"
    #: A FATAL sent, a CancelRequest served, or the connection lost.
    CLOSE = "close"


_PHASE = {
    (Phase.STARTUP, PhaseEvent.STARTUP_SENT): Phase.PASSWORD,
    (Phase.PASSWORD, PhaseEvent.PASSWORD_SENT): Phase.LOGIN,
    (Phase.LOGIN, PhaseEvent.BACKEND_READY): Phase.READY,
}
for _phase in Phase:
    _PHASE[_phase, PhaseEvent.CLOSE] = Phase.CLOSED


class Flow(FastEnum):
    """Whether the relay reads the client's statements: it stops while one is held for approval."""

    FLOWING = "flowing"
    HELD = "held"


class FlowEvent(FastEnum):
    HOLD = "statement held"
    DECIDED = "hold decided"


_FLOW = {
    (Flow.FLOWING, FlowEvent.HOLD): Flow.HELD,
    (Flow.HELD, FlowEvent.DECIDED): Flow.FLOWING,
}

#: Every legal transition, for tests and documentation.
PHASE_TABLE = dict(_PHASE)
FLOW_TABLE = dict(_FLOW)


def phaseStep(state: Phase, event: PhaseEvent) -> Phase:
    """The connection's phase after C{event}; one the table lacks raises L{LocalProtocolError}."""
    return step(_PHASE, state, event)


def flowStep(state: Flow, event: FlowEvent) -> Flow:
    """The relay's flow after C{event}; one the table lacks raises L{LocalProtocolError}."""
    return step(_FLOW, state, event)


# -- the relay's records ------------------------------------------------------------


@attrs.define(eq=False)
class Statement:
    """
    A statement sent to the server whose outcome is not in yet: a simple
    Query (or a fastpath call) completes at ReadyForQuery, an Execute at its
    own CommandComplete (or error).
    """

    text: str
    started: float
    #: An extended-protocol Execute (else a simple query).
    execute: bool = False
    rows: int = 0
    sqlstate: str | None = None
    #: Set when the chain allowed it and its verdict is sealed with the
    #: outcome, in one event (L{sealgate.Session.decide}'s C{reported}).
    details: dict | None = None


@attrs.frozen
class SyncPoint:
    """A Sync: the ReadyForQuery that answers it ends the extended batch before it."""


#: The one Sync marker (it carries nothing).
SYNC = SyncPoint()


@attrs.define(eq=False)
class Held:
    """A statement held for approval, with what to send for each final verdict, and the client messages read after it."""

    decision: Any
    frame: Any
    #: The message to send in its place for a denial's SQL.
    replace: Callable[[str], bytes]
    #: The message to send for a Rewrite's SQL.
    rewrite: Callable[[str], bytes]
    #: What an allowed statement changes for the next ones.
    onAllowed: Callable[[], None]
    rest: list = attrs.field(factory=list)
