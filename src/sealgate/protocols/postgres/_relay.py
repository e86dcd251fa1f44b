"""The relay between a logged-in client and its backend: hooks, holds, audit and masking."""

from collections import deque
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any

from twisted.logger import Logger

from sealgate import CONTINUE, Deny, MaskingFailed, OutputRefused, Rewrite, Session, writeNow
from sealgate.protocols.postgres import _wire as w
from sealgate.protocols.postgres._state import SYNC, Flow, FlowEvent, Held, Statement, flowStep
from sealgate.protocols.postgres.catalog import catalogFor, mayRedefineFunctions
from sealgate.protocols.postgres.classify import fastpath
from sealgate.protocols.postgres.masking import RowMasker
from sealgate.protocols.postgres.prepared import PreparedStatements

_Q, _P, _B, _E, _S, _C, _X, _F = (ord(c) for c in "QPBESCXF")
_CC, _ERR, _Z, _EMPTY, _SUSP, _COPYOUT, _COPYDATA, _COPYDONE = (ord(c) for c in "CEZIsHdc")
_PSTATUS, _DATAROW = ord("S"), ord("D")
_MAX_AUDIT_TEXT = 4096


def _cstrAt(b: bytes, p: int) -> tuple[str, int]:
    end = b.index(b"\0", p)
    return b[p:end].decode("utf-8", "surrogateescape"), end + 1


def _dollarQuote(text: str) -> str:
    n = 0
    while f"$m{n}$" in text:
        n += 1
    return f"$m{n}${text}$m{n}$"


def _query(sql: str) -> bytes:
    """A simple Query carrying C{sql}: what a denied or rewritten statement is sent as."""
    return w.Query(sql).encode()


DENY_PREFIX = "sealgate: "


def denyStatement(message: str) -> str:
    """
    SQL that makes the backend itself raise our 42501 error.  Letting the
    server raise it keeps replies in pipeline order and gives the
    transaction exactly the state an error gives it (aborted in a block).
    """
    m = _dollarQuote(DENY_PREFIX + message)
    tag = "sgdeny"
    while f"${tag}$" in m:
        tag += "x"
    return (f"DO ${tag}$BEGIN RAISE EXCEPTION USING ERRCODE = '42501', "
            f"MESSAGE = {m}; END${tag}$")


#: Reply types the output masker decodes (the rest pass as bytes).
#: ParameterStatus (S), FunctionCallResponse (V) and CopyBothResponse (W)
#: carry values too (set_config, fastpath results, replication).
_MASKED_REPLIES = [b"T", b"D", b"N", b"A", b"E", b"S", b"V", b"W"]
_COPY_REPLIES = [b"H", b"d", b"c", b"C"]
#: What the relay splits out of a COPY OUT: its start and end, not its rows.
_COPY_SPLIT = [b"H", b"c", b"C"]
#: Replies that pair a statement with its description (ParseComplete,
#: ParameterDescription, NoData): split out on masked sessions, so a run of
#: other replies (a COPY's CopyData) never needs walking message by message.
_PAIRING_REPLIES = [b"1", b"t", b"n"]
#: The type a run the relay split off stands for: none the pairing acts on.
_RUN = 0
#: The types the row masker itself looks at (errors are masked here).
_ROW_TYPES = frozenset(ord(c) for c in "TDNAHdcCSVW")


