"""What every protocol's state machines share (h11 style): fast enum states and events, one transition table each, and the error a missing transition raises."""

import enum
from collections.abc import Mapping
from typing import TypeVar


class LocalProtocolError(Exception):
    """A transition the machine's table does not allow: the session ends with a protocol error, never a crash."""


class FastEnum(enum.Enum):
    """An enum for states and events: members are singletons, so identity hashing is exact and C-fast (Enum's own C{__hash__} is Python code, paid on every table lookup)."""

    __hash__ = object.__hash__


S = TypeVar("S", bound=FastEnum)
E = TypeVar("E", bound=FastEnum)


def step(table: Mapping[tuple[S, E], S], state: S, event: E) -> S:
    """The state after C{event} by C{table}; a transition the table lacks raises L{LocalProtocolError}."""
    try:
        return table[state, event]
    except KeyError:
        raise LocalProtocolError(f"{event.value!r} cannot happen in state {state.value!r}") from None
