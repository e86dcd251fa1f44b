"""Identity values shared by every authenticator."""

from collections.abc import Iterable

import attrs


def _groups(groups: Iterable[str]) -> frozenset[str]:
    # A typed converter: mypy cannot infer the element type through bare frozenset.
    return frozenset(groups)


@attrs.frozen
class Identity:
    """
    A verified identity.

    @ivar subject: stable name (OIDC C{sub} or C{preferred_username}/e-mail,
        an API key's name, an SSH key's identity).
    @ivar groups: the groups roles and rules match on.
    @ivar method: how it was verified: "oidc", "apikey", "sshkey".
    @ivar issuer: OIDC issuer, or "sealgate" for local credentials.
    """

    subject: str
    groups: frozenset[str] = attrs.field(converter=_groups, factory=frozenset)
    method: str = "oidc"
    issuer: str = "sealgate"

    def asDict(self) -> dict:
        return {
            "subject": self.subject,
            "groups": sorted(self.groups),
            "method": self.method,
            "issuer": self.issuer,
        }


class AuthenticationFailed(Exception):
    """
    A credential was refused.  C{str(exc)} is safe to show the client and
    to log; it never contains the credential.

    @ivar claimed: the identity the credential claimed, when one could be
        read (for the audit event), else None.
    """

    def __init__(self, reason: str, claimed: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.claimed = claimed
