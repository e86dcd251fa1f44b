"""End to end: psql's DROP TABLE waits for a human who approves or denies it in the console (headless Chromium)."""

import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess

import pytest_twisted
from twisted.internet import threads

from sealgate.testing import startGateway
from tests.harness.postgres import SCRAM_USER
from tests.harness.twistd import REPO, runCLI
from tests.test_notify import until

PG_ENV = "SEALGATE_TEST_E2E_PG_PASSWORD"
HOOK_ENV = "SEALGATE_TEST_E2E_HOOK_SECRET"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts"



def config(postgres, issuer, hook) -> str:
    return f"""
[identity]
oidc_issuer = "{issuer.issuer}"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "app"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={postgres.port}"
[connections.options]
database = "app"
username = "{SCRAM_USER}"
password_env = "{PG_ENV}"
allow_cleartext_on_loopback = true

[[rules]]
name = "drops-need-a-lead"
action = "approve"
statements = ["DROP"]
approvers = ["leads"]
expires = "2m"

[[rules]]
name = "truncates-expire"
action = "approve"
statements = ["TRUNCATE"]
approvers = ["leads"]
expires = "2s"

[[notify]]
name = "ops"
url = "{hook}/hook"
secret_env = "{HOOK_ENV}"
backoff = "50ms"
"""


class Browser:
    """Headless Chromium from Debian, driven by Selenium with its chromedriver (nothing downloaded)."""

    def __init__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
            raise AssertionError("needs Debian's chromium and chromium-driver: "
                                 "apt-get install chromium chromium-driver (.ci/test does)")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        ARTIFACTS.mkdir(exist_ok=True)

    def wait(self, css, timeout=30):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def waitText(self, css, text, timeout=30):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, timeout).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def login(self, base):
        self.driver.get(base + "/login")
        self.wait("#oidc-login").click()
        self.wait("body.ready")
        return self.waitText("#whoami", "(")

    def unlabelled(self):
        """Form fields a screen reader could not name."""
        return self.driver.execute_script(
            "return [...document.querySelectorAll('input, select, textarea')]"
            ".filter(e => e.type !== 'hidden' && !e.labels.length && !e.getAttribute('aria-label'))"
            ".map(e => e.id || e.name)")

    def decide(self, ticket, action, reason, screenshot=None):
        self.wait(f"#approve-{ticket}")
        assert self.unlabelled() == []
        box = self.wait(f"#reason-{ticket}")
        box.send_keys(reason)
        if screenshot:
            self.driver.save_screenshot(str(screenshot))
        self.wait(f"#{action}-{ticket}").click()
        return self.waitText("#status", f"Ticket {ticket}:")

    def quit(self):
        self.driver.quit()


