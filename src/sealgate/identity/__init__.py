"""Identity: OIDC tokens, API keys and SSH keys turned into L{Identity}."""

from sealgate.identity._types import AuthenticationFailed, Identity

__all__ = ["Identity", "AuthenticationFailed"]
