"""/healthz, /readyz and /metrics tell the truth about the store: writer down, disk full, backlog over the bound."""

import fcntl
import os
import resource
import signal

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from sealgate.recording._engine import lockPath
from sealgate.session import TO_CLIENT
from sealgate.testing import startGateway
from tests.test_store_pressure import until

CONFIG = """
[gateway]
max_unsealed = "1MiB"
store_timeout = "60s"
"""


@pytest.fixture
def gateway(tmp_path):
    running = pytest_twisted.blockon(defer.ensureDeferred(startGateway(CONFIG, tmp_path)))
    yield running
    store = running.service.store
    if store.writerPid:
        os.kill(store.writerPid, signal.SIGCONT)
    pytest_twisted.blockon(running.stop())


async def _get(running, path):
    r = await treq.get(f"http://127.0.0.1:{running.adminPort}{path}", persistent=False)
    return r.code, await r.content()


async def _probes(running):
    import json

    health = await _get(running, "/healthz")
    ready = await _get(running, "/readyz")
    _, metrics = await _get(running, "/metrics")
    values = {}
    for line in metrics.decode().splitlines():
        if line.startswith("sealgate_store_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return (health[0], json.loads(health[1])), (ready[0], json.loads(ready[1])), values


@pytest_twisted.ensureDeferred
async def test_probes_are_healthy_with_a_working_store(gateway):
    health, ready, m = await _probes(gateway)
    assert health == (200, {"status": "ok"}) and ready == (200, {"status": "ready"})
    assert m["sealgate_store_writer_up"] == 1 and m["sealgate_store_disk_full"] == 0
    assert m["sealgate_store_max_unsealed_bytes"] == 1 << 20
    assert m['sealgate_store_relaying{state="flowing"}'] == 1


@pytest_twisted.ensureDeferred
async def test_a_writer_down_is_unhealthy_with_the_reason_until_it_is_back(gateway):
    store = gateway.service.store
    fd = os.open(lockPath(gateway.stateDir), os.O_RDWR)
    try:
        pid = store.writerPid
        os.kill(pid, signal.SIGKILL)
        await until(lambda: store.writerPid != pid, what="writer gone")
        fcntl.flock(fd, fcntl.LOCK_EX)  # its restarts are refused meanwhile
        health, ready, m = await _probes(gateway)
        assert health == (503, {"status": "unhealthy", "reason": "the recording store is restarting"})
        assert ready == (503, {"status": "unavailable", "reason": "the recording store is restarting"})
        assert m["sealgate_store_writer_up"] == 0 and m['sealgate_store_relaying{state="paused"}'] == 1
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    await until(lambda: store.pressure() is None, what="writer back")
    health, ready, m = await _probes(gateway)
    assert health == (200, {"status": "ok"}) and m["sealgate_store_writer_up"] == 1


@pytest_twisted.ensureDeferred
async def test_a_backlog_over_max_unsealed_is_unhealthy(gateway):
    store = gateway.service.store
    rec = store.openSession("flood", {})
    os.kill(store.writerPid, signal.SIGSTOP)  # a writer that takes nothing: the backlog only grows
    try:
        while store.pressure() is None:
            rec.frame(TO_CLIENT, b"x" * 16384)
        health, ready, m = await _probes(gateway)
        reason = "the recording backlog is over max_unsealed"
        assert health == (503, {"status": "unhealthy", "reason": reason}) and ready[0] == 503
        assert m["sealgate_store_unsealed_bytes"] > 1 << 20
    finally:
        os.kill(store.writerPid, signal.SIGCONT)
    await until(lambda: store.pressure() is None, what="drained")
    health, _, m = await _probes(gateway)
    assert health[0] == 200 and m["sealgate_store_unsealed_bytes"] <= 1 << 19
    await rec.close("done", {})


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_unhealthy_and_counted(gateway):
    store = gateway.service.store
    rec = store.openSession("s", {})
    rec.frame(TO_CLIENT, b"first")
    segment = gateway.stateDir / "segments" / "00000001.seg"
    await until(lambda: store.backlog() == 0 and segment.exists(), what="durable")
    pid = store.writerPid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (segment.stat().st_size + 1000, hard))
    try:
        rec.frame(TO_CLIENT, os.urandom(20_000))
        await until(lambda: store.pressure() == "the disk is full", what="disk full")
        health, ready, m = await _probes(gateway)
        assert health == (503, {"status": "unhealthy", "reason": "the disk is full"}) and ready[0] == 503
        assert m["sealgate_store_disk_full"] == 1 and m["sealgate_store_writer_up"] == 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    await until(lambda: store.pressure() is None, what="written")
    _, _, m = await _probes(gateway)
    assert m["sealgate_store_disk_full"] == 0
    await rec.close("done", {})
