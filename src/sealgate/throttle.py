"""Failed logins: exponential backoff per source and per claimed identity, sealed aggregated per interval."""

import time
from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from sealgate.prelogin import MAX_TRACKED, Limits, sourceKey

#: At most this many distinct claims and reasons are listed in one aggregated event.
MAX_LISTED = 10


def sourceOfClient(client: str) -> str:
    """
    C{"203.0.113.9:51234"} -> C{"203.0.113.9"}; an IPv6 client counts as its
    /64 (L{sourceKey}).  The port is after the last colon.
    """
    host, sep, port = client.rpartition(":")
    return sourceKey(host.strip("[]") if sep and port.isdigit() else client)


@attrs.define
class _Backoff:
    failures: int = 0
    last: float = 0.0
    nextAt: float = 0.0


@attrs.define
class _Aggregate:
    """Failures from one source since its last sealed event."""

    fields: dict
    count: int = 0
    claimed: dict = attrs.field(factory=dict)
    reasons: dict = attrs.field(factory=dict)
    connections: dict = attrs.field(factory=dict)
    first: float | None = None
    last: float | None = None


def _bump(counts: dict, value: Any) -> None:
    if value is None:
        return
    value = str(value)[:200]
    if value in counts or len(counts) < MAX_LISTED:
        counts[value] = counts.get(value, 0) + 1
    else:
        counts["(others)"] = counts.get("(others)", 0) + 1


