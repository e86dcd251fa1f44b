"""Ticket notifications to real HTTP receivers: signed webhooks, Slack bodies, retries, failures audited."""

import hashlib
import hmac
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer, task

from sealgate.admin.notify import sign, slackBody
from sealgate.chain.verdicts import CONTINUE
from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.test_admin_api import Admin

SECRET_ENV = "SEALGATE_TEST_HOOK_SECRET"


def config(url, deadPort):
    return f"""
[admin]
console_url = "https://sealgate.example.com:8700/"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[rules]]
name = "drops-need-a-lead"
action = "approve"
statements = ["DROP"]
approvers = ["leads"]

[[notify]]
name = "hook"
url = "{url}/hook"
secret_env = "{SECRET_ENV}"
events = ["requested", "approved"]
retries = 3
backoff = "20ms"

[[notify]]
name = "slack"
kind = "slack"
url = "{url}/slack"

[[notify]]
name = "down"
url = "http://127.0.0.1:{deadPort}/hook"
secret_env = "{SECRET_ENV}"
retries = 2
backoff = "10ms"
timeout = "5s"
"""


async def until(check, what):
    from twisted.internet import reactor

    for _ in range(500):
        if check():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}: {check.__doc__ or ''}")


def deadPort() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


@pytest_twisted.ensureDeferred
async def test_webhook_signed_retried_slack_shaped_and_failures_never_approve(tmp_path, receiver):
    os.environ[SECRET_ENV] = "s3cret-hmac-key"
    receiver.codes = {"/hook": [500]}  # the first delivery to the webhook fails once
    running = await startGateway(config(receiver.url, deadPort()), tmp_path)
    admin = Admin(running)
    try:
        s = await admin.session("alice")
        held = admin.hold(s)
        notifier = running.service._adminSite.admin.notifier
        await until(lambda: {d["target"]: d["state"] for d in notifier.recent()} ==
                    {"hook": "sent", "slack": "sent", "down": "failed"}, "the deliveries")
        assert not held.result.called  # a failed notification decides nothing

        hooks = [g for g in receiver.got if g[0] == "/hook"]
        assert len(hooks) == 2  # 500, then the retry
        _, headers, body = hooks[-1]
        expected = "sha256=" + hmac.new(b"s3cret-hmac-key", body, hashlib.sha256).hexdigest()
        assert headers["x-sealgate-signature"] == expected == sign("s3cret-hmac-key", body)
        assert headers["x-sealgate-event"] == "requested"
        doc = json.loads(body)
        assert doc["ticket"]["id"] == held.ticket and doc["ticket"]["command"] == "DROP TABLE accounts"
        assert doc["ticket"]["requester"] == "apikey:alice" and doc["event"] == "requested"
        assert doc["console"] == f"https://sealgate.example.com:8700/console/#ticket/{held.ticket}"
        assert hooks[0][2] != body or hooks[0][1]["x-sealgate-delivery"] == headers["x-sealgate-delivery"]

        (_, slackHeaders, slack), = [g for g in receiver.got if g[0] == "/slack"]
        assert "x-sealgate-signature" not in slackHeaders
        slack = json.loads(slack)
        assert held.ticket in slack["text"]
        assert "```DROP TABLE accounts```" in json.dumps(slack["blocks"])
        assert slack["blocks"][-1]["elements"][0]["url"].endswith(f"#ticket/{held.ticket}")

        code, ticket = await admin.call("bob", "GET", f"/api/approvals/{held.ticket}")
        states = {d["target"]: (d["state"], d["attempts"]) for d in ticket["notifications"]}
        assert states == {"hook": ("sent", 2), "slack": ("sent", 1), "down": ("failed", 3)}
        assert [d["error"] for d in ticket["notifications"] if d["target"] == "down"][0].startswith(
            "ConnectionRefusedError")

        await admin.call("bob", "POST", f"/api/approvals/{held.ticket}/approve", {"reason": "ok"})
        assert held.result.result is CONTINUE
        await until(lambda: [g for g in receiver.got if g[0] == "/hook"][-1][1]["x-sealgate-event"]
                    == "approved", "the approved notification")
        await s.end("closed")
    finally:
        await running.stop()

    with StoreReader(running.stateDir) as r:
        events = [e["fields"] for e in r.events(s.id) if e.get("event") == "approval"]
    notified = [(e["state"], e["by"]) for e in events if e["state"] in ("notified", "notify_failed")]
    assert ("notified", "hook") in notified and ("notified", "slack") in notified
    assert ("notify_failed", "down") in notified
    assert [e["state"] for e in events][0] == "requested" and "approved" in [e["state"] for e in events]
    assert "s3cret-hmac-key" not in repr(events)


