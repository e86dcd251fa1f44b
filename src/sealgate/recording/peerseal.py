"""
A dead fleet node's open sessions, sealed as cut off by the peer that
declared it down (issue #16, node liveness).

The dead node's log is signed with its own key, which no peer holds, so a
peer never appends to it.  Instead, the peer that claimed the node's lapsed
lease (L{sealgate.fleet.nodes.NodeLease}) does two things:

 - in the dead node's schema, one C{peer_cuts} row per session still open
   there: who cut it, when, why, and how far the dead node's log and the
   session's frames had been committed (the session's sealed leaves are
   untouched, so the dead node's log verifies as it stands);
 - in its OWN log, a C{peer-cut} audit event per session naming the node,
   the session, that frame count and the dead log's size and latest
   signed checkpoint: a sealed statement, in a log the peer signs, of what
   it found and when.

Readers show such a session as "cut off" with that reason until the node
comes back: its restart seals the session's CLOSE in its own log (the
reason names the peer), which is from then on what every reader shows.

The peer takes the dead node's writer lock (a PostgreSQL advisory lock)
while it writes the rows.  While the node's writer holds it, the peer waits
and tries again: a killed gateway's writer notices its parent is gone and
exits (its database session, and so the lock, ends with it) a moment after
the lease ran out; a node that came back for good keeps the lock and seals
its own sessions, and the peer then leaves them alone.
"""

import time

from sealgate.recording import _pgdb

__all__ = ["cutPeer", "sealPeer", "peerReason", "restartReason", "checkPeerCuts", "NodeLocked"]

#: Seconds between tries of a cut that failed (the fleet database unreachable).
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: While the dead node's writer still holds its lock: try again this often, this many times.
LOCK_RETRY, LOCK_TRIES = 0.25, 120


class NodeLocked(Exception):
    """The node's writer still holds its lock: not gone yet, or back again."""


def peerReason(peer: str, node: str) -> str:
    return f"cut off by peer {peer}: node {node} went down (its lease ran out)"


def restartReason(peer: str, node: str) -> str:
    return f"cut off by peer {peer}: node {node} went down (sealed by node {node} at its restart)"


def cutPeer(url: str, node: str, peer: str, now: float | None = None) -> list[dict]:
    """
    Blocking (a thread): record node C{node}'s open sessions as cut off by
    C{peer}.  Sessions already cut are not cut twice.

    @return: one dict per session cut now (session, size, log_size,
        checkpoint, reason, time); empty if the node has no store.

    @raise NodeLocked: its writer still holds the node's lock.
    """
    now = time.time() if now is None else now
    conn = _pgdb.connectURL(url)
    try:
        if node not in {row[0] for row in _pgdb.listNodes(conn)}:
            return []
        if not _pgdb.tryLockNode(conn, node):
            raise NodeLocked(f"the writer of node {node} still holds its lock")
        try:
            return _cut(conn, node, peer, now)
        finally:
            _pgdb.unlockNode(conn, node)
    finally:
        conn.close()


def _cut(conn, node: str, peer: str, now: float) -> list[dict]:
    reason = peerReason(peer, node)
    with conn.transaction():
        conn.execute(f"SET LOCAL search_path TO {_pgdb._quote(_pgdb.schemaFor(node))}")
        conn.execute(_pgdb.PEER_CUTS)  # a schema made before peer cuts existed
        logSize = conn.execute("SELECT coalesce(max(n) + 1, 0) FROM log").fetchone()[0]
        checkpoint = conn.execute("SELECT coalesce(max(size), 0) FROM checkpoints").fetchone()[0]
        rows = conn.execute(
            "INSERT INTO peer_cuts (session, by_node, time, reason, size, log_size) "
            "SELECT id, %s, %s, %s, size, %s FROM sessions WHERE closed IS NULL "
            "ON CONFLICT (session) DO NOTHING RETURNING session, size",
            (peer, now, reason, logSize)).fetchall()
    return [{"session": sid, "size": size, "log_size": logSize, "checkpoint": checkpoint,
             "reason": reason, "time": now} for sid, size in rows]