class LoginThrottle:
    """
    One per gateway, for every listener.  Before a credential is checked,
    L{wait} holds the attempt until the backoff of its source and of each
    identity it claims has passed: after n failures, base * 2^(n-1) seconds,
    at most C{login_backoff_max}, and attempts of one key are spaced by it
    (parallel connections do not get around it).  Failures are forgotten
    after C{failed_login_interval} without one.

    L{failed} seals a C{login_failed} event for the first failure of a
    source in an interval and folds the rest into one event per interval
    with a C{count}, so a flood of bad logins cannot grow the log.
    """

    _log = Logger()

    def __init__(self, limits: Limits, reactor, store):
        self.limits = limits
        self._reactor = reactor
        self._store = store
        self._backoff: OrderedDict[tuple[str, str], _Backoff] = OrderedDict()
        self._windows: OrderedDict[str, _Aggregate | None] = OrderedDict()
        self._flushCall: Any = None
        #: A fleet's L{sealgate.fleet.interfaces.IBackoffCounters}: failures on any node count here.
        self.shared: Any = None
        #: Failed logins seen and sealed events written (for metrics and tests).
        self.failures = 0
        self.sealed = 0

    # -- backoff -------------------------------------------------------------

    def _keys(self, source: str, claims) -> list[tuple[str, str]]:
        keys = [("source", source)]
        keys += [("claimed", str(c)[:200]) for c in dict.fromkeys(claims) if c]
        return keys

    def _entry(self, key: tuple[str, str], now: float) -> _Backoff:
        entry = self._backoff.get(key)
        if entry is None or now - entry.last > self.limits.failed_login_interval:
            entry = self._backoff[key] = _Backoff()
        self._backoff.move_to_end(key)
        while len(self._backoff) > MAX_TRACKED:
            self._backoff.popitem(last=False)
        return entry

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.limits.login_backoff_base * 2 ** min(failures - 1, 60),
                   self.limits.login_backoff_max)

    def wait(self, source: str, claims=()) -> defer.Deferred:
        """A Deferred firing (with None) when this attempt may be checked."""
        if self.shared is None:
            return self._wait(source, claims)
        keys = self._keys(source, claims)
        d = self.shared.read(keys, self._reactor.seconds(), self.limits.failed_login_interval)

        def merge(counts):
            now = self._reactor.seconds()
            for key, (failures, last) in counts.items():
                entry = self._entry(key, now)
                if failures > entry.failures:
                    # Failures seen on other nodes: this node's backoff catches up.
                    entry.failures, entry.last = failures, max(entry.last, last)
                    entry.nextAt = max(entry.nextAt, last + self.delay(failures))

        def local(f):
            # The database being down must not lift the backoff this node knows.
            self._log.warn("Shared login backoff unavailable ({why}); this node's counts apply",
                           why=f.getErrorMessage())
        d.addCallbacks(merge, local)
        return d.addCallback(lambda _: self._wait(source, claims))

    def _wait(self, source: str, claims) -> defer.Deferred:
        now = self._reactor.seconds()
        entries = [self._entry(k, now) for k in self._keys(source, claims)]
        at = max([now, *(e.nextAt for e in entries if e.failures)])
        for e in entries:
            if e.failures:
                # The next attempt of this key comes one backoff after this one.
                e.nextAt = at + self.delay(e.failures)
        if at <= now:
            return defer.succeed(None)
        return task.deferLater(self._reactor, at - now, lambda: None)

    def succeeded(self, claims=()) -> None:
        """A login worked: its identities' backoff ends (its source's does not)."""
        keys = self._keys("", claims)[1:]
        for key in keys:
            self._backoff.pop(key, None)
        if self.shared is not None and keys:
            self.shared.forget(keys).addErrback(lambda f: None)

    # -- failures ------------------------------------------------------------

    def failed(self, source: str, claims, event: dict) -> bool:
        """
        Count a failed login for backoff and seal it (or fold it into the
        next event).  @return: whether it was sealed as it is (the first of
        its source in the interval), so callers log it only then.
        """
        now = self._reactor.seconds()
        self.failures += 1
        if self.shared is not None:
            self.shared.record(self._keys(source, claims), now,
                               self.limits.failed_login_interval).addErrback(
                lambda f: self._log.warn("Failed login not counted fleet-wide: {why}",
                                         why=f.getErrorMessage()))
        for key in self._keys(source, claims):
            entry = self._entry(key, now)
            entry.failures += 1
            entry.last = now
            entry.nextAt = max(entry.nextAt, now + self.delay(entry.failures))
        first = source not in self._windows
        if first:
            # The first failure of a source in an interval is sealed as it is.
            self._seal(dict(event, count=1, source=source))
            self._windows[source] = None
            self._scheduleFlush()
        else:
            agg = self._windows[source]
            if agg is None:
                agg = self._windows[source] = _Aggregate(
                    {k: v for k, v in event.items() if k in ("kind", "protocol")})
            agg.count += 1
            _bump(agg.claimed, event.get("claimed"))
            _bump(agg.claimed, event.get("protocol_user"))
            _bump(agg.reasons, event.get("reason"))
            _bump(agg.connections, event.get("connection"))
            wall = time.time()
            agg.first = agg.first or wall
            agg.last = wall
        self._windows.move_to_end(source)
        while len(self._windows) > MAX_TRACKED:
            old, agg = self._windows.popitem(last=False)
            self._sealAggregate(old, agg)
        return first

    def _scheduleFlush(self) -> None:
        if self._flushCall is None or not self._flushCall.active():
            self._flushCall = self._reactor.callLater(self.limits.failed_login_interval, self.flush)

    def flush(self, final: bool = False) -> None:
        """
        Seal what each source's interval gathered.  A source that failed
        again in it keeps an open window (its next failure is folded too);
        a quiet one is forgotten.
        """
        self._flushCall = None
        windows, self._windows = self._windows, OrderedDict()
        for source, agg in windows.items():
            if agg is not None and agg.count:
                self._sealAggregate(source, agg)
                if not final:
                    self._windows[source] = None
        if self._windows and not final:
            self._scheduleFlush()

    def stop(self) -> None:
        """At shutdown: seal every pending aggregate."""
        if self._flushCall is not None and self._flushCall.active():
            self._flushCall.cancel()
        self.flush(final=True)

    def _sealAggregate(self, source: str, agg: _Aggregate | None) -> None:
        if agg is None or not agg.count:
            return
        self._seal({**agg.fields, "source": source, "count": agg.count, "aggregated": True,
                    "claimed": agg.claimed, "reasons": agg.reasons,
                    "connections": agg.connections, "first": agg.first, "last": agg.last})
        self._log.info("{count} more failed login(s) from {source} in the last interval",
                       count=agg.count, source=source)

    def _seal(self, event: dict) -> None:
        self.sealed += 1
        self._store.auditEvent(event)
