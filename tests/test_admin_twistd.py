"""The admin site under a real twistd gateway: console, OpenAPI and metrics served, the CLI bound by roles."""

import json
import urllib.request

from tests.harness.twistd import GatewayProcess
from tests.test_plugin_api import CONFIG, PLUGIN_DIR, LineClient, echoBackend  # noqa: F401


def fetch(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.headers.get("content-type"), r.read()


def test_twistd_serves_the_console_and_the_cli_respects_roles(tmp_path, echoBackend):  # noqa: F811
    text = CONFIG.replace("{backend}", str(echoBackend)) + '\n[admin]\nauditors = ["audit"]\n'
    gw = GatewayProcess(tmp_path, text, [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci-deploy", "--group", "eng").stdout.strip().splitlines()[-1]
    lead = gw.cli("keys", "create", "--name", "lead-bob", "--group", "leads").stdout.strip().splitlines()[-1]
    audit = gw.cli("keys", "create", "--name", "audrey", "--group", "audit").stdout.strip().splitlines()[-1]
    gw.start()
    try:
        status, ctype, body = fetch(gw.adminPort, "/console/")
        assert status == 200 and ctype.startswith("text/html") and b"/console/app.js" in body
        status, _, body = fetch(gw.adminPort, "/console/vendor/asciinema-player/asciinema-player.min.js")
        assert status == 200 and len(body) > 100_000
        assert json.loads(fetch(gw.adminPort, "/openapi.json")[2])["info"]["title"] == "sealgate admin API"

        c = LineClient(gw.port("echo"))
        c.send(f"AUTH {key}")
        assert c.read().startswith("OK ")
        c.send("deploy v3")
        ticket = c.read().split("ticket ")[1].split()[0]

        assert b"sealgate_tickets_pending 1.0" in fetch(gw.adminPort, "/metrics")[2]
        seen = json.loads(gw.cli("approvals", "list", "--json", token=audit).stdout)
        assert [t["id"] for t in seen] == [ticket]
        refused = gw.cli("approvals", "approve", ticket, token=audit, check=False)
        assert refused.returncode == 2 and "needs the admin or approver role" in refused.stderr
        own = json.loads(gw.cli("approvals", "list", "--json", token=key).stdout)
        assert [t["id"] for t in own] == [ticket]  # a requester follows their own ticket
        gw.cli("approvals", "approve", ticket, "--reason", "release", token=lead)
        assert c.read() == "deploy v3"
        c.close()
    finally:
        assert gw.stop() == 0
    gw.cli("verify")
    for secret in (key, lead, audit):
        assert secret not in gw.log()