def sealPeer(store, node: str, inThread=None, delays=RETRY_DELAYS):
    """
    The store's C{sealPeer(node)} (an C{onPeerDown} hook): L{cutPeer} in a
    thread, then a sealed C{peer-cut} event in this node's log for each
    session cut.  A cut that fails (the database is unreachable) is tried
    again after each of C{delays} seconds, on the store's reactor; one the
    node's writer still holds the lock for every L{LOCK_RETRY} seconds, up
    to L{LOCK_TRIES} times (then the node is back: nothing is cut).  Fires
    with the ids of the sessions cut.

    @param inThread: C{inThread(f, *args)} returns a Deferred of
        C{f(*args)} run off the reactor (default: the reactor's thread pool).
    """
    # Not at the top: the writer process imports this module (for the reasons) and no Twisted.
    from twisted.internet import task, threads
    from twisted.logger import Logger

    log = Logger(namespace=__name__)
    peer = store.origin.split("/", 1)[-1]
    reactor = store.reactor
    if inThread is None:
        def inThread(f, *args):
            return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)
    left = list(delays)
    lockTries = [LOCK_TRIES]

    def attempt(_=None):
        return inThread(cutPeer, store.databaseUrl, node, peer).addCallbacks(sealed, failed)

    def failed(f):
        if f.check(NodeLocked):
            lockTries[0] -= 1
            if lockTries[0] <= 0:
                return []  # still locked after 30 s: the node is back and seals its own sessions
            return task.deferLater(reactor, LOCK_RETRY, attempt)
        if not left:
            return f
        delay = left.pop(0)
        log.warn("Node {node} down: its open sessions could not be cut off yet ({why}); again in {delay} s",
                 node=node, why=f.getErrorMessage(), delay=delay)
        return task.deferLater(reactor, delay, attempt)

    def sealed(cuts: list) -> list:
        for cut in cuts:
            store.auditEvent({"kind": "peer-cut", "node": node, **cut})
        if cuts:
            log.warn("Node {node} down: {count} open session(s) sealed as cut off by this node ({peer})",
                     node=node, count=len(cuts), peer=peer)
        return [cut["session"] for cut in cuts]

    return attempt()


def checkPeerCuts(report, reader, url: str, nodes) -> None:
    """
    C{sealgate verify} of node C{reader.node}: its C{peer_cuts} rows (what
    readers show as "cut off by peer") against the C{peer-cut} events that
    the fleet's C{nodes} sealed naming it, both ways: a row no peer sealed
    was forged or altered, a sealed cut without its row was removed.
    """
    from sealgate.recording._errors import StoreError
    from sealgate.recording.pgreader import NodeReader

    rows = set()
    if reader._peerCuts:
        rows = {(by, sid, float(t), reason, int(size), int(logSize)) for sid, by, t, reason, size, logSize in
                reader.db.execute("SELECT session, by_node, time, reason, size, log_size FROM peer_cuts")}
    sealed = set()
    for peer in nodes:
        if peer == reader.node:
            continue
        try:
            with NodeReader(url, peer) as r:
                events = r.events(None)
        except StoreError as e:
            report.problem(f"the peer cuts of node {reader.node} cannot be checked against node {peer}'s log: {e}")
            continue
        for body in events:
            f = body.get("fields") or {}
            if body.get("event") == "peer-cut" and f.get("node") == reader.node:
                try:
                    sealed.add((peer, f["session"], float(f["time"]), f["reason"], int(f["size"]),
                                int(f["log_size"])))
                except (KeyError, TypeError, ValueError):
                    report.problem(f"node {peer}'s log leaf {body.get('n')}: a peer-cut event of node "
                                   f"{reader.node} without its fields")
    for by, sid, *_ in sorted(rows - sealed):
        report.problem(f"session {sid}: the peer_cuts table says node {by} cut it off, but no peer-cut event "
                       f"sealed in node {by}'s log says so: the row was forged or altered")
    for by, sid, *_ in sorted(sealed - rows):
        report.problem(f"session {sid}: node {by}'s log seals that it cut this session off, but the peer_cuts "
                       "table has no such row: the row was removed or altered")
