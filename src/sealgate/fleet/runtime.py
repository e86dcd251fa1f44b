"""One node's part in a fleet: the shared database, the ticket board and the lease, started and stopped together."""

from twisted.internet import defer
from twisted.logger import Logger

from sealgate.fleet import schema, sharing
from sealgate.fleet.nodes import NodeLease, PGNodeRegistry
from sealgate.fleet.tickets import PGTicketBoard
from sealgate.fleetdb import FleetConfig, FleetDB


class Fleet:
    """
    Built by the gateway service when C{[gateway] store_env}/C{store_file}
    is set.  C{onPeerDown(hook)} is how other parts (the recording store)
    learn that a peer died: C{hook(node)} is called once fleet-wide, on the
    node that declared it down.
    """

    _log = Logger()

    def __init__(self, config: FleetConfig, reactor):
        self.config = config
        self.node = config.node
        self.db = FleetDB(config.url, reactor)
        self.board = PGTicketBoard(self.db, self.node)
        self.registry = PGNodeRegistry(self.db)
        self.lease = NodeLease(self.registry, self.node, config.lease, clock=reactor)
        self.lease.onPeerDown(self._expireTickets)

    def __repr__(self) -> str:
        return f"<Fleet node={self.node} db={self.db.redacted}>"

    def onPeerDown(self, hook) -> None:
        self.lease.onPeerDown(hook)

    def _expireTickets(self, node: str) -> defer.Deferred:
        def expired(ids):
            if ids:
                self._log.warn("Expired {n} pending ticket(s) of node {peer}: {ids}",
                               n=len(ids), peer=node, ids=", ".join(ids))
        return self.board.expireNode(node, f"node {node} down").addCallback(expired)

    def start(self, approvals, admin: str = "") -> defer.Deferred:
        """Create or migrate the control tables, join the fleet, follow the tickets."""
        self.lease.admin = admin

        async def go():
            await self.db.migrate(schema.COMPONENT, schema.STEPS)
            # Tickets of this node's previous life hold nothing any more.
            await self.board.expireNode(self.node, f"node {self.node} restarted")
            sharing.start(approvals)
            await self.lease.start()
            if not self.lease.renewed:
                raise RuntimeError(f"node {self.node} cannot join the fleet database "
                                   f"{self.db.redacted}")
            self._log.info("Node {node} joined the fleet ({db}); lease {lease:g}s",
                           node=self.node, db=self.db.redacted, lease=self.config.lease)
        return defer.ensureDeferred(go())

    def nodes(self) -> defer.Deferred:
        return self.lease.nodes()

    def stop(self) -> defer.Deferred:
        async def go():
            try:
                await self.lease.stop()
                await self.board.expireNode(self.node, f"node {self.node} stopped")
            except Exception as e:
                self._log.warn("Node {node}: leaving the fleet: {why}", node=self.node, why=str(e))
            finally:
                self.board.stop()
                await self.db.close()
        return defer.ensureDeferred(go())