def test_webhook_without_a_secret_is_a_config_error(tmp_path):
    from sealgate.config import ConfigError, loadConfig

    path = tmp_path / "c.toml"
    path.write_text('[[notify]]\nname = "x"\nurl = "https://h.example/x"\n')
    with pytest.raises(ConfigError, match=r"notify\[0\] \(x\)\.secret_env: no secret configured"):
        loadConfig(path, plugins={})
    path.write_text('[[notify]]\nname = "x"\nkind = "slack"\nurl = "ftp://h"\n')
    with pytest.raises(ConfigError, match="is not an http"):
        loadConfig(path, plugins={})
    path.write_text('[[notify]]\nname = "x"\nkind = "slack"\nurl = "https://h.example/"\nevents = ["boom"]\n')
    with pytest.raises(ConfigError, match="unknown event 'boom'"):
        loadConfig(path, plugins={})


def test_slack_body_escapes_the_command():
    t = {"id": "ab12", "requester": "alice", "connection": "db", "command": "DROP <b>&``` x", "rule": "r",
         "approvers": ["leads"], "approvals": [], "needed": 1}
    body = slackBody(t, "requested", "https://x/console/#ticket/ab12")
    code = body["blocks"][1]["text"]["text"]
    assert "<b>" not in code and "&lt;b&gt;&amp;" in code and code.count("```") == 2





class _RefusingAgent:
    """Stands in for the network only to make backoff timing deterministic on a fake clock."""

    def __init__(self, clock):
        self.clock = clock
        self.attempts = []

    def request(self, method, url, headers, body):
        self.attempts.append(self.clock.seconds())
        return defer.fail(ConnectionRefusedError("refused"))


def test_backoff_doubles_and_giving_up_decides_nothing():
    from types import SimpleNamespace

    from sealgate.admin.metrics import Metrics
    from sealgate.admin.notify import Notifier
    from sealgate.approvals import Approvals
    from sealgate.config import NotifyConfig
    from tests.test_approvals import ticketFor

    clock = task.Clock()
    target = NotifyConfig("hook", "webhook", "https://hooks.example/x", "k", ("requested",), retries=3,
                          backoff=1.0, timeout=5.0)
    approvals = Approvals(clock)
    admin = SimpleNamespace(reactor=clock, baseURL=lambda: "https://c/",
                            service=SimpleNamespace(config=SimpleNamespace(notify=(target,)), approvals=approvals))
    admin.metrics = Metrics(admin)
    agent = _RefusingAgent(clock)
    notifier = Notifier(admin, agent=agent)
    s, t, results = ticketFor(approvals)
    clock.advance(0.5)
    for _ in range(20):
        clock.advance(0.5)
    assert agent.attempts == [0, 1.0, 3.0, 7.0]  # first try, then 1s, 2s, 4s later
    (d,) = notifier.forTicket(t.id)
    assert d["state"] == "failed" and d["attempts"] == 4 and "refused" in d["error"]
    assert t.state == "pending" and results == []
    failed = [f for kind, f in s.recording.events if kind == "approval" and f["state"] == "notify_failed"]
    assert failed == [{"ticket": t.id, "state": "notify_failed", "rule": t.rule, "command": t.command,
                       "requester": "oidc:sealgate#alice", "by": "hook", "event": "requested", "attempts": 4,
                       "reason": d["error"]}]
    clock.advance(3600)
    assert len(agent.attempts) == 4
    notifier.stop()
