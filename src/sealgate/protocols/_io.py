"""Socket helpers every relaying protocol shares: immediate writes and TCP_NODELAY."""

from twisted.internet import tcp


def writeNow(transport, data: bytes) -> None:
    """
    C{transport.write(data)}, but on a plain TCP connection with nothing
    queued the bytes go to the socket at once.  Twisted queues every write
    for the next reactor turn, which costs two epoll changes and a wake-up
    per write: for a proxy writing once per message each way, that is a
    large part of its per-message work.  Anything not sent at once is queued
    as usual, so order and backpressure stay Twisted's.

    This reads C{tcp.Connection}'s private buffer state, so it applies only
    to exactly C{tcp.Server} and C{tcp.Client}; anything else (TLS, UNIX
    sockets, test transports) takes the ordinary path.
    """
    if type(transport) is not tcp.Server and type(transport) is not tcp.Client:
        transport.write(data)
        return
    if (transport.TLS or not transport.connected or transport.disconnecting
            or transport._writeDisconnected or transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Twisted's own write path finds and reports the error.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def noDelay(transport) -> None:
    """
    TCP_NODELAY: a relay writes what it has at once; Nagle would hold a
    small write back until the peer's delayed ACK, milliseconds later.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass    # not a TCP socket (e.g. a UNIX one)
