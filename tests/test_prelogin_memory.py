"""Gateway memory under 300 silent and 3 oversized pre-login postgres clients: bounded, and freed after."""

import socket
import struct
import threading
from pathlib import Path

from sealgate.protocols.postgres import _wire as w
from tests.harness.twistd import GatewayProcess

CONFIG = """
[gateway]
admin = "tcp:0:interface=127.0.0.1"

[limits]
login_timeout = "6s"
max_unauthenticated = 1000
max_unauthenticated_per_source = 1000

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "app"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port=9"
[connections.options]
database = "app"
username = "app"
allow_cleartext_on_loopback = true
"""

#: What each oversized client pushes: on today's main all of it is buffered.
PUSH = 64 << 20


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def oversized(port: int, results: list) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode())
    s.recv(65536)  # asked for the password
    sent = 0
    try:
        s.sendall(b"p" + struct.pack(">I", 256 << 20))
        chunk = b"x" * (1 << 20)
        while sent < PUSH:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the gateway hung up: what this test wants
    s.settimeout(60)
    data = b""
    try:
        while part := s.recv(65536):
            data += part
    except OSError:
        pass
    s.close()
    results.append((sent, data))


def test_300_silent_and_3_oversized_clients_keep_memory_bounded_and_it_is_freed(tmp_path):
    gw = GatewayProcess(tmp_path, CONFIG).start()
    silent: list[socket.socket] = []
    try:
        pid, port = gw.process.pid, gw.port("app")
        before = rss(pid)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(300)]
        results: list = []
        pushers = [threading.Thread(target=oversized, args=(port, results)) for _ in range(3)]
        for t in pushers:
            t.start()
        for t in pushers:
            t.join(120)
        during = rss(pid)
        # Each oversized client was cut at the pre-login allowance, not buffered.
        assert len(results) == 3
        for sent, data in results:
            assert sent < PUSH and b"08P01" in data
        # Every silent one is still held, then refused at the login timeout.
        answers = []
        for s in silent:
            s.settimeout(60)
            answers.append(s.recv(65536))
        assert all(b"57014" in a and b"no login within 6s" in a for a in answers)
        for s in silent:
            s.close()
        after = rss(pid)
        print(f"gateway RSS: before {before >> 20} MiB, with 303 clients {during >> 20} MiB, "
              f"after {after >> 20} MiB")
        assert during - before < 40 << 20
        assert after - before < 40 << 20
        # One log line per source and kind per interval, not one per connection.
        assert gw.log().count("Refused a login") <= 2
    finally:
        for s in silent:
            s.close()
        assert gw.stop() == 0
