"""The interceptor chain: verdict merging, error isolation, and the free pass-through path."""

import attrs
import pytest
from twisted.internet import task
from zope.interface.verify import verifyObject

from sealgate import Chain, OutputRefused
from sealgate.approvals import Approvals
from sealgate.chain import access, rules
from sealgate.chain.hooks import Command
from sealgate.chain.verdicts import CONTINUE, Deny, Hold, Rewrite
from sealgate.config import ConnectionConfig, Role, Rule
from sealgate.identity import Identity
from sealgate.interfaces import IInterceptor, IInterceptorPlugin
from sealgate.session import Session
from sealgate.testing import FakeRecording


def session(groups=("eng",), connection="db", sid="s1"):
    return Session(sid, ConnectionConfig(connection, "postgres", "tcp:0", "tcp:host=h:port=1"),
                   Identity("alice", groups), "127.0.0.1:1", recording=FakeRecording(sid))


@attrs.define
class Recorder:
    name: str
    verdict: object = None
    seen: list = attrs.field(factory=list)

    def appliesTo(self, s):
        return True

    def command(self, hook):
        self.seen.append(hook.text)
        return self.verdict


def test_no_command_interceptor_means_no_hook_object(monkeypatch):
    built = []
    monkeypatch.setattr("sealgate.chain._chain.Command", lambda *a: built.append(a))
    sc = Chain([access.AccessInterceptor(())]).forSession(session())
    assert sc.wantsCommand is False and sc.wantsOutput is False
    assert sc.command("sql", "select 1") is CONTINUE
    assert built == []


def test_deny_stops_the_chain_and_rewrite_feeds_the_next():
    a = Recorder("a", Rewrite("select 2"))
    b = Recorder("b", Deny("b", "no"))
    c = Recorder("c")
    v = Chain([a, b, c]).forSession(session()).command("sql", "select 1")
    assert v == Deny("b", "no")
    assert (a.seen, b.seen, c.seen) == (["select 1"], ["select 2"], [])


def test_a_failing_interceptor_denies_instead_of_passing():
    class Broken(Recorder):
        def command(self, hook):
            raise RuntimeError("boom")

    v = Chain([Broken("x")]).forSession(session()).command("sql", "select 1")
    assert isinstance(v, Deny) and "x" in v.reason


def test_failing_output_hook_refuses_the_output():
    class Broken(Recorder):
        def output(self, hook):
            raise ValueError("cannot decode")

    sc = Chain([Broken("m")]).forSession(session())
    with pytest.raises(OutputRefused):
        sc.output(b"4111 1111 1111 1111")


def test_access_by_role():
    roles = (Role("eng", ("eng",), ("db",)),)
    sc = Chain([access.AccessInterceptor(roles)])
    assert sc.forSession(session()).sessionStart() is CONTINUE
    denied = sc.forSession(session(groups=("sales",))).sessionStart()
    assert isinstance(denied, Deny) and "no role that grants connection db" in denied.reason
    assert isinstance(sc.forSession(session(connection="other")).sessionStart(), Deny)


def rule(name, action, **kw):
    base = dict(connections=("*",), groups=("*",), matchers={}, approvers=(), approvals_needed=1,
                expires=60.0, reason="")
    base.update(kw)
    return Rule(name=name, action=action, **base)


def test_first_matching_rule_decides():
    chain = Chain([rules.RulesInterceptor([
        rule("allow-temp", "allow", matchers={"relations": ["tmp_*"]}),
        rule("no-drop", "deny", matchers={"statements": ["DROP"]}, reason="never"),
    ], None)])
    sc = chain.forSession(session())
    assert sc.command("sql", "drop table tmp_x", {"statements": ("DROP",), "relations": ("tmp_x",)}) is CONTINUE
    assert sc.command("sql", "drop table users", {"statements": ("DROP",), "relations": ("users",)}) == Deny("no-drop", "never")
    assert sc.command("sql", "select 1", {"statements": ("SELECT",)}) is CONTINUE


def test_rules_for_other_groups_cost_nothing():
    chain = Chain([rules.RulesInterceptor([rule("r", "deny", groups=("contractors",))], None)])
    assert chain.forSession(session()).wantsCommand is False


@pytest.mark.parametrize("matchers,hook,expected", [
    ({"sql_regex": r"pg_sleep"}, Command(None, "sql", "SELECT PG_SLEEP(1)"), True),
    ({"sql_regex": r"pg_sleep"}, Command(None, "exec", "pg_sleep"), False),
    ({"commands": [r"^rm -rf"]}, Command(None, "exec", "rm -rf /"), True),
    ({"methods": ["delete"], "paths": ["^/admin"]},
     Command(None, "http", "DELETE /admin/x", {"method": "DELETE", "path": "/admin/x"}), True),
    ({"methods": ["DELETE"], "paths": ["^/admin"]},
     Command(None, "http", "DELETE /api", {"method": "DELETE", "path": "/api"}), False),
    ({"headers": {"X-Env": "^prod$"}},
     Command(None, "http", "GET /", {"headers": {"x-env": "prod"}}), True),
    ({"statements": ["update without where"]},
     Command(None, "sql", "update t set a=1", {"statements": ("UPDATE", "UPDATE WITHOUT WHERE")}), True),
    ({"statements": ["DROP"]}, Command(None, "http", "GET /"), False),
])
def test_matchers(matchers, hook, expected):
    assert rules.RuleMatcher(matchers).matches(hook) is expected


def test_approve_rule_holds_with_a_ticket():
    clock = task.Clock()
    approvals = Approvals(clock)
    s = session()
    sc = Chain([rules.RulesInterceptor([rule("jit", "approve", approvers=("leads",))], approvals)])
    s.chain = sc.forSession(s)
    v = s.chain.command("sql", "delete from t", {})
    assert isinstance(v, Hold) and v.ticket in v.message and "leads" in v.message
    assert [t.id for t in approvals.pending()] == [v.ticket]
    assert s.recording.events[0][1]["state"] == "requested"


def test_builtins_provide_their_interfaces():
    verifyObject(IInterceptorPlugin, access.plugin)
    verifyObject(IInterceptorPlugin, rules.plugin)
    verifyObject(IInterceptor, access.AccessInterceptor(()))
    verifyObject(IInterceptor, rules.RulesInterceptor([], None))