class ReplyMasker:
    """
    The session's output masker for PostgreSQL: masks rows (text and
    binary), COPY OUT data, error, notice and notification texts.  The
    relay passes the replies it already split (C{replies} in the context);
    anything else (a reply the gateway made) is split here, and what does
    not split into whole messages is refused, not sent.
    """

    def __init__(self, rows: RowMasker, maxMessage: int):
        self.rows = rows
        self.maxMessage = maxMessage
        stop = _MASKED_REPLIES + (_COPY_REPLIES if rows.detectors else [])
        self.table = w.makeTable(w.BACKEND_TYPES, stop)

    def _byMessage(self, data: bytes) -> bytes:
        return self(data, {})

    def __call__(self, data: bytes, context) -> bytes:
        # The relay's C{replies} are C{data} split: unchanged, C{data} is the answer.
        replies = context.pop("replies", None)
        # The relay's runs hold no reply the pairing acts on (its table splits
        # them all out); a run this masker splits itself may, and is walked.
        split = replies is not None
        if replies is None:
            reader = w.Reader(frontend=False, maxMessage=self.maxMessage)
            reader.receive_data(data)
            try:
                replies = reader.drain(self.table)
            except w.ProtocolError as e:
                raise MaskingFailed(f"not PostgreSQL replies: {e}") from e
            if reader.pending():
                raise MaskingFailed("a partial PostgreSQL reply")
        rows = self.rows
        out = []
        changed = False  # while nothing is: the output is C{data} itself, not joined again
        for item in replies:
            if item.__class__ is bytes:
                if split and rows.copyOut and rows.detectors:
                    # COPY OUT: the relay leaves its CopyData unsplit, looked at a run at a time.
                    masked = rows.maskCopyRun(item, self._byMessage)
                    changed = changed or masked is not item
                    out.append(masked)
                    continue
                released = rows.passing(_RUN if split else item)
                if released:
                    out.append(released)
                    changed = True
                out.append(item)
                continue
            t = item.type
            if t in _ROW_TYPES:
                masked = rows.frame(item)
            else:
                released = rows.passing(t)
                if released:
                    out.append(released)
                    changed = True
                if t == _ERR:
                    err = w.decodeFrame(item, False)
                    fields = rows.fields(err.fields)
                    masked = item.raw if fields is err.fields else w.ErrorResponse(fields).encode()
                else:
                    masked = item.raw  # CommandComplete, ReadyForQuery...: nothing to mask
            if masked is not item.raw:
                changed = True
            out.append(masked)
        if not changed:
            return data
        return b"".join(out) if len(out) != 1 else out[0]


