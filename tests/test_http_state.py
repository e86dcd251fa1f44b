"""The HTTP relay's state machines: every legal transition, and every other one refused as a relay bug."""

import itertools

import pytest

from sealgate.protocols.http._state import (
    Conn,
    ConnEvent,
    Exch,
    ExchEvent,
    LocalProtocolError,
    connStep,
    exchStep,
)

#: What a client connection may do, written out here (not read from the module).
LEGAL_CONN = {
    (Conn.HEAD, ConnEvent.GOT_HEAD): Conn.CHECK,
    (Conn.CHECK, ConnEvent.READ_BODY): Conn.BODY,
    (Conn.CHECK, ConnEvent.REQUEST_WHOLE): Conn.WAIT,
    (Conn.BODY, ConnEvent.REQUEST_WHOLE): Conn.WAIT,
    (Conn.CHECK, ConnEvent.ANSWERED): Conn.HEAD,
    (Conn.WAIT, ConnEvent.ANSWERED): Conn.HEAD,
    (Conn.WAIT, ConnEvent.UPGRADED): Conn.RELAY,
    **{(c, ConnEvent.ANSWERED_CLOSE): Conn.CLOSED for c in (Conn.HEAD, Conn.CHECK, Conn.BODY, Conn.WAIT,
                                                           Conn.RELAY)},
    **{(c, ConnEvent.LOST): Conn.CLOSED for c in Conn},
}
LEGAL_EXCH = {
    (Exch.CONNECT, ExchEvent.SENT): Exch.HEAD,
    (Exch.HEAD, ExchEvent.SENT): Exch.HEAD,
    (Exch.HEAD, ExchEvent.GOT_HEAD): Exch.BODY,
    (Exch.CONNECT, ExchEvent.CLIENT_LEFT): Exch.GONE,
    **{(e, ExchEvent.FINISHED): Exch.DONE for e in (Exch.CONNECT, Exch.HEAD, Exch.BODY, Exch.DONE)},
}


MACHINES = {"client connection": (connStep, LEGAL_CONN, Conn, ConnEvent),
            "exchange": (exchStep, LEGAL_EXCH, Exch, ExchEvent)}


@pytest.mark.parametrize(("machine", "state", "event"), [
    (m, s, e) for m, (_, _, states, events) in MACHINES.items() for s, e in itertools.product(states, events)])
def test_each_machine_moves_only_as_its_table_says(machine, state, event):
    step, legal = MACHINES[machine][:2]
    if (state, event) in legal:
        assert step(state, event) is legal[state, event]
    else:
        with pytest.raises(LocalProtocolError, match="cannot happen in state"):
            step(state, event)
