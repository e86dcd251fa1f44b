"""A recorded SSH terminal session replayed in the console's asciinema player (headless Chromium)."""

import os
import subprocess
from pathlib import Path

import pytest_twisted
from twisted.internet import threads

from sealgate.testing import startGateway
from tests.test_console_e2e import ARTIFACTS, Browser
from tests.test_notify import until


def config(sshd) -> str:
    return f"""
[admin]
auditors = ["audit"]

[[connections]]
name = "web-1"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"

[[roles]]
name = "ops"
groups = ["ops"]
connections = ["web-1"]
"""


def keyLogin(browser, base, key):
    d = browser.driver
    d.get(base + "/login")
    browser.wait("#key").send_keys(key)
    browser.wait("#key-login").click()
    browser.wait("body.ready")
    return browser.waitText("#whoami", "(")


@pytest_twisted.ensureDeferred
async def test_terminal_session_plays_in_the_console(tmp_path, sshd):
    from sealgate.identity.sshkeys import SSHKeyStore

    g = await startGateway(config(sshd), tmp_path)
    browser = None
    try:
        userKey = tmp_path / "alice"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(userKey)], check=True)
        SSHKeyStore.forStateDir(g.stateDir).add("alice", Path(f"{userKey}.pub").read_text(), ["ops"])
        known = tmp_path / "known_hosts"
        pub = (g.stateDir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        known.write_text(f"[127.0.0.1]:{g.port('web-1')} {' '.join(pub)}\n")
        opened = []
        realOpen = g.gateway.openSession
        g.gateway.openSession = lambda *a, **kw: opened.append(realOpen(*a, **kw)) or opened[-1]
        argv = ["ssh", "-tt", "-F", "/dev/null", "-p", str(g.port("web-1")), "-i", str(userKey),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=ERROR", "web-1@127.0.0.1",
                r'printf "\033[1;32mhello-cast\033[0m\n"']
        r = await threads.deferToThread(subprocess.run, argv, capture_output=True, timeout=60,
                                        stdin=subprocess.DEVNULL, env=dict(os.environ))
        assert b"hello-cast" in r.stdout, r.stderr
        sid = opened[0].id
        await until(lambda: not g.gateway.sessions, "the session to end")

        key = g.createKey("audrey", ["audit"])
        base = f"http://127.0.0.1:{g.adminPort}"
        browser = await threads.deferToThread(Browser)

        def watch():
            assert keyLogin(browser, base, key) == "apikey:audrey (auditor)"
            browser.driver.get(f"{base}/console/#session/{sid}")
            browser.wait("#player .ap-player")
            browser.wait("#player .ap-play-button").click()
            text = browser.waitText("#player .ap-player", "hello-cast")
            browser.driver.save_screenshot(str(ARTIFACTS / "console-terminal.png"))
            transcript = browser.waitText("#transcript", "hello-cast")
            logs = [e for e in browser.driver.get_log("browser") if e["level"] == "SEVERE"]
            return text, transcript, logs

        text, transcript, logs = await threads.deferToThread(watch)
        assert "hello-cast" in text and "\x1b" not in transcript
        assert logs == []  # nothing blocked by the content security policy, no script errors
    finally:
        if browser is not None:
            await threads.deferToThread(browser.quit)
        await g.stop()
