"""The HTTP relay's state machines, each in one transition table (h11 style): the client connection and the backend exchange."""

from sealgate.protocols._machine import FastEnum as _Fast
from sealgate.protocols._machine import LocalProtocolError, step

__all__ = ["LocalProtocolError", "Conn", "ConnEvent", "Exch", "ExchEvent", "connStep", "exchStep"]


class Conn(_Fast):
    """Where a client connection is."""

    #: Reading a request head (or idle between requests).
    HEAD = "head"
    #: A head is in: target, routing, login and the credential are checked
    #: before one byte of its body is read.
    CHECK = "check"
    #: Reading an authenticated request's body.
    BODY = "body"
    #: The request is whole: decided, forwarded, answered.
    WAIT = "wait"
    #: Upgraded (WebSocket): raw bytes both ways.
    RELAY = "relay"
    #: Answered for the last time: unread client bytes are discarded.
    CLOSED = "closed"


class ConnEvent(_Fast):
    GOT_HEAD = "got head"
    READ_BODY = "read body"
    REQUEST_WHOLE = "request whole"
    ANSWERED = "answered, keep alive"
    ANSWERED_CLOSE = "answered, close"
    UPGRADED = "upgraded"
    LOST = "lost"


_CONN = {
    (Conn.HEAD, ConnEvent.GOT_HEAD): Conn.CHECK,
    (Conn.CHECK, ConnEvent.READ_BODY): Conn.BODY,
    (Conn.CHECK, ConnEvent.REQUEST_WHOLE): Conn.WAIT,
    (Conn.BODY, ConnEvent.REQUEST_WHOLE): Conn.WAIT,
    # Refusals (401, 404, 413...) answer before the request is whole.
    (Conn.CHECK, ConnEvent.ANSWERED): Conn.HEAD,
    (Conn.WAIT, ConnEvent.ANSWERED): Conn.HEAD,
    (Conn.WAIT, ConnEvent.UPGRADED): Conn.RELAY,
}
for _conn in (Conn.HEAD, Conn.CHECK, Conn.BODY, Conn.WAIT, Conn.RELAY):
    _CONN[_conn, ConnEvent.ANSWERED_CLOSE] = Conn.CLOSED
for _conn in Conn:
    _CONN[_conn, ConnEvent.LOST] = Conn.CLOSED


class Exch(_Fast):
    """Where one request's backend exchange is."""

    #: Waiting for a backend connection (new or from the pool).
    CONNECT = "connect"
    #: The request is sent; waiting for the response head.
    HEAD = "head"
    #: Relaying the response body.
    BODY = "body"
    #: The response is over (sent, refused or cut).
    DONE = "done"
    #: The client left while connecting.
    GONE = "gone"


class ExchEvent(_Fast):
    SENT = "request sent"
    GOT_HEAD = "got response head"
    FINISHED = "finished"
    #: The client left before a backend connection was there.
    CLIENT_LEFT = "client left"


_EXCH = {
    (Exch.CONNECT, ExchEvent.SENT): Exch.HEAD,
    # A retry on a fresh connection sends the request again.
    (Exch.HEAD, ExchEvent.SENT): Exch.HEAD,
    (Exch.HEAD, ExchEvent.GOT_HEAD): Exch.BODY,
    (Exch.CONNECT, ExchEvent.CLIENT_LEFT): Exch.GONE,
}
# Finishing twice (a refusal, then the client leaving) is harmless.
for _exch in (Exch.CONNECT, Exch.HEAD, Exch.BODY, Exch.DONE):
    _EXCH[_exch, ExchEvent.FINISHED] = Exch.DONE


def connStep(state: Conn, event: ConnEvent) -> Conn:
    """The connection's state after C{event}; a transition the table lacks is a relay bug."""
    try:
        return _CONN[state, event]  # a few per request: the lookup, without a call around it
    except KeyError:
        return step(_CONN, state, event)


def exchStep(state: Exch, event: ExchEvent) -> Exch:
    """The exchange's state after C{event}; a transition the table lacks is a relay bug."""
    try:
        return _EXCH[state, event]
    except KeyError:
        return step(_EXCH, state, event)
