"""The admin API through a real in-process gateway: what each role may call, proofs and metrics."""

import base64
import json

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, task

from sealgate.chain.verdicts import CONTINUE, Deny, Hold
from sealgate.config import ConnectionConfig
from sealgate.recording import merkle
from sealgate.recording.checkpoint import Verifier, openCheckpoint
from sealgate.testing import startGateway

CONFIG = """
[admin]
admins = ["sec"]
auditors = ["audit"]

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

# A protocol with no replay of its own: the transcript falls back to the
# sealed commands and a text dump of the frames these tests write.
DB = ConnectionConfig("db", "line", "tcp:0", "tcp:host=127.0.0.1:port=1")
PEOPLE = {"alice": ["eng"], "bob": ["leads", "eng"], "carol": ["leads"], "audrey": ["audit"],
          "root": ["sec"], "eve": ["sales"]}


class Admin:
    def __init__(self, running):
        self.running = running
        self.keys = {name: running.createKey(name, groups) for name, groups in PEOPLE.items()}
        self.base = f"http://127.0.0.1:{running.adminPort}"

    async def call(self, who, method, path, body=None, raw=False):
        headers = {"authorization": f"Bearer {self.keys[who]}"} if who else {}
        r = await treq.request(method, self.base + path, headers=headers, persistent=False,
                               data=json.dumps(body).encode() if body is not None else None)
        content = await r.content()
        if raw:
            return r.code, content
        return r.code, json.loads(content)

    async def session(self, who="alice"):
        gateway = self.running.gateway
        identity = await gateway.identity.authenticate(self.keys[who])
        s = gateway.openSession(DB, identity, "127.0.0.1:5000", {"database": "app"})
        s.received(b"select 1;")
        assert s.decide("sql", "select 1", {"statements": ("SELECT",)}).verdict is CONTINUE
        s.emit(b"1 row")
        await self.written(s.id)
        return s

    async def written(self, sid):
        """Wait until the store's writer thread has committed the session."""
        from twisted.internet import reactor, threads

        from sealgate.recording.reader import StoreReader

        def stored():
            with StoreReader(self.running.stateDir) as r:
                row = r.session(sid)
                return row is not None and row["size"] > 0

        for _ in range(200):
            if await threads.deferToThread(stored):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"session {sid} never reached the store")

    def hold(self, s, text="DROP TABLE accounts") -> Hold:
        verdict = s.decide("sql", text, {"statements": ("DROP",)}).verdict
        assert isinstance(verdict, Hold)
        return verdict


@pytest.fixture
def admin(tmp_path):
    running = pytest_twisted.blockon(defer.ensureDeferred(startGateway(CONFIG, tmp_path)))
    yield Admin(running)
    pytest_twisted.blockon(running.stop())


@pytest_twisted.ensureDeferred
async def test_public_endpoints_need_no_credential_and_the_api_does(admin):
    assert await admin.call(None, "GET", "/healthz") == (200, {"status": "ok"})
    assert (await admin.call(None, "GET", "/readyz"))[0] == 200
    code, doc = await admin.call(None, "GET", "/openapi.json")
    assert code == 200 and doc["openapi"].startswith("3.")
    from openapi_spec_validator import validate

    validate(doc)  # a valid OpenAPI 3.1 document, or this raises naming the fault
    assert {"/api/approvals/{id}/approve", "/api/log/inclusion", "/metrics"} <= set(doc["paths"])
    code, text = await admin.call(None, "GET", "/metrics", raw=True)
    assert code == 200 and b"sealgate_sessions_active" in text
    for path in ("/api/me", "/api/approvals", "/api/sessions", "/api/log/checkpoint", "/api/notifications"):
        code, body = await admin.call(None, "GET", path)
        assert code == 401 and "bearer token" in body["error"], path
    admin.keys["forged"] = admin.keys["root"][:-4] + "AAAA"
    assert (await admin.call("forged", "GET", "/api/me"))[0] == 401


