"""A protocol plugin that lives only in the test tree, proxied by a real twistd gateway.

Proves the plugin API end to end: discovery through twisted.plugin from
PYTHONPATH alone, identity (API keys), the access check, a guardrail, an
approval decided through the CLI, masking, and a sealed recording that
verifies and replays without the login secret.
"""

import json
import socket
from pathlib import Path

import pytest

from sealgate.testing import EchoBackend
from tests.harness.twistd import GatewayProcess

PLUGIN_DIR = Path(__file__).parent / "plugins_oot"

CONFIG = """
[gateway]
state_dir = "state"
admin = "tcp:0:interface=127.0.0.1"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["echo"]

[[connections]]
name = "echo"
protocol = "line"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={backend}"

[[rules]]
name = "no-rm"
action = "deny"
commands = ["^rm "]
reason = "deleting files is not allowed"

[[rules]]
name = "deploys-need-a-lead"
action = "approve"
commands = ["^deploy"]
approvers = ["leads"]
expires = "5m"

[masking]
detectors = ["credit_card"]
"""


@pytest.fixture
def echoBackend():
    with EchoBackend() as backend:
        yield backend.port


class LineClient:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rwb")

    def send(self, line: str) -> None:
        self.file.write(line.encode() + b"\n")
        self.file.flush()

    def read(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def close(self):
        self.file.close()
        self.sock.close()


def test_out_of_tree_plugin_proxies_with_identity_chain_and_recording(tmp_path, echoBackend):
    gw = GatewayProcess(tmp_path, CONFIG.replace("{backend}", str(echoBackend)), [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci-deploy", "--group", "eng").stdout.strip().splitlines()[-1]
    lead = gw.cli("keys", "create", "--name", "lead-bob", "--group", "leads").stdout.strip().splitlines()[-1]
    outsider = gw.cli("keys", "create", "--name", "sales-eve", "--group", "sales").stdout.strip().splitlines()[-1]
    gw.start()
    try:
        port = gw.port("echo")

        refused = LineClient(port)
        refused.send("AUTH sgk_not_a_real_key")
        assert refused.read().startswith("ERR ")
        refused.close()

        nogrant = LineClient(port)
        nogrant.send(f"AUTH {outsider}")
        assert nogrant.read() == "ERR sales-eve has no role that grants connection echo"
        nogrant.close()

        c = LineClient(port)
        c.send(f"AUTH {key}")
        ok = c.read()
        assert ok.startswith("OK ")
        sessionId = ok[3:]
        c.send("hello")
        assert c.read() == "hello"
        c.send("rm -rf /")
        assert c.read() == "ERR denied by no-rm: deleting files is not allowed"
        c.send("pay with 4111 1111 1111 1111 please")
        masked = c.read()
        assert "4111 1111 1111 1111" not in masked and masked.startswith("pay with ")

        c.send("deploy v2")
        held = c.read()
        assert held.startswith("HOLD ") and "waits for leads" in held
        ticket = held.split("ticket ")[1].split()[0]
        listed = json.loads(gw.cli("approvals", "list", "--json", token=lead).stdout)
        assert [t["id"] for t in listed] == [ticket] and listed[0]["command"] == "deploy v2"
        mine = gw.cli("approvals", "approve", ticket, token=key, check=False)
        assert mine.returncode == 2 and "cannot decide their own ticket" in mine.stderr
        gw.cli("approvals", "approve", ticket, "--reason", "release window", token=lead)
        assert c.read() == "deploy v2"
        c.send("bye")
        assert c.read() == "bye"
        c.close()
    finally:
        assert gw.stop() == 0

    sessions = json.loads(gw.cli("sessions", "list", "--json").stdout)
    assert sessionId in [s["id"] for s in (sessions if isinstance(sessions, list) else sessions["sessions"])]
    gw.cli("verify")
    replay = gw.cli("replay", sessionId, "--no-wait").stdout
    assert "hello" in replay and "deploy v2" in replay
    # What the client received is recorded masked; what it typed is evidence
    # of what it sent and stays as typed.
    received = [line for line in replay.splitlines() if line.startswith("< ")]
    assert any(line.startswith("< pay with ") for line in received)
    assert not any("4111 1111 1111 1111" in line for line in received)
    everything = gw.log() + replay + json.dumps(sessions)
    for secret in (key, lead, outsider):
        assert secret not in everything
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and lead.encode() not in data
