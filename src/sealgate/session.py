"""A proxied session: identity, chain, recording, and the core's decision and output steps."""

import time
import uuid
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sealgate.chain.verdicts import CONTINUE, Continue, Deny, Hold, Rewrite, Verdict
from sealgate.flow import (
    ALLOWED,
    CANNOT_REWRITE,
    FROM_CLIENT,
    HOLD,
    STORE,
    TO_CLIENT,
    Decision,
    Leg,
    OutputMasker,
    OutputRefused,
)
from sealgate.interfaces import ISession
from sealgate.masking import MaskingFailed, maskEvent
from sealgate.protocols._io import writeNow


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


@implementer(ISession)
@attrs.define(eq=False)
class Session:
    """
    One client session through the gateway, and the core's two steps every
    protocol calls: L{decide} (a command's verdict, audited once, holds
    paused and resumed here) and L{emit}/L{send} (bytes to the client:
    masked, output hooks, recorded, then written).  Client input is
    recorded with L{received}.  A protocol has no other way to a client.

    Protocols create it with L{sealgate.interfaces.IGateway.openSession},
    L{attach} its legs, and end it (L{end}).

    @ivar chain: the L{sealgate.chain.SessionChain} for this session.
    @ivar recording: its L{sealgate.interfaces.ISessionRecording}.
    @ivar abort: set by the protocol: C{abort(message)} closes the client
        connection in the protocol's own words (drain timeout, store
        failure); L{closeReason} says which.
    """

    id: str
    connection: Any
    identity: Any
    client: str
    chain: Any = None
    recording: Any = None
    gateway: Any = None
    abort: Any = None
    meta: dict = attrs.field(factory=dict)
    started: float = attrs.field(factory=time.time)
    bytesFromClient: int = 0
    bytesToClient: int = 0
    ended: bool = False
    #: Set by the core before it calls L{abort}: the reason the CLOSE leaf
    #: will carry ("store failed", "gateway shutdown").
    closeReason: str | None = None
    clientLeg: Leg | None = None
    backendLeg: Leg | None = None
    _maskers: dict = attrs.field(factory=dict)
    _holds: dict = attrs.field(factory=dict)
    _inputMaskers: dict = attrs.field(factory=dict)

    _log = Logger()

    @property
    def protocol(self) -> str:
        return self.connection.protocol

    @property
    def legs(self) -> tuple[Leg, ...]:
        return tuple(leg for leg in (self.clientLeg, self.backendLeg) if leg is not None)

    # -- legs --------------------------------------------------------------------

    def attach(self, client, backend=None) -> None:
        """
        Hand the core the session's legs (transports, or anything with
        C{pauseProducing}/C{resumeProducing}).  The core pauses the client
        leg while a command is held and both while the store cannot take
        more; register C{session.clientLeg}/C{backendLeg} as producers in
        place of the raw transports so Twisted's backpressure cannot undo
        those pauses.  Call again with a backend once it is connected.
        """
        if client is not None and (self.clientLeg is None or self.clientLeg.transport is not client):
            self.clientLeg = Leg(client)
        if backend is not None and (self.backendLeg is None
                                    or self.backendLeg.transport is not backend):
            self.backendLeg = Leg(backend)
        if self.gateway is not None and getattr(self.gateway, "storePaused", False):
            self.pauseLegs(STORE)

    def pauseLegs(self, reason: str) -> None:
        """Pause every attached leg for C{reason} (once per reason)."""
        for leg in self.legs:
            if not leg.pausedFor(reason):
                leg.pause(reason)

    def resumeLegs(self, reason: str) -> None:
        for leg in self.legs:
            leg.resume(reason)

    def fail(self, closeReason: str, message: str) -> None:
        """
        End the session in its protocol's words (L{abort}) and seal it with
        C{closeReason}, whatever reason the protocol's own close gives.
        """
        if self.ended:
            return
        self.closeReason = closeReason
        if self.abort is not None:
            try:
                self.abort(message)
            except Exception:
                self._log.failure("Aborting session {session} failed", session=self.id)
        if not self.ended:
            self.end(closeReason)

    # -- input ---------------------------------------------------------------------

    def received(self, data: bytes, channel: int = 0) -> None:
        """
        Record client input exactly as the client sent it (never a login
        secret: a protocol records its login with the secret left out).
        """
        self.bytesFromClient += len(data)
        self._recordInput(data, channel)

    def recordPreamble(self, frames) -> None:
        """
        Record what a protocol exchanged with its client before this session
        existed (its login, kept by a L{sealgate.flow.Preamble}), in order:
        C{(direction, data, channel)} each.  Those bytes were already sent,
        so they are recorded as they went, not vetted again.
        """
        for direction, data, channel in frames:
            if direction == FROM_CLIENT:
                self.bytesFromClient += len(data)
                self._recordInput(data, channel)
            else:
                self.bytesToClient += len(data)
                self.recording.frame(direction, data, channel)

    def _recordInput(self, data: bytes, channel: int) -> None:
        """
        The one place client bytes enter the session tree: as sent (the
        evidence), or with C{[masking] record_input = "masked"} masked by
        the detectors, a stream masker per channel so a value typed key by
        key or split across reads is still found (what may be the start of
        one is recorded with what follows it, or at the session's end).
        """
        masker = getattr(self.chain, "masker", None)
        if masker is not None and getattr(masker, "recordInput", "raw") == "masked":
            stream = self._inputMaskers.get(channel)
            if stream is None:
                stream = self._inputMaskers[channel] = masker.streamMasker()
            data = stream.feed(data)
            if not data:
                return
        self.recording.frame(FROM_CLIENT, data, channel)

    def _flushInput(self) -> None:
        maskers, self._inputMaskers = self._inputMaskers, {}
        for channel, stream in maskers.items():
            tail = stream.flush(atEnd=True)
            if tail:
                self.recording.frame(FROM_CLIENT, tail, channel)

    def audit(self, kind: str, /, **fields: Any) -> None:
        """Seal an audit event for this session in the log, client input masked (issue 15.5)."""
        self._seal(kind, fields)

    def _seal(self, kind: str, fields: dict[str, Any]) -> None:
        """L{audit} for a dict the core built itself (no keyword arguments packed again)."""
        masker = getattr(self.chain, "masker", None)
        self.recording.event(kind, fields if masker is None else maskEvent(masker, fields))

    # -- the decision step ------------------------------------------------------------

    def decide(self, kind: str, text: str, details: dict | None = None, *,
               rewritable: bool = True, reported: bool = False,
               hold: Any = None) -> Decision:
        """
        Ask the chain about a command and audit the verdict, once.

        @param rewritable: False for a protocol that cannot apply a
            L{Rewrite}: the rewrite becomes an audited L{Deny} naming the
            interceptor's rule and L{CANNOT_REWRITE}, never a silent pass.
        @param reported: the protocol seals an allowed command's outcome
            itself (with C{verdict="allow"}), so it costs one audit event,
            not two.  Denials and holds are sealed here anyway.
        @param hold: what to pause while a hold is pending (anything with
            C{pauseProducing}/C{resumeProducing}, e.g. one SSH channel);
            by default the session's client leg.
        @return: a L{Decision}; for a hold, C{.pending} fires with the final
            verdict, audited again with C{decided=True}, just after the
            paused leg resumed (no byte is read in between: the reactor
            is not re-entered).
        """
        verdict = self.chain.command(kind, text, details)
        if verdict is CONTINUE:
            if not reported:
                self._auditVerdict(kind, text, details, verdict)
            return ALLOWED
        if not rewritable:
            verdict = _cannotRewrite(verdict)
        self._auditVerdict(kind, text, details, verdict)
        if not isinstance(verdict, Hold):
            return Decision(verdict)
        return self._hold(verdict, kind, text, details, rewritable, hold)

    def _hold(self, verdict: Hold, kind, text, details, rewritable, target) -> Decision:
        pending: Deferred = Deferred()
        if target is None:
            leg = self.clientLeg
            pause = (lambda: leg.pause(HOLD)) if leg is not None else _nothing
            resume = (lambda: leg.resume(HOLD)) if leg is not None else _nothing
        else:
            pause, resume = target.pauseProducing, target.resumeProducing
        self._holds[pending] = (resume, kind, text, details)
        pause()

        def settle(result):
            final = result if isinstance(result, (Continue, Rewrite, Deny)) else None
            if final is None:
                if isinstance(result, Failure):
                    self._log.failure("Approval of {ticket} failed; it is a denial", result,
                                      ticket=verdict.ticket)
                final = Deny("approval", "the approval could not be decided")
            self._settle(pending, final if rewritable else _cannotRewrite(final))
            return result

        verdict.result.addBoth(settle)
        return Decision(verdict, pending)

    def _settle(self, pending: Deferred, final: Verdict) -> None:
        held = self._holds.pop(pending, None)
        if held is None:
            return  # already settled (the session ended first)
        resume, kind, text, details = held
        self._auditVerdict(kind, text, details, final, decided=True)
        # Resume first: if what the protocol runs next is held again, that
        # hold's pause is the one left standing (a target may not count).
        resume()
        pending.callback(final)

    def _auditVerdict(self, kind, text, details, verdict, decided=False) -> None:
        fields: dict[str, Any] = {"kind": kind, "command": text}
        if details:
            # Most details hold only plain values: one C-level type check, then a plain copy.
            fields["details"] = (dict(details) if _PLAIN.issuperset(map(type, details.values()))
                                 else {k: v for k, v in details.items() if _jsonable(v)})
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
            if verdict.rule:
                fields["rule"] = verdict.rule
        if decided:
            fields["decided"] = True
        self._seal("command", fields)

    # -- the output step --------------------------------------------------------------

    def setOutputMasker(self, masker: OutputMasker | None, channel: int | None = None) -> None:
        """
        Register the protocol's masker for typed output (SQL rows, a
        terminal stream) on one recorded channel, or for every channel
        without its own (C{channel=None}).  Used only when masking applies
        to the session (C{chain.masker} is set); without one registered the
        session's masker masks the bytes as text.  L{unmasked} exempts a
        channel (a file transfer); None removes the registration.
        """
        if masker is None:
            self._maskers.pop(channel, None)
        else:
            self._maskers[channel] = masker

    def emit(self, data: bytes, *, channel: int = 0, **context: Any) -> bytes:
        """
        The output step: mask, then the chain's output hooks, then record
        (L{TO_CLIENT}); returns exactly the bytes to send (maybe fewer than
        given: a stream masker may hold a tail back; maybe none).

        @param context: facts for the masker and output hooks (C{stream},
            C{column}, C{content_type}...); C{masked} is set by the core.
        @raise OutputRefused: nothing may be sent; the refusal is sealed.
        """
        return self._emit(data, channel, context)

    def send(self, transport, data: bytes, *, channel: int = 0, **context: Any) -> None:
        """
        L{emit}, then write what it returned to C{transport} at once (a
        plain TCP socket is written without waiting for the next reactor
        turn).  The one way a protocol writes to a client transport.

        @raise OutputRefused: as L{emit}; nothing was written.
        """
        out = self._emit(data, channel, context)
        if out:
            writeNow(transport, out)

    def _emit(self, data: bytes, channel: int, context: dict) -> bytes:
        chain = self.chain
        try:
            if self.ended:
                raise OutputRefused("the session has ended")
            masker = chain.masker
            if masker is not None:
                fn = self._maskers.get(channel) or self._maskers.get(None)
                data = fn(data, context) if fn is not None else masker.maskBytes(data)
                if chain.wantsMaskedOutput and data:
                    data = chain.output(data, channel=channel, masked=True, **context)
            elif chain.wantsOutput and data:
                data = chain.output(data, channel=channel, masked=False, **context)
        except OutputRefused as e:
            self._refused(channel, str(e))
            raise
        except Exception as e:
            # MaskingFailed or a masker's bug: fail closed, in words safe to show.
            if not isinstance(e, MaskingFailed):
                self._log.failure("Output masking failed on {session}", session=self.id)
            self._refused(channel, "output could not be checked")
            raise OutputRefused("output could not be checked") from e
        if data:
            self.bytesToClient += len(data)
            self.recording.frame(TO_CLIENT, data, channel)
        return data

    def _refused(self, channel: int, reason: str) -> None:
        if not self.ended:
            self.audit("output_refused", channel=channel, reason=reason)

    # -- the end ------------------------------------------------------------------------

    def end(self, reason: str = "closed"):
        """
        End the session once: pending holds settle as denials, chain
        session-end hooks, CLOSE leaf (with L{closeReason} if the core set
        one).

        @return: L{Deferred} firing when the CLOSE is durable (or None if
            already ended).
        """
        if self.ended:
            return None
        reason = self.closeReason or reason
        for pending in list(self._holds):
            self._settle(pending, Deny("approval", "session ended"))
        self.ended = True
        self._flushInput()
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


def _cannotRewrite(verdict: Verdict) -> Verdict:
    if isinstance(verdict, Rewrite):
        return Deny(verdict.rule or "rewrite", CANNOT_REWRITE)
    return verdict


def _nothing() -> None:
    return None


#: Types L{_jsonable} takes, exactly (a subclass goes the long way).
_PLAIN = frozenset({str, int, float, bool, list, tuple, dict, type(None)})


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, tuple, dict, type(None)))
