"""A proxied session: identity, chain, recording and audit in one handle."""

import time
import uuid
from typing import Any

import attrs
from twisted.logger import Logger

from sealgate.chain.verdicts import CONTINUE, Deny, Hold, Verdict
from sealgate.masking import maskEvent

#: Directions of a recorded frame.
FROM_CLIENT = 0
TO_CLIENT = 1


class SessionRefused(Exception):
    """
    A session may not start.  C{str(exc)} is safe to show the client.

    @ivar code: a short machine-readable reason ("access", "store", "auth").
    """

    def __init__(self, message: str, code: str = "access"):
        super().__init__(message)
        self.code = code


def newSessionId() -> str:
    """A session id: time-ordered prefix so ids sort by start, then random."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:12]}"


@attrs.define(eq=False)
class Session:
    """
    One client session through the gateway.

    Protocols create it with L{sealgate.interfaces.IGateway.openSession}, feed
    it what the client saw (L{record}), ask it about commands (L{command}),
    and end it (L{end}).

    @ivar chain: the L{sealgate.chain.SessionChain} for this session.
    @ivar recording: its L{sealgate.interfaces.ISessionRecording}.
    """

    id: str
    connection: Any
    identity: Any
    client: str
    chain: Any = None
    recording: Any = None
    gateway: Any = None
    #: Set by the protocol: C{abort(message)} closes the client connection
    #: with a protocol-appropriate message (used at drain timeout).
    abort: Any = None
    meta: dict = attrs.field(factory=dict)
    started: float = attrs.field(factory=time.time)
    bytesFromClient: int = 0
    bytesToClient: int = 0
    ended: bool = False

    _log = Logger()

    @property
    def protocol(self) -> str:
        return self.connection.protocol

    def record(self, direction: int, data: bytes, channel: int = 0) -> None:
        """
        Record bytes exactly as the client sent or received them (after
        masking, before any login secret: never pass a password here).
        """
        if direction == FROM_CLIENT:
            self.bytesFromClient += len(data)
        else:
            self.bytesToClient += len(data)
        self.recording.frame(direction, data, channel)

    def audit(self, kind: str, /, **fields: Any) -> None:
        """Seal an audit event for this session in the log, client input masked (issue 15.5)."""
        masker = getattr(self.chain, "masker", None)
        self.recording.event(kind, fields if masker is None else maskEvent(masker, fields))

    def command(self, kind: str, text: str, details: dict | None = None,
                reported: bool = False) -> Verdict:
        """
        Ask the chain about a command and audit the verdict.

        Returns L{CONTINUE}, a L{sealgate.chain.verdicts.Rewrite}, a L{Deny}
        or a L{Hold}; a held command is audited again when decided.

        @param reported: the protocol promises to seal the command's outcome
            itself (with C{verdict="allow"}), so an allowed command costs one
            audit event, not two.  Denials and holds are sealed here anyway.
        """
        verdict = self.chain.command(kind, text, details)
        if reported and verdict is CONTINUE:
            return verdict
        self._auditVerdict(kind, text, details, verdict)
        if isinstance(verdict, Hold):
            verdict.result.addCallback(self._decided, kind, text, details)
        return verdict

    def _decided(self, verdict: Verdict, kind, text, details) -> Verdict:
        self._auditVerdict(kind, text, details, verdict, decided=True)
        return verdict

    def _auditVerdict(self, kind, text, details, verdict, decided=False) -> None:
        fields: dict[str, Any] = {"kind": kind, "command": text}
        if details:
            fields["details"] = {k: v for k, v in details.items() if _jsonable(v)}
        if verdict is CONTINUE:
            fields["verdict"] = "allow"
        elif isinstance(verdict, Deny):
            fields["verdict"] = "deny"
            fields["rule"] = verdict.rule
            fields["reason"] = verdict.reason
        elif isinstance(verdict, Hold):
            fields["verdict"] = "hold"
            fields["ticket"] = verdict.ticket
        else:
            fields["verdict"] = "rewrite"
        if decided:
            fields["decided"] = True
        self.audit("command", **fields)

    def end(self, reason: str = "closed"):
        """
        End the session once: chain session-end hooks, CLOSE leaf.

        @return: L{Deferred} firing when the CLOSE is durable (or None if
            already ended).
        """
        if self.ended:
            return None
        self.ended = True
        if self.chain is not None:
            self.chain.sessionEnd(reason)
        if self.gateway is not None:
            self.gateway.sessionEnded(self, reason)
        return self.recording.close(
            reason,
            {
                "bytes_from_client": self.bytesFromClient,
                "bytes_to_client": self.bytesToClient,
                "duration": round(time.time() - self.started, 6),
            },
        )


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, tuple, dict, type(None)))
