"""sealgate: an identity-aware access gateway with Merkle-sealed recordings.

The names below are the published plugin contract (docs/plugins.md): a
protocol or interceptor plugin needs nothing else from sealgate, and the
built-ins use the same names.
"""

from sealgate.chain import Chain, SessionChain
from sealgate.chain.hooks import Command, Output, SessionEnd, SessionStart
from sealgate.chain.verdicts import CONTINUE, Continue, Deny, Hold, Rewrite, Verdict
from sealgate.config import ConfigError, Table, Where, resolveSecret
from sealgate.flow import (
    ALLOWED,
    BACKPRESSURE,
    CANNOT_REWRITE,
    HOLD,
    STORE,
    Decision,
    Leg,
    OutputMasker,
    OutputRefused,
    Preamble,
    unmasked,
)
from sealgate.identity import AuthenticationFailed, Identity
from sealgate.masking import Masker, MaskingFailed, StreamMasker
from sealgate.protocols._io import noDelay, writeNow
from sealgate.session import FROM_CLIENT, TO_CLIENT, Session, SessionRefused

__version__ = "0.1.0"

__all__ = [
    "ALLOWED", "BACKPRESSURE", "CANNOT_REWRITE", "CONTINUE", "FROM_CLIENT", "HOLD", "STORE",
    "TO_CLIENT", "AuthenticationFailed", "Chain", "Command", "ConfigError", "Continue",
    "Decision", "Deny", "Hold", "Identity", "Leg", "Masker", "MaskingFailed", "Output",
    "OutputMasker", "OutputRefused", "Preamble", "Rewrite", "Session", "SessionChain", "SessionEnd",
    "SessionRefused", "SessionStart", "StreamMasker", "Table", "Verdict", "Where",
    "noDelay", "resolveSecret", "unmasked", "writeNow",
]
