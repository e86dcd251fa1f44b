"""Node leases without a reactor: renewals on a task.Clock, a lapsed peer declared down exactly once."""

from twisted.internet import defer, task
from zope.interface.verify import verifyObject

from sealgate.fleet.interfaces import INodeRegistry
from sealgate.fleet.nodes import MemoryNodeRegistry, NodeLease, PGNodeRegistry


def fleetOf(names, lease=3.0):
    clock, registry = task.Clock(), MemoryNodeRegistry()
    leases = {n: NodeLease(registry, n, lease, clock=clock) for n in names}
    downs: list = []
    for n, lease_ in leases.items():
        lease_.onPeerDown(lambda peer, n=n: downs.append((n, peer)))
        lease_.start()
    return clock, registry, leases, downs


def states(lease):
    out = []
    lease.nodes().addCallback(out.append)
    return {d["name"]: (d["state"], d["down_reason"]) for d in out[0]}


def test_both_registries_provide_the_interface():
    verifyObject(INodeRegistry, MemoryNodeRegistry())
    verifyObject(INodeRegistry, PGNodeRegistry(db=None))


def test_renewing_nodes_stay_up_however_long_they_run():
    clock, _, leases, downs = fleetOf(["a", "b", "c"])
    clock.pump([0.5] * 120)
    assert downs == [] and set(states(leases["a"]).values()) == {("up", "")}


def test_a_node_that_stops_renewing_is_declared_down_once_within_its_lease():
    clock, _, leases, downs = fleetOf(["a", "b", "c"], lease=3.0)
    clock.advance(1.0)
    # c dies: its loop stops without leaving (a kill -9).
    leases["c"]._loop.stop()
    died = clock.seconds()
    while not downs:
        clock.advance(0.25)
        assert clock.seconds() - died < 3.0 + leases["a"].interval + 0.01, "not declared in time"
    clock.pump([0.5] * 20)
    assert len(downs) == 1 and downs[0][1] == "c" and downs[0][0] in ("a", "b")
    assert states(leases["b"]) == {"a": ("up", ""), "b": ("up", ""), "c": ("down", "lease expired")}


def test_a_lapsed_but_unclaimed_lease_already_lists_as_down():
    clock, registry, leases, downs = fleetOf(["a"])
    registry.renew("ghost", clock.seconds(), 1.0)
    clock.advance(1.5)  # before a's next tick could claim it
    assert states(leases["a"])["ghost"] == ("down", "lease expired")


def test_a_failed_renewal_is_retried_at_the_next_tick():
    clock = task.Clock()
    registry = MemoryNodeRegistry()
    calls = []
    real = registry.renew

    def flaky(node, now, lease, admin=""):
        calls.append(now)
        if len(calls) == 1:
            return defer.fail(OSError("connection refused"))
        return real(node, now, lease, admin)

    registry.renew = flaky  # type: ignore[method-assign]
    lease = NodeLease(registry, "a", 3.0, clock=clock)
    lease.start()
    assert lease.renewed is False
    clock.advance(lease.interval)
    assert lease.renewed is True and len(calls) == 2


def test_a_clean_stop_leaves_and_is_not_a_death():
    clock, _, leases, downs = fleetOf(["a", "b"])
    leases["b"].stop()
    clock.pump([0.5] * 20)
    assert downs == [] and states(leases["a"])["b"] == ("down", "stopped")


def test_a_failing_hook_does_not_stop_the_others_or_the_lease():
    clock, registry, leases, downs = fleetOf(["a"])
    leases["a"]._hooks.insert(0, lambda peer: 1 / 0)
    registry.renew("z", clock.seconds(), 1.0)
    clock.pump([0.5] * 10)
    assert downs == [("a", "z")] and leases["a"]._loop.running
