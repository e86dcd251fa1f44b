"""A thousand failed logins against a real gateway: slowed by the backoff, sealed as a handful of leaves."""

import socket
import time

import pytest_twisted
from twisted.internet import defer, threads

from sealgate.protocols.postgres import _wire as w
from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.test_prelogin_memory import LISTENER

CONFIG = """
[limits]
login_backoff_base = "1ms"
login_backoff_max = "10ms"
failed_login_interval = "60s"
""" + LISTENER

BAD_KEY = "sgk_00000000000000ff_" + "A" * 43


def failedLogins(port: int, n: int) -> list[str]:
    """n logins with a wrong key, one after another; the SQLSTATE of each refusal."""
    codes = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode()
                  + w.PasswordMessage.cleartext(BAD_KEY).encode())
        r, data = w.Reader(frontend=False), b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        r.receive_data(data)
        while (f := r.next_event()) is not w.NEED_DATA:
            m = w.decodeFrame(f, False)
            if isinstance(m, w.ErrorResponse):
                codes.append(m.get("C"))
    return codes


@pytest_twisted.ensureDeferred
async def test_a_thousand_failed_logins_are_slowed_and_sealed_as_a_few_leaves(tmp_path, logs):
    g = await startGateway(CONFIG, tmp_path)
    try:
        port = g.port("app")
        start = time.monotonic()
        batches = await defer.gatherResults(
            [threads.deferToThread(failedLogins, port, 250) for _ in range(4)])
        took = time.monotonic() - start
    finally:
        await g.stop()
    codes = [c for batch in batches for c in batch]
    assert codes == ["28P01"] * 1000
    # Attempts from one address are spaced by the backoff (10ms at most
    # here): at least ~10s for 1,000 of them, whatever the machine's speed.
    assert took > 9.0
    with StoreReader(g.stateDir) as r:
        failed = [e["fields"] for e in r.events(None) if e.get("event") == "login_failed"]
    assert 2 <= len(failed) <= 3
    assert sum(f["count"] for f in failed) == 1000
    assert failed[0]["reason"] == "unknown API key" and failed[0]["source"] == "127.0.0.1"
    assert failed[-1]["aggregated"] and failed[-1]["reasons"] == {"unknown API key": failed[-1]["count"]}
    # Logged like they are sealed: the first one, then a count per interval.
    assert sum("Login refused on app" in line for line in logs) == 1
    assert sum("more failed login(s) from 127.0.0.1" in line for line in logs) <= 2
