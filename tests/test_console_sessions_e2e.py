"""End to end in headless Chromium: searching sessions, ISO 8601 times, the plugin's player and downloads."""

import base64
import json
import os
import re

import pytest_twisted
from twisted.internet import threads

from sealgate.config import ConnectionConfig
from sealgate.testing import startGateway
from tests.harness.twistd import runCLI
from tests.test_console_e2e import ARTIFACTS, Browser
from tests.test_notify import until

CONFIG = """
[admin]
auditors = ["audit"]

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]
"""

BOX = ConnectionConfig("box", "ssh", "tcp:0", "tcp:host=127.0.0.1:port=1")
DB = ConnectionConfig("db", "postgres", "tcp:0", "tcp:host=127.0.0.1:port=1")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]05:30$")


def _control(s, **fields):
    s.received(json.dumps(fields).encode(), channel=2)


async def _sessions(g, key):
    identity = await g.gateway.identity.authenticate(key)
    ssh = g.gateway.openSession(BOX, identity, "127.0.0.1:6000")
    _control(ssh, type="exec", command="ls /srv")
    ssh.decide("exec", "ls /srv")
    ssh.emit(b"app\nlogs\n", channel=0)
    await ssh.end("client closed")
    db = g.gateway.openSession(DB, identity, "127.0.0.1:6001")
    db.decide("sql", "SELECT 1", {"statements": ("SELECT",)})
    await db.end("client closed")
    return ssh.id, db.id


def _fetch(driver, url):
    """GET C{url} from the page, as a link the user clicks would: the console's cookie goes along."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: "same-origin"}).then(async r => {
          const bytes = new Uint8Array(await r.arrayBuffer());
          let s = ""; for (const b of bytes) s += String.fromCharCode(b);
          done({status: r.status, type: r.headers.get("content-type"),
                disposition: r.headers.get("content-disposition"), body: btoa(s)});
        }).catch(e => done({error: String(e)}));""", url)


@pytest_twisted.ensureDeferred
async def test_console_searches_sessions_plays_and_downloads_their_plugin_formats(tmp_path):
    g = await startGateway(CONFIG, tmp_path)
    key = g.createKey("alice", ["eng"])
    auditor = g.createKey("audrey", ["audit"])
    base = f"http://127.0.0.1:{g.adminPort}"
    sshId, dbId = await _sessions(g, key)

    def sealed():
        from sealgate.recording.reader import StoreReader

        with StoreReader(g.stateDir) as r:
            return all((s := r.sessionRecord(i)) is not None and s.state == "closed" for i in (sshId, dbId))

    await until(lambda: sealed(), "both sessions sealed")
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # a zone with a half-hour offset, for the browser only
    try:
        browser = await threads.deferToThread(Browser)
    finally:
        os.environ.pop("TZ") if zone is None else os.environ.__setitem__("TZ", zone)

    def console():
        d = browser.driver
        d.get(base + "/login")
        browser.wait("#key").send_keys(auditor)
        browser.wait("#key-login").click()
        browser.wait("body.ready")
        d.get(base + "/console/#sessions")
        browser.waitText("#session-count", "2 session(s)")
        assert browser.unlabelled() == []
        browser.wait("#filters input[name=command]").send_keys("ls /s")
        browser.wait("#search").click()
        browser.waitText("#session-count", "1 session(s)")
        rows = d.execute_script("return [...document.querySelectorAll('#sessions tbody tr')]"
                                ".map(r => [...r.cells].map(c => c.textContent))")
        d.save_screenshot(str(ARTIFACTS / "console-sessions-search.png"))
        browser.wait("#filters input[name=command]").clear()
        browser.wait("#filters input[name=connection]").send_keys("db")
        browser.wait("#search").click()
        browser.waitText("#sessions tbody", dbId)
        byConnection = d.execute_script("return [...document.querySelectorAll('#sessions tbody a')]"
                                        ".map(a => a.textContent)")
        # Times typed in the viewer's zone: before the sessions opened finds none, after finds them.
        d.execute_script("document.querySelector('#filters input[name=until]').value = '2000-01-01T05:30:00'")
        browser.wait("#search").click()
        browser.waitText("#session-count", "0 session(s)")
        d.execute_script("document.querySelector('#filters input[name=until]').value = '';"
                         "document.querySelector('#filters input[name=since]').value = '2000-01-01T05:30:00'")
        browser.wait("#search").click()
        browser.waitText("#session-count", "1 session(s)")
        d.get(f"{base}/console/#session/{sshId}")
        browser.wait("#download-bundle")
        links = d.execute_script("return [...document.querySelectorAll('#downloads a')]"
                                 ".map(a => [a.id, a.getAttribute('href')])")
        browser.wait("#terminal .ap-wrapper, #terminal .ap-player")  # the plugin's asciicast player
        browser.waitText("#transcript", "$ ls /srv")
        opened = d.execute_script("return document.querySelector('#session-meta').textContent")
        d.save_screenshot(str(ARTIFACTS / "console-session-downloads.png"))
        got = {name: _fetch(d, href) for name, href in links}
        return rows, byConnection, links, opened, got

    try:
        rows, byConnection, links, opened, got = await threads.deferToThread(console)
    finally:
        await threads.deferToThread(browser.quit)
        await g.stop()

    assert [r[0] for r in rows] == [sshId] and ISO.match(rows[0][1]), rows
    assert byConnection == [dbId]
    assert [name for name, _ in links] == ["download-asciicast", "download-transcript", "download-frames",
                                           "download-bundle"]
    assert re.search(r"Opened\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:30", opened), opened
    cast = got["download-asciicast"]
    assert cast["status"] == 200 and cast["type"] == "application/x-asciicast"
    assert cast["disposition"] == f'attachment; filename="{sshId}.cast"'
    header, output = base64.b64decode(cast["body"]).decode().splitlines()[:2]
    assert json.loads(header)["command"] == "ls /srv" and json.loads(output)[2] == "app\r\nlogs\r\n"
    bundle = got["download-bundle"]
    assert bundle["status"] == 200 and bundle["disposition"] == f'attachment; filename="{sshId}.bundle"'
    path = tmp_path / "downloaded.bundle"
    path.write_bytes(base64.b64decode(bundle["body"]))
    checked = await threads.deferToThread(runCLI, "verify-bundle", str(path), "--json", cwd=tmp_path)
    assert json.loads(checked.stdout)["ok"] is True and json.loads(checked.stdout)["session"] == sshId
    assert key not in json.dumps(got) and auditor not in json.dumps(got)
