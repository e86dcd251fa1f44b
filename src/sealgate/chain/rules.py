"""Built-in guardrails and approvals: the first matching rule denies, holds or allows."""

import attrs
from zope.interface import implementer

from sealgate.chain.policy import RuleMatcher, groupsMatch, nameMatches
from sealgate.chain.verdicts import Deny, Hold
from sealgate.interfaces import ICommandHook, IInterceptor, IInterceptorPlugin


@attrs.frozen
class _Compiled:
    rule: object
    matcher: RuleMatcher


@implementer(IInterceptor)
class RulesInterceptor:
    """
    Checks C{[[rules]]} in file order.  Each session gets the rules for its
    connection and groups once (L{bind}); a session no rule touches does not
    run this interceptor at all.
    """

    name = "rules"

    def __init__(self, rules, approvals):
        self._rules = [_Compiled(r, RuleMatcher(dict(r.matchers))) for r in rules]
        self._approvals = approvals

    def _for(self, session):
        return tuple(c for c in self._rules
                     if nameMatches(c.rule.connections, session.connection.name)
                     and groupsMatch(c.rule.groups, session.identity.groups))

    def appliesTo(self, session) -> bool:
        return bool(self._for(session))

    def bind(self, session):
        return _SessionRules(self._for(session), self._approvals)


@implementer(ICommandHook)
@attrs.frozen
class _SessionRules:
    rules: tuple
    approvals: object
    name: str = "rules"

    def appliesTo(self, session) -> bool:
        return True

    def command(self, hook):
        for c in self.rules:
            if not c.matcher.matches(hook):
                continue
            rule = c.rule
            if rule.action == "allow":
                return None
            if rule.action == "deny":
                return Deny(rule.name, rule.reason or f"rule {rule.name} forbids this {hook.kind}")
            return self._hold(hook, rule)
        return None

    def _hold(self, hook, rule):
        if self.approvals is None:
            return Deny(rule.name, "approval is required but no approver service runs")
        text = hook.text
        masker = getattr(hook.session.chain, "masker", None)
        if masker is not None:
            # Approvers see the command as the client would: masked.
            text = masker.maskText(text)
        ticket = self.approvals.request(hook.session, rule, hook.kind, text)
        who = ", ".join(rule.approvers)
        message = (f"sealgate: rule {rule.name} holds this {hook.kind} for approval: "
                   f"ticket {ticket.id} waits for {who} "
                   f"(sealgate approvals approve {ticket.id}); "
                   f"it expires in {int(rule.expires)}s")
        return Hold(ticket.id, message, ticket.result)


@implementer(IInterceptorPlugin)
class RulesPlugin:
    name = "rules"
    order = 200

    def build(self, config, gateway):
        if not config.rules:
            return None
        return RulesInterceptor(config.rules, getattr(gateway, "approvals", None))


plugin = RulesPlugin()