@pytest_twisted.ensureDeferred
async def test_each_role_is_allowed_and_refused_what_the_docs_say(admin):
    s = await admin.session("alice")
    held = admin.hold(s)
    tid = held.ticket
    me = {who: (await admin.call(who, "GET", "/api/me"))[1]["roles"] for who in PEOPLE}
    assert me == {"alice": [], "bob": ["approver"], "carol": ["approver"], "audrey": ["auditor"],
                  "root": ["admin"], "eve": []}

    reads = ["/api/sessions", f"/api/sessions/{s.id}", f"/api/sessions/{s.id}/frames",
             f"/api/sessions/{s.id}/verify", "/api/log/checkpoint", "/api/notifications",
             f"/api/approvals/{tid}"]
    for who in ("eve", "alice"):
        for path in reads[:-1]:
            code, body = await admin.call(who, "GET", path)
            assert code == 403 and "needs the admin or approver or auditor role" in body["error"], (who, path)
    for who in ("audrey", "bob", "root"):
        for path in reads:
            assert (await admin.call(who, "GET", path))[0] == 200, (who, path)

    # Without a role, one sees one's own tickets only.
    assert [t["id"] for t in (await admin.call("alice", "GET", "/api/approvals"))[1]["tickets"]] == [tid]
    assert (await admin.call("alice", "GET", f"/api/approvals/{tid}"))[0] == 200
    assert (await admin.call("eve", "GET", "/api/approvals"))[1]["tickets"] == []
    assert (await admin.call("eve", "GET", f"/api/approvals/{tid}"))[0] == 403
    assert [t["id"] for t in (await admin.call("audrey", "GET", "/api/approvals"))[1]["tickets"]] == [tid]

    code, body = await admin.call("alice", "POST", f"/api/approvals/{tid}/approve", {"reason": "me"})
    assert code == 403 and "cannot decide their own ticket" in body["error"]
    for who in ("eve", "audrey"):
        for action in ("approve", "deny"):
            code, body = await admin.call(who, "POST", f"/api/approvals/{tid}/{action}", {"reason": "x"})
            assert code == 403 and "needs the admin or approver role" in body["error"], (who, action)
        code, body = await admin.call(who, "POST", f"/api/approvals/{tid}/cancel", {})
        assert code == 403 and "needs the admin role" in body["error"]
    # An admin is not an approver of a rule whose groups they are not in.
    code, body = await admin.call("root", "POST", f"/api/approvals/{tid}/approve", {})
    assert code == 403 and "not in the approver groups leads" in body["error"]
    code, body = await admin.call("bob", "POST", f"/api/approvals/{tid}/deny", {})
    assert code == 400 and "needs a reason" in body["error"]
    assert (await admin.call("audrey", "POST", "/api/notifications/test"))[0] == 403
    assert (await admin.call("bob", "POST", "/api/notifications/test"))[0] == 403
    assert (await admin.call("root", "POST", "/api/notifications/test"))[0] == 202
    assert not held.result.called

    code, body = await admin.call("bob", "POST", f"/api/approvals/{tid}/approve", {"reason": "backup taken"})
    assert code == 200 and body["state"] == "approved" and body["decided_by"] == "apikey:bob"
    assert held.result.result is CONTINUE
    code, body = await admin.call("carol", "POST", f"/api/approvals/{tid}/approve", {})
    assert code == 409 and "already approved" in body["error"]

    # The requester cancels their own; an admin cancels anyone's; nobody else.
    mine = admin.hold(s, "DROP TABLE a")
    assert (await admin.call("alice", "POST", f"/api/approvals/{mine.ticket}/cancel", {}))[1]["state"] == "cancelled"
    theirs = admin.hold(s, "DROP TABLE b")
    assert (await admin.call("bob", "POST", f"/api/approvals/{theirs.ticket}/cancel", {}))[0] == 403
    code, body = await admin.call("root", "POST", f"/api/approvals/{theirs.ticket}/cancel", {"reason": "stuck"})
    assert code == 200 and body["state"] == "cancelled" and body["decided_by"] == "apikey:root"
    assert theirs.result.result == Deny("drops-need-a-lead", "cancelled by apikey:root")
    await s.end("client closed")

    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}")
    states = [e["fields"]["state"] for e in body["events"] if e.get("event") == "approval"]
    assert states.count("requested") == 3 and "approved" in states and states.count("cancelled") == 2
    assert [e["fields"]["by"] for e in body["events"]
            if e.get("event") == "approval" and e["fields"]["state"] == "approved"] == ["apikey:bob"]


