"""Node liveness: each node renews a lease; a peer whose lease ran out is declared down, once, by one node."""

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from sealgate.fleet.interfaces import INodeRegistry
from sealgate.fleetdb import FleetDB

_COLUMNS = "name, state, started, renewed, lease, admin, down_at, down_by, down_reason"


def _asDict(row, now: float) -> dict:
    name, state, started, renewed, lease, admin, downAt, downBy, downReason = row
    if state == "up" and renewed + lease < now:
        # Ran out, not yet claimed by a peer: it is down all the same.
        state, downReason = "down", downReason or "lease expired"
    return {"name": name, "state": state, "started": started, "renewed": renewed,
            "lease": lease, "admin": admin, "down_at": downAt, "down_by": downBy,
            "down_reason": downReason if state == "down" else ""}


@implementer(INodeRegistry)
class MemoryNodeRegistry:
    """Leases in memory: the embedded gateway's (one node), and reactor-free tests of many."""

    def __init__(self):
        self.rows: dict[str, list] = {}

    def renew(self, node, now, lease, admin=""):
        row = self.rows.get(node)
        started = row[2] if row is not None and row[1] == "up" else now
        self.rows[node] = [node, "up", started, now, lease, admin, None, None, ""]
        return defer.succeed(None)

    def claimExpired(self, now, by):
        down = []
        for name, row in sorted(self.rows.items()):
            if name != by and row[1] == "up" and row[3] + row[4] < now:
                row[1], row[6], row[7], row[8] = "down", now, by, "lease expired"
                down.append(name)
        return defer.succeed(down)

    def list(self, now):
        return defer.succeed([_asDict(r, now) for _, r in sorted(self.rows.items())])

    def leave(self, node, now):
        row = self.rows.get(node)
        if row is not None:
            row[1], row[6], row[7], row[8] = "down", now, node, "stopped"
        return defer.succeed(None)


@implementer(INodeRegistry)
class PGNodeRegistry:
    """L{INodeRegistry} on the fleet database's C{nodes} table (times: each node's wall clock)."""

    def __init__(self, db: FleetDB):
        self.db = db

    def renew(self, node, now, lease, admin=""):
        return self.db.runOperation(
            "INSERT INTO nodes (name, state, started, renewed, lease, admin) "
            "VALUES (%s, 'up', %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "started = CASE WHEN nodes.state = 'up' THEN nodes.started ELSE EXCLUDED.started END, "
            "state = 'up', renewed = EXCLUDED.renewed, lease = EXCLUDED.lease, "
            "admin = EXCLUDED.admin, down_at = NULL, down_by = NULL, down_reason = ''",
            (node, now, now, lease, admin))

    def claimExpired(self, now, by):
        # One UPDATE: of several nodes seeing the same lapse, exactly one gets the row back.
        d = self.db.runQuery(
            "UPDATE nodes SET state = 'down', down_at = %s, down_by = %s, "
            "down_reason = 'lease expired' WHERE state = 'up' AND renewed + lease < %s "
            "AND name <> %s RETURNING name", (now, by, now, by))
        return d.addCallback(lambda rows: sorted(r[0] for r in rows))

    def list(self, now):
        d = self.db.runQuery(f"SELECT {_COLUMNS} FROM nodes ORDER BY name")
        return d.addCallback(lambda rows: [_asDict(r, now) for r in rows])

    def leave(self, node, now):
        return self.db.runOperation(
            "UPDATE nodes SET state = 'down', down_at = %s, down_by = %s, down_reason = 'stopped' "
            "WHERE name = %s", (now, node, node))


class NodeLease:
    """
    Renews this node's lease every C{interval} seconds (a third of the
    lease by default) and declares peers whose lease ran out down, calling
    each C{onPeerDown} hook with the peer's name (the tickets' expiry, the
    store's sealing of its sessions).  A failed renewal is logged and
    retried at the next tick; the clock is injectable (L{task.Clock}).
    """

    _log = Logger()

    def __init__(self, registry: INodeRegistry, node: str, lease: float = 10.0,
                 interval: float | None = None, clock: Any = None, admin: str = ""):
        if clock is None:
            from twisted.internet import reactor as clock
        self.registry = registry
        self.node = node
        self.lease = lease
        self.interval = interval if interval is not None else lease / 3
        self.clock = clock
        self.admin = admin
        self._hooks: list = []
        self._loop: task.LoopingCall | None = None
        #: Whether the last renewal reached the registry.
        self.renewed = False

    def onPeerDown(self, hook) -> None:
        """Call C{hook(node)} (it may return a Deferred) for each peer declared down."""
        self._hooks.append(hook)

    def start(self) -> defer.Deferred:
        """Renew now and then every interval; fires after the first renewal (or its failure)."""
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        return self.tick()

    def tick(self) -> defer.Deferred:
        now = self.clock.seconds()
        d = self.registry.renew(self.node, now, self.lease, self.admin)
        d.addCallback(lambda _: setattr(self, "renewed", True))
        d.addCallback(lambda _: self.registry.claimExpired(now, self.node))
        d.addCallback(self._peersDown)

        def failed(f):
            self.renewed = False
            self._log.warn("Node {node}: lease not renewed: {why}", node=self.node,
                           why=f.getErrorMessage())
        # Never let a failure stop the LoopingCall: the next tick retries.
        return d.addErrback(failed)

    def _peersDown(self, names) -> defer.Deferred:
        done = []
        for name in names:
            self._log.warn("Node {peer} is down (its lease ran out); declared by {node}",
                           peer=name, node=self.node)
            for hook in self._hooks:
                d = defer.maybeDeferred(hook, name)
                d.addErrback(self._hookFailed, name)
                done.append(d)
        return defer.gatherResults(done).addCallback(lambda _: names)

    def _hookFailed(self, f, name: str) -> None:
        self._log.failure("Peer-down hook failed for node {peer}", f, peer=name)

    def nodes(self) -> defer.Deferred:
        return self.registry.list(self.clock.seconds())

    def stop(self) -> defer.Deferred:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.registry.leave(self.node, self.clock.seconds())
