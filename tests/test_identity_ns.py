"""Identities namespaced by their source: an OIDC subject is never an API key of the same name."""

import json

import pytest_twisted
import treq

from sealgate.config import ConnectionConfig
from sealgate.identity import Identity
from sealgate.testing import startGateway

CONFIG = """
[identity]
oidc_issuer = "{issuer}"

[admin]
approvers = ["leads"]

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[rules]]
name = "drops-need-a-lead"
action = "approve"
statements = ["DROP"]
approvers = ["leads"]
expires = "5m"
"""

DB = ConnectionConfig("db", "line", "tcp:0", "tcp:host=127.0.0.1:port=1")


async def _call(running, credential, method, path, body=None):
    r = await treq.request(method, f"http://127.0.0.1:{running.adminPort}{path}",
                           headers={"authorization": f"Bearer {credential}"}, persistent=False,
                           data=json.dumps(body).encode() if body is not None else None)
    return r.code, json.loads(await r.content())


def test_the_id_names_the_source_and_the_issuer():
    assert Identity("eng-ci", {"eng"}, "apikey").id == "apikey:eng-ci"
    assert Identity("alice", (), "sshkey").id == "sshkey:alice"
    oidc = Identity("eng-ci", (), "oidc", "https://login.example.com/realms/x")
    assert oidc.id == "oidc:https://login.example.com/realms/x#eng-ci"
    assert oidc.asDict()["id"] == oidc.id and oidc.asDict()["subject"] == "eng-ci"
    assert Identity("eng-ci", (), "apikey") != Identity("eng-ci", (), "oidc", "sealgate")


@pytest_twisted.ensureDeferred
async def test_a_token_whose_sub_is_an_api_key_name_neither_sees_nor_cancels_its_tickets(
        tmp_path, oidc_issuer):
    running = await startGateway(CONFIG.format(issuer=oidc_issuer.issuer), tmp_path)
    try:
        key = running.createKey("eng-ci", ["eng"])
        gateway = running.gateway
        s = gateway.openSession(DB, await gateway.identity.authenticate(key), "127.0.0.1:5000")
        held = s.decide("sql", "DROP TABLE accounts", {"statements": ("DROP",)}).verdict
        token = oidc_issuer.mint(sub="eng-ci", groups=["eng"])

        code, body = await _call(running, key, "GET", "/api/approvals")
        assert code == 200 and [t["id"] for t in body["tickets"]] == [held.ticket]
        assert body["tickets"][0]["requester"] == "apikey:eng-ci"
        code, body = await _call(running, token, "GET", "/api/approvals")
        assert code == 200 and body["tickets"] == []
        code, body = await _call(running, token, "GET", "/api/me")
        assert body["id"] == f"oidc:{oidc_issuer.issuer}#eng-ci"
        code, body = await _call(running, token, "POST", f"/api/approvals/{held.ticket}/cancel", {})
        assert code == 403 and not held.result.called
        code, body = await _call(running, key, "POST", f"/api/approvals/{held.ticket}/cancel", {})
        assert code == 200 and body["decided_by"] == "apikey:eng-ci"
        s.end("client closed")
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_string_groups_claim_is_one_group_not_split_on_spaces(tmp_path, oidc_issuer):
    running = await startGateway(CONFIG.format(issuer=oidc_issuer.issuer), tmp_path)
    try:
        token = oidc_issuer.mint(sub="pat", groups="Platform leads")
        code, body = await _call(running, token, "GET", "/api/me")
        assert code == 200 and body["groups"] == ["Platform leads"] and body["roles"] == []
        identity = await running.gateway.identity.authenticate(oidc_issuer.mint(groups="leads"))
        assert identity.groups == {"leads"}
    finally:
        await running.stop()