@pytest_twisted.ensureDeferred
async def test_sessions_filters_frames_transcript_and_verification(admin):
    s = await admin.session("alice")
    await s.end("client closed")
    other = await admin.session("bob")
    code, body = await admin.call("audrey", "GET", "/api/sessions")
    assert {x["id"]: x["state"] for x in body["sessions"]} == {s.id: "closed", other.id: "live"}
    code, body = await admin.call("audrey", "GET", "/api/sessions?identity=ALI&protocol=line")
    assert [x["id"] for x in body["sessions"]] == [s.id]
    assert (await admin.call("audrey", "GET", "/api/sessions?state=live"))[1]["sessions"][0]["id"] == other.id
    assert (await admin.call("audrey", "GET", "/api/sessions?since=x"))[0] == 400
    for query, want in [("state=closed", [s.id]), ("state=open", [other.id]), ("state=cut%20off", []),
                        ("connection=db&client=127.0.0.1:5000", [other.id, s.id]), ("connection=x", []),
                        ("protocol=ssh", []), ("limit=1", [other.id]), ("identity=b%27%20OR%201=1--", [])]:
        got = [x["id"] for x in (await admin.call("audrey", "GET", f"/api/sessions?{query}"))[1]["sessions"]]
        assert got == want, query
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/frames?limit=1")
    assert body["more"] is True and base64.b64decode(body["frames"][0]["data"]) == b"select 1;"
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/frames?after={body['next']}")
    assert [base64.b64decode(f["data"]) for f in body["frames"]] == [b"1 row"] and body["more"] is False
    code, text = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/transcript", raw=True)
    assert code == 200 and b"select 1" in text
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert code == 200 and body["ok"] is True and body["problems"] == []
    assert (await admin.call("audrey", "GET", "/api/sessions/nope"))[0] == 404
    await other.end("done")


@pytest_twisted.ensureDeferred
async def test_monitor_checks_checkpoint_and_proofs_itself(admin):
    s = await admin.session("alice")
    await s.end("closed")
    code, first = await admin.call("audrey", "GET", "/api/log/checkpoint")
    assert code == 200
    verifier = Verifier.fromVkey(first["key"])
    cp1 = openCheckpoint(first["note"], verifier, first["origin"])
    s = await admin.session("bob")
    await s.end("closed")
    code, second = await admin.call("audrey", "GET", "/api/log/checkpoint")
    cp2 = openCheckpoint(second["note"], verifier)
    assert cp2.size > cp1.size

    code, c = await admin.call("audrey", "GET", f"/api/log/consistency?first={cp1.size}&second={cp2.size}")
    merkle.verifyConsistency(cp1.size, cp2.size, cp1.root, cp2.root, [base64.b64decode(h) for h in c["proof"]])
    code, leaves = await admin.call("audrey", "GET", f"/api/log/leaves?start=0&end={cp2.size}")
    for leaf in leaves["leaves"]:
        code, p = await admin.call("audrey", "GET", f"/api/log/inclusion?index={leaf['index']}&size={cp2.size}")
        h = merkle.leafHash(base64.b64decode(leaf["leaf"]))
        merkle.verifyInclusion(leaf["index"], cp2.size, h, [base64.b64decode(x) for x in p["proof"]], cp2.root)
    with pytest.raises(merkle.ProofError):
        merkle.verifyInclusion(0, cp2.size, merkle.leafHash(b"forged"), [base64.b64decode(x) for x in p["proof"]],
                               cp2.root)
    assert (await admin.call("audrey", "GET", f"/api/log/inclusion?index={cp2.size + 5}"))[0] == 400
    assert (await admin.call("audrey", "GET", "/api/log/consistency"))[0] == 400


