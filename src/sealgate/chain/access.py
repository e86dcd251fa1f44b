"""Built-in access check: roles map identity groups to the connections they may open."""

import attrs
from zope.interface import implementer

from sealgate.chain.policy import groupsMatch, nameMatches
from sealgate.chain.verdicts import Deny
from sealgate.interfaces import IInterceptorPlugin, ISessionStartHook


@implementer(ISessionStartHook)
@attrs.frozen
class AccessInterceptor:
    """Denies a session unless one of the identity's roles grants its connection."""

    roles: tuple
    name: str = "access"

    def appliesTo(self, session) -> bool:
        return True

    def sessionStart(self, hook):
        session = hook.session
        for role in self.roles:
            if groupsMatch(role.groups, session.identity.groups) and nameMatches(
                role.connections, session.connection.name
            ):
                return None
        return Deny("access", f"{session.identity.subject} has no role that grants "
                              f"connection {session.connection.name}")


@implementer(IInterceptorPlugin)
class AccessPlugin:
    name = "access"
    order = 100

    def build(self, config, gateway):
        return AccessInterceptor(tuple(config.roles))


plugin = AccessPlugin()
