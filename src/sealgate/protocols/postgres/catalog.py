"""What the user-defined functions a statement calls run, from their definitions in the server's catalog."""

from collections.abc import Callable, Iterable

import attrs
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._backend import BackendLeg
from sealgate.protocols.postgres.classify import Classification, functionBody, uncertain
from sealgate.protocols.postgres.effects import HIGH_RISK

#: Every function outside pg_catalog and information_schema, with the
#: definition of those that have one (aggregates and window functions do not).
QUERY = ("SELECT p.proname, CASE WHEN p.prokind IN ('f', 'p') THEN pg_catalog.pg_get_functiondef(p.oid) END "
         "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
         "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')")
#: A snapshot older than this is read again when a session starts.
MAX_AGE = 60.0


def mayRedefineFunctions(c: Classification) -> bool:
    """Whether, once it has run, a statement may have changed what a function runs."""
    return c.redefines


def _base(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@attrs.define
class FunctionCatalog:
    """
    One connection's user-defined functions by name, each with what its
    body runs (all overloads in all schemas together: the gateway does not
    resolve overloads, so a call is judged by every function it could be).
    Sans-IO: L{load} takes the rows; C{read} (a callable returning a
    Deferred of rows) is how L{ensure} gets them.

    Until a snapshot is read, and from the moment a statement that may
    define or drop functions is let through until the next read, calls of
    user functions stay HIGH RISK.
    """

    read: Callable[[], defer.Deferred] | None = None
    clock: Callable[[], float] | None = None
    _functions: dict[str, tuple[Classification, ...]] | None = None
    #: The names of the last snapshot, kept through an invalidation: a call
    #: of a built-in name a user function shares stays suspect meanwhile.
    _names: frozenset[str] = frozenset()
    _readAt: float = 0.0
    #: Bumped by L{invalidate}: a read started before is stale when it ends.
    _generation: int = 0
    _readingGeneration: int | None = None
    _log = Logger()

    def load(self, rows: Iterable[tuple[str, str | None]]) -> None:
        functions: dict[str, list[Classification]] = {}
        for name, definition in rows:
            body = functionBody(definition) if definition else uncertain()
            functions.setdefault(name, []).append(body)
        self._functions = {k: tuple(v) for k, v in functions.items()}
        self._names = frozenset(self._functions)

    def invalidate(self) -> None:
        self._functions = None
        self._generation += 1

    def ensure(self) -> None:
        """Read the catalog unless a fresh snapshot is at hand or a read of it runs."""
        if self.read is None or self._readingGeneration == self._generation:
            return
        now = self.clock() if self.clock else 0.0
        if self._functions is not None and now - self._readAt < MAX_AGE:
            return
        generation = self._readingGeneration = self._generation

        def done(rows):
            if self._readingGeneration == generation:
                self._readingGeneration = None
            if generation == self._generation:
                self._readAt = now
                self.load(rows)

        def failed(f):
            if self._readingGeneration == generation:
                self._readingGeneration = None
            self._log.warn("Could not read the function catalog: {why}", why=f.getErrorMessage())

        self.read().addCallbacks(done, failed)

    def refine(self, c: Classification) -> Classification:
        """
        C{c} with each user function it calls (and each user function that
        shares a built-in name it calls) judged by its body; a function that
        is not in the snapshot, or whose body cannot be judged, is HIGH RISK.
        """
        functions = self._functions
        if not (c.calls or c.builtinCalls):
            return c
        shadowed = [_base(n) for n in c.builtinCalls
                    if not n.startswith("pg_catalog.") and _base(n) in self._names]
        if functions is None:
            # Not read (again) yet: user calls are HIGH RISK already.
            return _highRisk(c) if shadowed else c
        if not c.calls and not shadowed:
            return c
        statements = [s for s in c.statements if s != HIGH_RISK or c.risky or not c.calls]
        effects = [e for e in c.effects if e != "high-risk" or c.risky or not c.calls]
        unknown = False
        for name in [_base(n) for n in c.calls] + shadowed:
            bodies = functions.get(name)
            if bodies is None:
                unknown = True
                continue
            for b in bodies:
                statements += [s for s in b.statements if s not in statements]
                effects += [e for e in b.effects if e not in effects]
                unknown |= HIGH_RISK in b.statements
        if "runs-server-code" not in effects:
            effects.append("runs-server-code")
        if unknown:
            statements += [HIGH_RISK] if HIGH_RISK not in statements else []
            effects += ["high-risk"] if "high-risk" not in effects else []
        return attrs.evolve(c, statements=tuple(statements), effects=tuple(effects))


def _highRisk(c: Classification) -> Classification:
    if HIGH_RISK in c.statements:
        return c
    extra = tuple(e for e in ("runs-server-code", "high-risk") if e not in c.effects)
    return attrs.evolve(c, statements=c.statements + (HIGH_RISK,), effects=c.effects + extra)


class _CatalogReader:
    """The client side of a short backend login that runs L{QUERY} and hangs up."""

    def __init__(self):
        self.done: defer.Deferred = defer.Deferred()
        self.rows: list[tuple[str, str | None]] = []
        self._reader = w.Reader(frontend=False)
        self._error: str | None = None
        self.leg: BackendLeg | None = None

    def _finish(self, result) -> None:
        if self.done.called:
            return
        if isinstance(result, Exception):
            self.done.errback(result)
        else:
            self.done.callback(result)

    def backendConnected(self, leg) -> None:
        self.leg = leg

    def backendAuthenticated(self) -> None:
        pass

    def backendStartupMessage(self, raw: bytes) -> None:
        pass

    def backendReady(self, raw: bytes) -> None:
        assert self.leg is not None and self.leg.transport is not None
        self.leg.transport.write(w.Query(QUERY).encode())

    def fromBackend(self, data: bytes) -> None:
        self._reader.receive_data(data)
        while (f := self._reader.next_event()) is not w.NEED_DATA:
            m = w.decodeFrame(f, False)
            if isinstance(m, w.DataRow):
                name, definition = m.values
                self.rows.append(((name or b"").decode(), definition.decode() if definition else None))
            elif isinstance(m, w.ErrorResponse):
                self._error = m.get("M") or "error"
            elif isinstance(m, w.ReadyForQuery):
                self._finish(RuntimeError(self._error) if self._error else self.rows)
                assert self.leg is not None and self.leg.transport is not None
                self.leg.transport.write(w.Terminate().encode())
                self.leg.transport.loseConnection()

    def backendFailed(self, err) -> None:
        self._finish(RuntimeError(str(err)))

    def backendLost(self, reason, wasReady) -> None:
        self._finish(RuntimeError(reason.getErrorMessage()))


def catalogFor(factory, connection) -> FunctionCatalog:
    """The catalog of C{connection}'s database, one per listener factory and connection."""
    catalogs = factory.__dict__.setdefault("_sqlCatalogs", {})
    catalog = catalogs.get(connection.name)
    if catalog is None:
        reactor = factory.gateway.reactor

        def read() -> defer.Deferred:
            reader = _CatalogReader()
            opts = connection.options
            params = (("user", opts.username), ("database", opts.database),
                      ("application_name", "sealgate:catalog"))
            leg = BackendLeg(reader, opts, params, factory.backendTLS(connection))
            ep = endpoints.clientFromString(reactor, connection.backend)
            endpoints.connectProtocol(ep, leg).addErrback(
                lambda f: reader._finish(RuntimeError(f.getErrorMessage())))
            return reader.done

        catalog = catalogs[connection.name] = FunctionCatalog(read, reactor.seconds)
    return catalog