def psql(postgres, port, key, sql):
    env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    argv = [postgres._bin("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(port), "-U", "alice", "-d", "app", "-c", sql]
    return threads.deferToThread(subprocess.run, argv, capture_output=True, text=True, env=env, timeout=180)


@pytest_twisted.ensureDeferred
async def test_psql_drop_waits_for_the_console_approve_deny_and_expiry(tmp_path, postgres, oidc_issuer, receiver):
    hook = receiver
    os.environ[PG_ENV] = postgres.password(SCRAM_USER)
    os.environ[HOOK_ENV] = "e2e-hook-secret"
    oidc_issuer.loginAs = ("bob", ("leads",))
    g = await startGateway(config(postgres, oidc_issuer, hook.url), tmp_path)
    key = g.createKey("alice", ["eng"])
    port = g.port("app")
    base = f"http://127.0.0.1:{g.adminPort}"
    approvals = g.gateway.approvals
    browser = await threads.deferToThread(Browser)
    try:
        who = await threads.deferToThread(browser.login, base)
        assert who.startswith("bob (approver")
        a, b = (f"e2e_{n}_{secrets.token_hex(4)}" for n in "ab")

        async def held(statement):
            await until(lambda: any(t.command.startswith(statement) for t in approvals.pending()), statement)
            return next(t for t in approvals.pending() if t.command.startswith(statement))

        # -- approve -------------------------------------------------------
        r = await psql(postgres, port, key, f"CREATE TABLE {a} (id int)")
        assert r.returncode == 0, r.stderr
        running = psql(postgres, port, key, f"DROP TABLE {a}")
        ticket = await held(f"DROP TABLE {a}")
        await until(lambda: any(json.loads(b)["ticket"]["id"] == ticket.id for _, _, b in hook.got), "webhook")
        _, headers, body = next(x for x in hook.got if json.loads(x[2])["ticket"]["id"] == ticket.id)
        assert headers["x-sealgate-signature"] == "sha256=" + hmac.new(
            b"e2e-hook-secret", body, hashlib.sha256).hexdigest()
        assert json.loads(body)["console"] == f"{base}/console/#ticket/{ticket.id}"
        assert not running.called

        # The requester cannot approve their own statement.
        from tests.test_admin_api import Admin

        api = Admin.__new__(Admin)
        api.base, api.keys = base, {"alice": key}
        code, refused = await api.call("alice", "POST", f"/api/approvals/{ticket.id}/approve", {})
        assert code == 403 and "cannot decide their own ticket" in refused["error"]

        status = await threads.deferToThread(browser.decide, ticket.id, "approve", "backup verified",
                                             ARTIFACTS / "console.png")
        assert status == f"Ticket {ticket.id}: approved"
        r = await running
        assert r.returncode == 0 and "DROP TABLE" in r.stdout, r.stderr
        gone = await psql(postgres, port, key, f"select to_regclass('{a}') is null")
        assert gone.stdout.strip() == "t"

        # -- deny ----------------------------------------------------------
        r = await psql(postgres, port, key, f"CREATE TABLE {b} (id int)")
        assert r.returncode == 0, r.stderr
        running = psql(postgres, port, key, f"DROP TABLE {b}")
        ticket2 = await held(f"DROP TABLE {b}")
        status = await threads.deferToThread(browser.decide, ticket2.id, "deny", "not during the freeze")
        assert status == f"Ticket {ticket2.id}: denied"
        r = await running
        assert r.returncode != 0 and f"denied by oidc:{oidc_issuer.issuer}#bob: not during the freeze" in r.stderr
        still = await psql(postgres, port, key, f"select to_regclass('{b}') is not null")
        assert still.stdout.strip() == "t"

        # -- expiry --------------------------------------------------------
        r = await psql(postgres, port, key, f"TRUNCATE {b}")
        assert r.returncode != 0 and "expired" in r.stderr
        expired = next(t for t in approvals.tickets.values() if t.command.startswith("TRUNCATE"))
        text = await threads.deferToThread(browser.waitText, f"#decided-{expired.id}", "expired")
        assert "expired" in text

        # The session list (filtered), its replay as a transcript, and its verification status.
        def sessionPages():
            d = browser.driver
            d.get(f"{base}/console/#sessions")
            field = browser.wait("#filters input[name=identity]")
            field.send_keys("alice")
            browser.wait("#filters button").click()
            browser.waitText("#sessions tbody", ticket.sessionId)
            browser.wait(f"#sessions a[href='#session/{ticket.sessionId}']").click()
            assert browser.unlabelled() == []
            verified = browser.waitText("#verify", "verified")
            transcript = browser.waitText("#transcript", f"DROP TABLE {a}")
            d.save_screenshot(str(ARTIFACTS / "console-session.png"))
            return verified, transcript

        verified, transcript = await threads.deferToThread(sessionPages)
        assert verified.startswith("✔ verified")
        assert f"DROP TABLE {a}" in transcript and key not in transcript
    finally:
        await threads.deferToThread(browser.quit)
        await g.stop()

    # Every decision is sealed with who and why, and the store verifies.
    verify = await threads.deferToThread(runCLI, "verify", "--config", str(g.path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    from sealgate.recording.reader import StoreReader

    with StoreReader(g.stateDir) as reader:
        events = [e["fields"] for s in reader.sessions() for e in reader.events(s["id"])
                  if e.get("event") == "approval"]
    decided = {(e["ticket"], e["state"]): e for e in events}
    assert decided[(ticket.id, "approved")]["by"] == f"oidc:{oidc_issuer.issuer}#bob"
    assert decided[(ticket.id, "approved")]["reason"] == "backup verified"
    assert decided[(ticket.id, "notified")]["by"] == "ops"
    assert decided[(ticket2.id, "denied")]["reason"] == "not during the freeze"
    assert decided[(expired.id, "expired")]["by"] is None
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000

