"""A SIGTERM at any point of a real twistd start-up is a clean stop (exit 0); /healthz waits for the start."""

import signal
import socket
import subprocess
import time

import pytest

from tests.harness._proc import freePort
from tests.harness.twistd import BIN, GatewayProcess
from tests.test_twistd import sampleConfig


def _spawn(tmp_path):
    port = freePort()
    text = sampleConfig().replace('admin = "tcp:0:interface=127.0.0.1"', f'admin = "tcp:{port}:interface=127.0.0.1"')
    gw = GatewayProcess(tmp_path, text)
    gw._log = open(gw.logPath, "wb")
    gw.process = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "sealgate", "--config", str(gw.config)],
        cwd=gw.directory, env=gw.env, stdout=gw._log, stderr=subprocess.STDOUT)
    return gw, port


def _until(gw, condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert gw.process.poll() is None, f"gateway exited {gw.process.returncode} before {what}:\n{gw.log()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{gw.log()}"
        time.sleep(0.005)


def _accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


#: Points of start-up, each a condition on the running process.
POINTS = {
    "twistd logging": lambda gw, port: "starting up" in gw.log(),
    "admin port bound": lambda gw, port: _accepts(port),
    "store opened": lambda gw, port: "Checkpoints are signed by key" in gw.log(),
    "started": lambda gw, port: "Admin API on" in gw.log(),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_sigterm_at_each_point_of_start_up_exits_0(tmp_path, point):
    gw, port = _spawn(tmp_path)
    try:
        _until(gw, lambda: POINTS[point](gw, port), point)
    finally:
        code = gw.stop(signal.SIGTERM)
    log = gw.log()
    assert code == 0, log
    assert "cannot start" not in log and "Traceback" not in log, log


def test_healthz_answers_only_once_the_gateway_has_started(tmp_path):
    gw, port = _spawn(tmp_path)
    try:
        _until(gw, lambda: _accepts(port), "admin port bound")
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        first = s.recv(1)
        # The answer came after the start, not while the store was opening.
        assert first == b"H" and "Admin API on" in gw.log(), gw.log()
        s.close()
    finally:
        assert gw.stop(signal.SIGTERM) == 0
