"""What an approver decides on: the effect in words, where it runs, why it is held, the exact command."""

import json

from twisted.internet import task

from sealgate.admin.notify import slackBody
from sealgate.admin.roles import mayReveal
from sealgate.approvals import Approvals
from sealgate.config import (
    AdminConfig,
    GatewayConfig,
    GatewaySection,
    IdentityConfig,
    MaskingConfig,
)
from sealgate.describe import summarize
from sealgate.identity import Identity
from sealgate.masking import Masker
from tests.test_chain import rule, session

CARD = "4111 1111 1111 1111"
COMMAND = f"UPDATE customers SET card = '{CARD}'"
DETAILS = {"statements": ("UPDATE",), "effects": ("updates-all-rows", "writes-rows"),
           "relations": ("customers",)}


def held(approvers=("leads",), reason="updates without WHERE need a lead"):
    s = session()
    masker = Masker(("credit_card",), (), ())
    a = Approvals(task.Clock())
    t = a.request(s, rule("whole-table-writes", "approve", approvers=approvers, reason=reason),
                  "sql", COMMAND, details=DETAILS, masker=masker)
    return s, t


def test_summary_says_what_the_statement_does_in_the_classifiers_words():
    assert summarize("sql", "delete from customers", {"effects": ("deletes-all-rows", "writes-rows"),
                                                      "relations": ("customers",)}) \
        == "deletes every row of customers; writes rows of customers"
    assert summarize("sql", "drop table a, b", {"effects": ("drops-object",),
                                                "relations": ("a", "b")}) == "drops a and b"
    assert summarize("exec", "rm -rf /srv", {"command": "rm -rf /srv"}) == "runs `rm -rf /srv` on the host"
    assert summarize("http", "DELETE /api/users/7", {}) == "sends DELETE /api/users/7"


def test_ticket_carries_protocol_target_rule_reason_and_the_exact_command_with_marks():
    _, t = held()
    exact = t.asDict(reveal=True)
    assert exact["summary"] == "updates every row of customers; writes rows of customers"
    assert exact["protocol"] == "postgres" and exact["target"] == "db (h:1)"
    assert exact["rule"] == "whole-table-writes"
    assert exact["rule_reason"] == "updates without WHERE need a lead"
    assert exact["command"] == COMMAND and exact["revealed"] is True
    [(start, end, detector)] = exact["marks"]
    assert COMMAND[start:end] == CARD and detector == "credit_card"


def test_without_reveal_the_command_is_masked_and_unmarked():
    _, t = held()
    masked = t.asDict()
    assert CARD not in json.dumps(masked)
    assert masked["revealed"] is False and masked["marks"] == []
    assert masked["command"].startswith("UPDATE customers SET card = '")


def test_the_sealed_requested_event_keeps_the_masked_command_and_the_context():
    s, _ = held()
    [(kind, fields)] = [e for e in s.recording.events if e[0] == "approval"]
    assert CARD not in json.dumps(fields)
    assert fields["summary"].startswith("updates every row of customers")
    assert fields["protocol"] == "postgres"


def _config():
    return GatewayConfig("t.toml", GatewaySection(state_dir="/nonexistent"), IdentityConfig(), (), (),
                         (), MaskingConfig(), admin=AdminConfig(admins=("admins",), auditors=("audit",)))


def test_who_sees_the_exact_command_is_the_tickets_approvers_its_requester_and_admins():
    _, t = held()
    config = _config()
    assert mayReveal(Identity("bob", {"leads"}), config, t)
    assert mayReveal(Identity("root", {"admins"}), config, t)
    assert mayReveal(t.requester, config, t)
    assert not mayReveal(Identity("audrey", {"audit"}), config, t)
    assert not mayReveal(Identity("eve", {"other-leads"}), config, t)


def test_slack_notification_carries_the_context_but_never_the_detected_value():
    _, t = held()
    body = json.dumps(slackBody(t.asDict(), "requested", "https://console/#ticket/x"))
    assert "updates every row of customers" in body
    assert "updates without WHERE need a lead" in body and "db (h:1)" in body
    assert CARD not in body