class Relay:
    """
    Mixin for L{ClientLeg}: the proxying phase.  Client bytes are scanned
    for the few message types a hook needs (L{w.Reader.drain}); runs of
    other messages go to the backend as they came.  Replies come back the
    same way, and only sessions with masking decode rows.
    """

    # ClientLeg, the Protocol this mixes into, sets these.  Its transport is
    # a TCP or TLS transport that is also a push producer, which no single
    # Twisted interface names; factory and backend are ClientLeg's own.
    transport: Any
    factory: Any
    backend: Any
    session: Session
    closed: bool
    sqlSettings: Any
    connection: Any
    _log: Logger
    fatal: Callable[[str, str], None]

    #: Until L{startRelay}: no statement is in flight, none held, no Terminate.
    _pending: Any = ()
    _held: Held | None = None
    flow = Flow.FLOWING
    _terminating = False

    def startOutput(self) -> None:
        """Register the reply masker as soon as the session exists: the login's replies pass it too."""
        masker = self.session.chain.masker
        self._rows = RowMasker(masker, self.session.audit) if masker is not None else None
        if self._rows is not None:
            # Channel 0 is all a postgres session has.
            self.session.setOutputMasker(ReplyMasker(self._rows, self.factory.options.max_message), 0)

    def startRelay(self):
        s = self.session
        self._wantsCommand = s.chain.wantsCommand
        masker = s.chain.masker
        self._creader = w.Reader(frontend=True, maxMessage=self.factory.options.max_message)
        self._breader = w.Reader(frontend=False, maxMessage=self.factory.options.max_message)
        self._ctable = w.makeTable(w.FRONTEND_TYPES, [b"Q", b"P", b"B", b"E", b"S", b"C", b"X", b"F", b"D"])
        stop = [b"C", b"E", b"Z", b"I", b"s", b"S"]
        if self._rows is not None:
            stop += _MASKED_REPLIES + _PAIRING_REPLIES
            if masker.detectors:
                # COPY rows carry no column names: only detectors apply.  Their
                # CopyData stay in runs, looked at a run at a time (ReplyMasker).
                stop += _COPY_SPLIT
        self._btable = w.makeTable(w.BACKEND_TYPES, stop)
        self._pending: deque = deque()
        self._statements: dict[str, str] = {}
        self._portals: dict[str, str] = {}
        self._denied: set[str] = set()
        self._prepared = PreparedStatements()
        self._catalog = catalogFor(self.factory, self.connection) if self._wantsCommand else None
        self._rereadCatalog = False
        if self._catalog is not None:
            self._catalog.ensure()
        self._txStatus = "I"

    # -- client -> backend ------------------------------------------------------

    def relayFromClient(self, data: bytes) -> None:
        self.session.received(data)
        self._creader.receive_data(data)
        if self.flow is Flow.FLOWING:
            self._process(self._creader.drain(self._ctable))

    def _process(self, items) -> None:
        out = []
        for i, item in enumerate(items):
            if item.__class__ is bytes:
                out.append(item)
                continue
            hold = self._clientFrame(item, out)
            if hold is not None:
                self._toBackend(out)
                self._startHold(hold, items[i + 1:])
                return
        self._toBackend(out)

    def _toBackend(self, out) -> None:
        if out and self.backend is not None:
            writeNow(self.backend.transport, b"".join(out) if len(out) > 1 else out[0])

    def _clientFrame(self, f, out):
        t = f.type
        raw = f.raw
        if self._rows is not None:
            self._rows.fromClient(t, raw)  # which description later rows belong to
        if t == _Q:
            self.sqlSettings.sent()
            if not self._wantsCommand:
                text = raw[5:-1].decode("utf-8", "surrogateescape")
                self._pending.append(Statement(text, _monotonic()))
                out.append(raw)
                return None
            text, c = self.sqlSettings.judge(raw[5:-1])
            self._pending.append(Statement(text, _monotonic()))
            return self._judge(f, text, out, _query, c=c)
        if t == _P:
            msg = w.decodeFrame(f, True)
            self._statements[msg.name] = msg.query
            self._denied.discard(msg.name)
            if not self._wantsCommand:
                out.append(raw)
                return None

            def replace(sql, name=msg.name):
                self._denied.add(name)
                return w.Parse(name, sql).encode()

            _, c = self.sqlSettings.judge(msg.query.encode("utf-8", "surrogateescape"))
            return self._judge(f, msg.query, out, replace, c=c, parsedAs=msg.name,
                               rewrite=lambda sql: w.Parse(msg.name, sql, msg.paramTypes).encode())
        if t == _B:
            portal, p = _cstrAt(raw, 5)
            stmt, _ = _cstrAt(raw, p)
            self._portals[portal] = stmt
            if stmt in self._denied:
                # The statement was swapped for the deny; its parameters no
                # longer fit, so the Execute (not the Bind) reports the denial.
                b = w.decodeFrame(f, True)
                out.append(w.Bind(portal, stmt, (), (), b.resultFormats).encode())
                return None
        elif t == _E:
            portal, _ = _cstrAt(raw, 5)
            text = self._statements.get(self._portals.get(portal, ""), "")
            self._pending.append(Statement(text, _monotonic(), execute=True))
        elif t == _S:
            self.sqlSettings.sent()
            self._pending.append(SYNC)
        elif t == _F:
            self.sqlSettings.sent()
            oid = int.from_bytes(raw[5:9], "big")
            text = f"<function call {oid}>"
            self._pending.append(Statement(text, _monotonic()))
            if self._wantsCommand:
                return self._judge(f, text, out, _query, c=fastpath(oid))
        elif t == _C:
            if raw[5:6] == b"S":
                name, _ = _cstrAt(raw, 6)
                self._statements.pop(name, None)
                self._denied.discard(name)
                self._prepared.closed(name)
        elif t == _X:
            self._terminating = True
        out.append(raw)
        return None

    def _judge(self, f, text, out, replace, rewrite=None, *, c, parsedAs=None):
        c = self._catalog.refine(c)
        details = self._prepared.details(c)
        details["settings"] = self.sqlSettings.describe()
        reported = f.type != _P
        decision = self.session.decide("sql", text, details, reported=reported)
        verdict = decision.verdict
        if verdict is CONTINUE:
            if reported:
                # Sealed once, with its outcome, when the statement completes.
                self._pending[-1].details = details
            self._allowed(c, f.type != _P, parsedAs)
            out.append(f.raw)
            return None
        if isinstance(verdict, Deny):
            out.append(replace(denyStatement(f"denied by rule {verdict.rule}: {verdict.reason}")))
            return None
        rewrite = rewrite or _query
        if isinstance(verdict, Rewrite):
            out.append(rewrite(str(verdict.value)))
            return None
        if decision.held:
            return Held(decision, f, replace, rewrite, lambda: self._allowed(c, f.type != _P, parsedAs))
        out.append(replace(denyStatement("the statement could not be judged")))
        return None

    def _allowed(self, c, ownReady: bool, parsedAs=None) -> None:
        """A judged statement goes to the server: what it changes for the next ones."""
        self._prepared.allowed(c, parsedAs)
        if mayRedefineFunctions(c):
            # What a function runs is not known until the catalog is read again.
            self._catalog.invalidate()
            self._rereadCatalog = True
        if c.changesSettings:
            self.sqlSettings.mayChange(ownReady)

    def _startHold(self, held: Held, rest) -> None:
        # The core keeps the client leg paused until the decision.
        self.flow = flowStep(self.flow, FlowEvent.HOLD)
        held.rest = rest
        self._held = held
        hold = held.decision.verdict
        notice = w.NoticeResponse.make("NOTICE", "00000", hold.message,
                                       hint=f"ticket {hold.ticket}").encode()
        self.toClient(notice)
        held.decision.pending.addCallback(self._holdDecided)

    def _holdDecided(self, verdict) -> None:
        held = self._held
        if held is None:
            return
        self._held = None
        self.flow = flowStep(self.flow, FlowEvent.DECIDED)
        if self.closed:
            return
        if verdict is CONTINUE:
            held.onAllowed()
            self._toBackend([held.frame.raw])
        elif isinstance(verdict, Rewrite):
            self._toBackend([held.rewrite(str(verdict.value))])
        else:
            self._toBackend([held.replace(denyStatement(f"rule {verdict.rule}: {verdict.reason}"))])
        self._process(held.rest)
        if self.flow is Flow.FLOWING:
            try:
                self._process(self._creader.drain(self._ctable))
            except w.ProtocolError as e:  # what arrived during the hold, read now
                self.fatal("08P01", f"sealgate: protocol violation: {e}")

    def cancelHeld(self) -> bool:
        """A CancelRequest for a held statement withdraws its ticket."""
        if self._held is None:
            return False
        ticket = self._held.decision.verdict.ticket
        try:
            self.factory.gateway.approvals.cancel(ticket, self.session.identity, "cancelled")
        except Exception:
            self._log.failure("Could not cancel ticket {ticket}", ticket=ticket)
        return True

    # -- backend -> client ------------------------------------------------------

    def fromBackend(self, data: bytes) -> None:
        try:
            self._breader.receive_data(data)
            items = self._breader.drain(self._btable)
        except w.ProtocolError as e:
            self._log.warn("Backend protocol error on {session}: {error}",
                           session=self.session.id, error=str(e))
            self.fatal("08P01", "sealgate: the backend sent a malformed message")
            return
        if not items:
            return
        if self._rows is None:
            out = []
            for item in items:
                out.append(item if item.__class__ is bytes else self._backendFrame(item).raw)
            self.toClient(b"".join(out) if len(out) > 1 else out[0])
            return
        # Masking: the reply masker gets the replies already split.
        replies = [item if item.__class__ is bytes else self._backendFrame(item) for item in items]
        self.toClient(b"".join([x if isinstance(x, bytes) else x.raw for x in replies]), replies)

    def toClient(self, data: bytes, replies=None) -> None:
        """The output step for every reply; what cannot be vetted ends the session."""
        try:
            if replies is None:
                self.session.send(self.transport, data)
            else:
                self.session.send(self.transport, data, replies=replies)
        except OutputRefused:
            self.fatal("XX000", "sealgate: output could not be checked; the session ends")

    def _backendFrame(self, f) -> w.Frame:
        t = f.type
        if t == _DATAROW:
            return f  # most replies: only the masker reads rows
        if t == _CC:
            rows = f.raw[5:-1].rsplit(b" ", 1)[-1]
            n = int(rows) if rows.isdigit() else 0
            self._complete(n, None)
        elif t == _Z:
            self._txStatus = chr(f.raw[5])
            self.sqlSettings.ready()
            if self._rereadCatalog and self._txStatus == "I" and self._catalog is not None:
                # Idle: what the session defined is committed, visible to a read.
                self._rereadCatalog = False
                self._catalog.ensure()
            self._ready()
        elif t == _PSTATUS:
            self.sqlSettings.observe(f.raw)
        elif t == _ERR:
            err = w.decodeFrame(f, False)
            code = err.get("C")
            fields = err.fields
            if code == "42501" and (err.get("M") or "").startswith(DENY_PREFIX):
                fields = tuple((k, v) for k, v in fields if k not in "Wpq")
            self._complete(0, code or "XX000", error=True)
            if fields is not err.fields:
                return w.Frame(_ERR, w.ErrorResponse(fields).encode())
        elif t == _EMPTY or t == _SUSP:
            self._complete(0, None)
        return f

    def _complete(self, rows: int, sqlstate, error: bool = False) -> None:
        p = self._pending
        if not p:
            return
        head = p[0]
        if head is SYNC:
            return
        if head.execute:
            p.popleft()
            self._audit(head, rows, sqlstate)
            if error:
                # The server skips the rest of the batch up to Sync.
                while p and p[0] is not SYNC and p[0].execute:
                    p.popleft()
        else:
            head.rows += rows
            if sqlstate:
                head.sqlstate = sqlstate

    def _ready(self) -> None:
        p = self._pending
        while p:
            head = p.popleft()
            if head is SYNC:
                return
            if not head.execute:
                self._audit(head, head.rows, head.sqlstate)
                return

    def _audit(self, entry: Statement, rows, sqlstate, outcome="completed") -> None:
        text = entry.text
        if len(text) > _MAX_AUDIT_TEXT:
            text = text[:_MAX_AUDIT_TEXT] + "..."
        # Microseconds, as round(x, 6) gives them (the same shortest text), at a tenth of its cost.
        duration = round((_monotonic() - entry.started) * 1e6) / 1e6
        details = entry.details
        if details is None:
            self.session.audit("statement", text=text, duration=duration, rows=rows,
                               sqlstate=sqlstate or "00000", outcome=outcome)
            return
        # Allowed by the chain and not sealed yet: verdict and outcome in one event.
        get = details.get
        self.session.audit("statement", text=text, duration=duration, rows=rows,
                           sqlstate=sqlstate or "00000", outcome=outcome, verdict="allow",
                           statements=list(get("statements", ())), effects=list(get("effects", ())),
                           relations=list(get("relations", ())), settings=get("settings", ""))

    def auditUnfinished(self) -> None:
        """The session ends: seal statements that were sent but never completed."""
        for entry in self._pending:
            if entry is not SYNC:
                self._audit(entry, entry.rows, entry.sqlstate, outcome="interrupted")
        self._pending = deque()
