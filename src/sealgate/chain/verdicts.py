"""Verdicts an interceptor returns: continue, rewrite, deny, hold."""

from typing import Any

import attrs
from twisted.internet.defer import Deferred


@attrs.frozen
class Continue:
    """Let the message through unchanged."""


CONTINUE = Continue()


@attrs.frozen
class Rewrite:
    """
    Replace the message's payload (a statement, output data) with C{value}.

    @ivar rule: who rewrote it; the chain fills in the interceptor's name.
    """

    value: Any
    rule: str = attrs.field(default="", eq=False)


@attrs.frozen
class Deny:
    """
    Refuse the message.  The protocol turns this into its own error
    (ErrorResponse 42501, stderr + exit 1, 403 problem+json) and the
    session goes on.

    @ivar rule: the rule's name.
    @ivar reason: text safe to show the client.
    """

    rule: str
    reason: str


@attrs.frozen
class Hold:
    """
    Hold the message until a human decides.  Only that session waits.

    @ivar ticket: the approval ticket id, to tell the client at once.
    @ivar message: what to tell the client while it waits.
    @ivar result: a L{Deferred} firing with the final verdict
        (L{CONTINUE} or a L{Deny}); it never fails.
    """

    ticket: str
    message: str
    result: Deferred = attrs.field(eq=False, repr=False)


Verdict = Continue | Rewrite | Deny | Hold
