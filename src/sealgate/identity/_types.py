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
    @ivar expires: when the credential stops being valid (a token's C{exp},
        a key's expiry), or None; the gateway ends sessions past it.
    @ivar credential: what names the credential itself for a later
        revocation check (an API key's id, an SSH key's fingerprint).
    """

    subject: str
    groups: frozenset[str] = attrs.field(converter=_groups, factory=frozenset)
    method: str = "oidc"
    issuer: str = "sealgate"
    expires: float | None = attrs.field(default=None, eq=False)
    credential: str | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def id(self) -> str:
        """
        The identity namespaced by its source, as it is compared and shown:
        C{apikey:eng-ci}, C{sshkey:alice}, C{oidc:https://issuer#sub}.  Two
        sources can hand out the same bare subject; they are never the same
        identity.
        """
        if self.method == "oidc":
            return f"oidc:{self.issuer}#{self.subject}"
        return f"{self.method}:{self.subject}"

    def __str__(self) -> str:
        return self.id

    def asDict(self) -> dict:
        return {
            "id": self.id,
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
