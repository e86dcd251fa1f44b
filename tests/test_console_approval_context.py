"""The approval card in real Chromium: what the statement does, where, why it is held, the exact command."""

import os

import pytest_twisted
from twisted.internet import threads

from sealgate.testing import startGateway
from tests.harness.postgres import SCRAM_USER
from tests.test_console_e2e import ARTIFACTS, HOOK_ENV, PG_ENV, Browser, config, psql
from tests.test_notify import until

CARD = "4111 1111 1111 1111"
EXTRA = """
[[rules]]
name = "whole-table-writes"
action = "approve"
effects = ["updates-all-rows"]
approvers = ["leads"]
reason = "an UPDATE with no effective WHERE needs a lead"
expires = "2m"

[masking]
detectors = ["credit_card"]
"""


@pytest_twisted.ensureDeferred
async def test_the_card_shows_the_effect_the_rule_reason_and_the_exact_command_marked(
        tmp_path, postgres, oidc_issuer, receiver):
    os.environ[PG_ENV] = postgres.password(SCRAM_USER)
    os.environ[HOOK_ENV] = "e2e-hook-secret"
    oidc_issuer.loginAs = ("bob", ("leads",))
    g = await startGateway(config(postgres, oidc_issuer, receiver.url) + EXTRA, tmp_path)
    key = g.createKey("alice", ["eng"])
    base = f"http://127.0.0.1:{g.adminPort}"
    approvals = g.gateway.approvals
    statement = f"UPDATE customers SET card = '{CARD}' WHERE true"
    browser = await threads.deferToThread(Browser)
    try:
        await threads.deferToThread(browser.login, base)
        running = psql(postgres, g.port("app"), key, statement)
        await until(lambda: approvals.pending(), "the held UPDATE")
        [ticket] = approvals.pending()

        def card():
            browser.driver.get(f"{base}/console/#ticket/{ticket.id}")
            summary = browser.waitText(f"#summary-{ticket.id}", "updates every row")
            command = browser.waitText(f"#command-{ticket.id}", "UPDATE customers")
            marked = browser.wait(f"#command-{ticket.id} mark.detected").text
            meta = browser.wait(f"#ticket-{ticket.id} dl.meta").text
            browser.driver.save_screenshot(str(ARTIFACTS / "approval-context.png"))
            return summary, command, marked, meta

        summary, command, marked, meta = await threads.deferToThread(card)
        assert summary == "updates every row of customers; writes rows of customers"
        # The approver sees exactly what will run, the card number marked.
        assert command == statement and marked == CARD
        assert "an UPDATE with no effective WHERE needs a lead" in meta
        assert "postgres" in meta and "app (127.0.0.1:" in meta
        status = await threads.deferToThread(browser.decide, ticket.id, "deny", "use a WHERE clause")
        assert status == f"Ticket {ticket.id}: denied"
        r = await running
        assert r.returncode != 0
    finally:
        await threads.deferToThread(browser.quit)
        await g.stop()
    assert (ARTIFACTS / "approval-context.png").stat().st_size > 10_000
