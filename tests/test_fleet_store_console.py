"""The console in headless Chromium, in fleet mode: one node's console lists and opens another node's session."""

import base64
import json

import pytest_twisted
from twisted.internet import threads

from sealgate.recording.pgreader import FleetReader
from sealgate.recording.store import SQLiteStore
from sealgate.session import FROM_CLIENT, TO_CLIENT
from sealgate.testing import startGateway
from tests.fleetpg import fleetDatabase
from tests.harness.twistd import runCLI
from tests.test_console_e2e import ARTIFACTS, Browser
from tests.test_console_sessions_e2e import BOX, _fetch
from tests.test_notify import until


@pytest_twisted.ensureDeferred
async def test_console_of_one_node_lists_and_opens_the_sessions_of_another(tmp_path, postgres, monkeypatch):
    from twisted.internet import reactor

    url = fleetDatabase(postgres)
    monkeypatch.setenv("SEALGATE_TEST_FLEET_URL", url)
    text = (f'[gateway]\nstore_env = "SEALGATE_TEST_FLEET_URL"\nnode = "gw-1"\nstate_dir = "{tmp_path / "state"}"\n'
            'admin = "tcp:0:interface=127.0.0.1"\ncheckpoint_interval = "200ms"\n\n'
            '[admin]\nauditors = ["audit"]\n\n[[roles]]\nname = "eng"\ngroups = ["eng"]\nconnections = ["*"]\n')
    (tmp_path / "sealgate.toml").write_text(text)
    keys = {}
    for name, group in (("alice", "eng"), ("audrey", "audit")):
        made = await threads.deferToThread(runCLI, "--config", str(tmp_path / "sealgate.toml"), "keys", "create",
                                           "--name", name, "--group", group)
        keys[name] = made.stdout.strip().splitlines()[-1]
    g = await startGateway(text, tmp_path)
    # gw-1 records one session itself ...
    identity = await g.gateway.identity.authenticate(keys["alice"])
    own = g.gateway.openSession(BOX, identity, "127.0.0.1:6000")
    own.emit(b"on gw-1\n", channel=0)
    await own.end("client closed")
    # ... and node gw-2 (its store writer, as its gateway runs it) another.
    other = SQLiteStore(tmp_path / "gw-2", "sealgate/gw-2", reactor, checkpointInterval=0.2, databaseUrl=url)
    await other.start()
    rec = other.openSession("sess-on-gw-2", {"identity": "apikey:bob", "protocol": "ssh", "connection": "box"})
    rec.frame(FROM_CLIENT, b"ls\n")
    rec.frame(TO_CLIENT, b"recorded on gw-2\n")
    await rec.close("client closed", {})
    await other.stop()

    def sealed():
        with FleetReader(url, "gw-1") as r:
            return {s.node for s in r.findSessions() if s.state == "closed"} == {"gw-1", "gw-2"}

    await until(sealed, "both nodes' sessions sealed")
    browser = await threads.deferToThread(Browser)
    base = f"http://127.0.0.1:{g.adminPort}"

    def console():
        d = browser.driver
        d.get(base + "/login")
        browser.wait("#key").send_keys(keys["audrey"])
        browser.wait("#key-login").click()
        browser.wait("body.ready")
        d.get(base + "/console/#sessions")
        browser.waitText("#session-count", "2 session(s)")
        header = d.execute_script("return [...document.querySelectorAll('#sessions thead th')]"
                                  ".filter(t => !t.hidden).map(t => t.textContent)")
        rows = d.execute_script("return [...document.querySelectorAll('#sessions tbody tr')]"
                                ".map(r => [...r.cells].map(c => c.textContent))")
        d.save_screenshot(str(ARTIFACTS / "console-fleet-sessions.png"))
        d.get(f"{base}/console/#session/sess-on-gw-2")
        browser.wait("#download-bundle")
        browser.waitText("#session-meta", "gw-2")
        meta = d.execute_script("return document.querySelector('#session-meta').textContent")
        href = d.execute_script("return document.querySelector('#download-bundle').getAttribute('href')")
        return header, rows, meta, _fetch(d, href)

    try:
        header, rows, meta, bundle = await threads.deferToThread(console)
    finally:
        await threads.deferToThread(browser.quit)
        await g.stop()

    assert header[-1] == "Node"
    assert sorted((r[0] if r[0] == "sess-on-gw-2" else "own", r[-1]) for r in rows) == [
        ("own", "gw-1"), ("sess-on-gw-2", "gw-2")]
    assert "Nodegw-2" in meta
    assert bundle["status"] == 200
    path = tmp_path / "gw-2.bundle"
    path.write_bytes(base64.b64decode(bundle["body"]))
    checked = await threads.deferToThread(runCLI, "verify-bundle", str(path), "--json", cwd=tmp_path)
    verdict = json.loads(checked.stdout)
    assert verdict["ok"] is True and verdict["session"] == "sess-on-gw-2"
