"""Admin roles (admin, approver, auditor) from identity groups, and what each may call."""

ADMIN = "admin"
APPROVER = "approver"
AUDITOR = "auditor"

#: Permission -> the roles that hold it.  "own" permissions (seeing and
#: cancelling one's own tickets) need no role at all.
PERMISSIONS = {
    "read": (ADMIN, APPROVER, AUDITOR),   # sessions, replay, verification, all tickets, log, notifications
    "decide": (ADMIN, APPROVER),          # approve / deny (the rule's approver groups still apply)
    "cancel-any": (ADMIN,),               # cancel someone else's ticket
    "notify-test": (ADMIN,),              # send a test notification to every target
    "redact": (ADMIN,),                   # delete one frame's payload (sealed, attributed)
}


class Forbidden(Exception):
    """The identity lacks the role; C{str(exc)} says which role would do."""

    status = 403


def rolesOf(identity, config) -> frozenset[str]:
    """The admin roles an identity holds under a config."""
    groups = set(identity.groups)
    admin = config.admin
    roles = set()
    if groups & (set(admin.admins) | set(config.identity.admins)):
        roles.add(ADMIN)
    approvers = set(admin.approvers)
    for rule in config.rules:
        approvers.update(rule.approvers)
    if groups & approvers or "*" in approvers:
        roles.add(APPROVER)
    if groups & set(admin.auditors) or "*" in admin.auditors:
        roles.add(AUDITOR)
    return frozenset(roles)


def may(identity, config, permission: str) -> bool:
    return bool(rolesOf(identity, config) & set(PERMISSIONS[permission]))


def require(identity, config, permission: str) -> None:
    if not may(identity, config, permission):
        need = " or ".join(PERMISSIONS[permission])
        raise Forbidden(f"{identity.id} needs the {need} role for this")


def mayReveal(identity, config, ticket) -> bool:
    """
    Whether C{identity} sees a held command exactly, detector hits in clear:
    its requester (who typed it), an admin, or a member of the ticket's own
    approver groups (who must know what they approve).  Everyone else
    (auditors, other approvers) sees it masked.
    """
    if ticket.requester.id == identity.id or ADMIN in rolesOf(identity, config):
        return True
    approvers = set(ticket.approvers)
    return "*" in approvers or bool(set(identity.groups) & approvers)
