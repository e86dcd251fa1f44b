"""The chain: calls interceptors' hooks in order, isolates their errors, merges verdicts."""

from typing import Any

from twisted.logger import Logger

from sealgate.chain.hooks import _EMPTY, Command, Output, SessionEnd, SessionStart
from sealgate.chain.verdicts import CONTINUE, Deny, Hold, Rewrite, Verdict
from sealgate.flow import OutputRefused


class Chain:
    """
    The gateway's interceptors, in order.  L{forSession} picks the ones that
    apply to a session once, so per-message work is only what applies.
    """

    _log = Logger()

    def __init__(self, interceptors: list):
        self.interceptors = list(interceptors)

    def forSession(self, session) -> "SessionChain":
        applying = []
        for i in self.interceptors:
            try:
                if i.appliesTo(session):
                    # An interceptor may hand back a per-session view (rules
                    # pre-filtered to this connection and identity).
                    bind = getattr(i, "bind", None)
                    applying.append(i if bind is None else bind(session))
            except Exception:
                self._log.failure("Interceptor {name} failed in appliesTo; it denies",
                                  name=getattr(i, "name", i))
                applying.append(_Broken(getattr(i, "name", repr(i))))
        return SessionChain(session, applying)


class _Broken:
    """Stands in for an interceptor that failed: everything it would see is denied."""

    def __init__(self, name):
        self.name = name

    def sessionStart(self, hook):
        return Deny(self.name, "an interceptor failed; access is refused")

    def command(self, hook):
        return Deny(self.name, "an interceptor failed; the command is refused")


class SessionChain:
    """
    The chain as one session sees it.

    Protocols test C{wantsCommand} / C{wantsOutput} once and skip building
    hook records when they are false: no object, no Deferred per message.
    C{wantsMaskedOutput} is C{wantsOutput} for output the core has already
    masked with C{masker}: the interceptor that provides the masker has
    nothing left to do there, so it is not called.

    @ivar masker: the session's L{sealgate.masking.Masker} when masking
        applies, else None; protocols with typed values (SQL columns, JSON
        fields) call it directly on the hot path.
    """

    _log = Logger()

    def __init__(self, session, interceptors: list):
        self.session = session
        self._start = _bound(interceptors, "sessionStart")
        self._command = _bound(interceptors, "command")
        self._output = _bound(interceptors, "output")
        self._end = _bound(interceptors, "sessionEnd")
        self.wantsCommand = bool(self._command)
        self.wantsOutput = bool(self._output)
        self.masker = None
        maskers = set()
        for i in interceptors:
            m = getattr(i, "maskerFor", None)
            if m is not None:
                self.masker = m(session)
                maskers.add(getattr(i, "name", repr(i)))
        self._outputMasked = tuple((n, fn) for n, fn in self._output if n not in maskers)
        self.wantsMaskedOutput = bool(self._outputMasked)

    def sessionStart(self) -> Verdict:
        """The access check; only L{CONTINUE} or a L{Deny}."""
        if not self._start:
            return CONTINUE
        hook = SessionStart(self.session)
        for name, fn in self._start:
            v = self._call(name, fn, hook, "sessionStart")
            if isinstance(v, Deny):
                return v
        return CONTINUE

    def command(self, kind: str, text: str, details: Any = None) -> Verdict:
        """
        Run the command hooks.  A L{Rewrite} replaces C{text} for the
        interceptors after it; a L{Deny} or L{Hold} stops the chain.
        """
        if not self._command:
            return CONTINUE
        if details is None:
            details = _EMPTY
        hook = Command(self.session, kind, text, details)
        rewritten = None
        for name, fn in self._command:
            v = self._call(name, fn, hook, "command")
            if v is CONTINUE:
                continue
            if isinstance(v, Rewrite):
                rewritten = v if v.rule else Rewrite(v.value, name)
                hook = Command(self.session, kind, v.value, details)
            elif isinstance(v, (Deny, Hold)):
                return v
        return rewritten or CONTINUE

    def output(self, data: Any, **context: Any) -> Any:
        """
        Run the output hooks; returns the (possibly rewritten) data.  With
        C{masked=True} (the core masked it) the masking interceptor is skipped.
        """
        hooks = self._outputMasked if context.get("masked") else self._output
        if not hooks:
            return data
        for name, fn in hooks:
            v = self._call(name, fn, Output(self.session, data, context or _EMPTY), "output")
            if isinstance(v, Rewrite):
                data = v.value
            elif isinstance(v, Deny):
                # Masking fails closed: output nobody could vet is not sent.
                raise OutputRefused(v.reason)
        return data

    def sessionEnd(self, reason: str) -> None:
        hook = SessionEnd(self.session, reason)
        for name, fn in self._end:
            self._call(name, fn, hook, "sessionEnd")

    def _call(self, name, fn, hook, hookName) -> Verdict:
        try:
            v = fn(hook)
        except Exception:
            self._log.failure("Interceptor {name} failed in {hook}; failing closed",
                              name=name, hook=hookName)
            if hookName == "output":
                return Deny(name, "output could not be checked")
            if hookName == "sessionEnd":
                return CONTINUE
            return Deny(name, f"interceptor {name} failed; refused")
        return CONTINUE if v is None else v


def _bound(interceptors, hook):
    out = []
    for i in interceptors:
        fn = getattr(i, hook, None)
        if fn is not None:
            out.append((getattr(i, "name", repr(i)), fn))
    return tuple(out)