@pytest_twisted.ensureDeferred
async def test_metrics_count_what_the_sealed_log_says(admin):
    s = await admin.session("alice")
    held = admin.hold(s)
    await admin.call("bob", "POST", f"/api/approvals/{held.ticket}/deny", {"reason": "no"})
    await s.end("closed")
    from twisted.internet import reactor

    from sealgate.identity import AuthenticationFailed

    with pytest.raises(AuthenticationFailed):
        await admin.running.gateway.authenticate(DB, "not-a-key", "127.0.0.1:5001")
    text = ""
    for _ in range(100):
        code, raw = await admin.call(None, "GET", "/metrics", raw=True)
        text = raw.decode()
        if ('sealgate_tickets_total{state="denied"} 1.0' in text
                and 'sealgate_login_failures_total{protocol="line"} 1.0' in text):
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert 'sealgate_sessions_total{protocol="line"} 1.0' in text
    assert 'sealgate_verdicts_total{kind="sql",verdict="allow"} 1.0' in text
    assert 'sealgate_verdicts_total{kind="sql",verdict="hold"} 1.0' in text
    assert 'sealgate_verdicts_total{kind="sql",verdict="deny_after_hold"} 1.0' in text
    assert 'sealgate_ticket_decision_seconds_count{outcome="denied"} 1.0' in text
    assert 'sealgate_session_bytes_total{direction="from_client",protocol="line"} 9.0' in text
    assert "sealgate_store_unsealed_leaves" in text and "sealgate_store_checkpoint_age_seconds" in text
    assert 'sealgate_login_failures_total{protocol="line"} 1.0' in text
    assert "sealgate_log_leaves" in text and "sealgate_session_live_bytes" in text


@pytest_twisted.ensureDeferred
async def test_verification_status_catches_an_altered_recording(admin):
    from twisted.internet import reactor

    from sealgate.recording._engine import segmentPath

    s = await admin.session("alice")
    await s.end("closed")
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert body["ok"] is True
    segment = segmentPath(admin.running.stateDir, 1)
    for _ in range(200):  # the CLOSE is durable once end() fired; the frames were written before it
        if segment.exists() and segment.read_bytes().endswith(b"1 row"):
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x01  # "1 row" -> "1 rox": what the client saw, changed afterwards
    segment.write_bytes(bytes(data))
    code, body = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert code == 200 and body["ok"] is False
    assert any("frame" in p for p in body["problems"]), body["problems"]


@pytest_twisted.ensureDeferred
async def test_admin_redacts_a_frame_while_running_and_proofs_still_verify(admin):
    s = await admin.session("alice")
    await s.end("client closed")
    path = f"/api/sessions/{s.id}/frames/0/redact"
    assert (await admin.call("audrey", "POST", path, {"reason": "leaked secret"}))[0] == 403
    code, body = await admin.call("root", "POST", path, {})
    assert code == 400 and "needs a reason" in body["error"]
    code, body = await admin.call("root", "POST", f"/api/sessions/{s.id}/frames/99/redact", {"reason": "x"})
    assert code == 400 and "has no frame 99" in body["error"]
    code, body = await admin.call("root", "POST", path, {"reason": "leaked secret"})
    assert code == 200 and body["redacted_by"] == "apikey:root" and body["frame"] == 0
    code, frames = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/frames")
    first = frames["frames"][0]
    assert first.get("data") in (None, "") and base64.b64decode(frames["frames"][1]["data"]) == b"1 row"
    code, verified = await admin.call("audrey", "GET", f"/api/sessions/{s.id}/verify")
    assert code == 200 and verified["ok"] is True, verified
    code, detail = await admin.call("audrey", "GET", f"/api/sessions/{s.id}")
    redactions = [e["fields"] for e in detail["events"] if e.get("event") == "redaction"]
    assert redactions == [{"frame": 0, "reason": "leaked secret", "by": "apikey:root"}]
