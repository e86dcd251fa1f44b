"""Which RowDescription belongs to rows that come with none: statements described earlier, paired in order.

A client may Describe a statement once and Execute it later without
Describing the portal (asyncpg and JDBC statement caches do): the rows of
that Execute come with no RowDescription.  L{Descriptions} pairs the
client's Parse, Describe, Bind, Execute, Sync and Query messages with the
backend's replies, which come in the same order (after an error the backend
skips to the next Sync), and keeps each statement's described columns, so
the masker can mask such rows by their own columns and formats.  Sans-IO:
the relay feeds it client messages, the masker feeds it reply types.
"""

from collections import deque

from sealgate.protocols.postgres import _wire as w

#: Past this many unanswered requests (a client pipelining without Sync)
#: the pairing is given up: rows with no description are then masked
#: conservatively (see L{sealgate.protocols.postgres.masking.RowMasker}).
MAX_PENDING = 10000
#: Statements and portals kept per session.
MAX_NAMES = 1000

_Q, _P, _B, _D, _E, _S, _F = (ord(c) for c in "QPBDESF")
_PARSED, _PARAMS, _NODATA, _DONE, _SUSPENDED, _EMPTY, _ERROR, _READY = (
    ord(c) for c in "1tnCsIEZ")


def _cstr(raw: bytes, at: int) -> tuple[str, int]:
    end = raw.index(b"\x00", at)
    return raw[at:end].decode("utf-8", "surrogateescape"), end + 1


def replyTypes(run: bytes):
    """The type of each whole message in a run of backend messages."""
    i, n = 0, len(run)
    while i + 5 <= n:
        yield run[i]
        i += 1 + int.from_bytes(run[i + 1:i + 5], "big")


def replyStarts(run: bytes):
    """Where each whole message in a run of backend messages starts, then the run's length."""
    i, n = 0, len(run)
    while i + 5 <= n:
        yield i
        i += 1 + int.from_bytes(run[i + 1:i + 5], "big")
    yield n


class Descriptions:
    """One session's statements, portals and the requests waiting for replies."""

    def __init__(self):
        self.queue: deque = deque()
        self.statements: dict[str, w.RowDescription | None] = {}
        self.portals: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.describing: str | None = None
        self.lost = False

    # -- client -> backend --------------------------------------------------

    def fromClient(self, t: int, raw: bytes) -> None:
        """A client message the relay forwards (type C{t}, the whole message)."""
        if self.lost:
            return
        q = self.queue
        if t == _Q or t == _F:
            q.append(("Q",))
        elif t == _P:
            q.append(("P", _cstr(raw, 5)[0]))
        elif t == _B:
            bind = w.decodeFrame(w.Frame(t, raw), True)
            if len(self.portals) >= MAX_NAMES and bind.portal not in self.portals:
                self.portals.clear()
            self.portals[bind.portal] = (bind.statement, bind.resultFormats)
        elif t == _D:
            name = _cstr(raw, 6)[0]
            q.append(("DS", name) if raw[5:6] == b"S" else ("DP",))
        elif t == _E:
            stmt, formats = self.portals.get(_cstr(raw, 5)[0], (None, ()))
            q.append(("E", stmt, formats))
        elif t == _S:
            q.append(("S",))
        if len(q) > MAX_PENDING:
            self.lost = True
            q.clear()
            self.statements.clear()

    # -- backend -> client --------------------------------------------------

    def reply(self, t: int) -> None:
        """A backend message of type C{t} other than RowDescription and DataRow went by."""
        q = self.queue
        if t == _PARSED:
            if q and q[0][0] == "P":
                self.statements.pop(q.popleft()[1], None)
        elif t == _PARAMS:
            if q and q[0][0] == "DS":
                self.describing = q.popleft()[1]
        elif t == _NODATA:
            if self.describing is not None:
                self._keep(self.describing, None)
                self.describing = None
            elif q and q[0][0] == "DP":
                q.popleft()
        elif t in (_DONE, _SUSPENDED, _EMPTY):
            if q and q[0][0] == "E":
                q.popleft()
        elif t == _ERROR:
            self.describing = None
            if q and q[0][0] == "Q":
                return
            while q and q[0][0] != "S":
                q.popleft()
        elif t == _READY:
            while q:
                if q.popleft()[0] in ("S", "Q"):
                    break

    def described(self, desc: w.RowDescription) -> None:
        """A RowDescription went by: a statement's (after ParameterDescription) or a portal's."""
        if self.describing is not None:
            self._keep(self.describing, desc)
            self.describing = None
        elif self.queue and self.queue[0][0] == "DP":
            self.queue.popleft()

    def _keep(self, name: str, desc: w.RowDescription | None) -> None:
        if len(self.statements) >= MAX_NAMES and name not in self.statements:
            self.statements.clear()
        self.statements[name] = desc

    def forRows(self) -> w.RowDescription | None:
        """The columns of rows that came with no RowDescription, in the formats bound; None if unknown."""
        q = self.queue
        if self.lost or not q or q[0][0] != "E" or q[0][1] is None:
            return None
        desc = self.statements.get(q[0][1])
        if desc is None:
            return None
        formats = q[0][2]
        cols = desc.columns
        if len(formats) > 1 and len(formats) != len(cols):
            return None

        def fmt(i: int) -> int:
            return formats[i] if len(formats) > 1 else (formats[0] if formats else 0)

        return w.RowDescription(tuple(
            w.Column(c.name, c.tableOid, c.columnNumber, c.typeOid, c.typeSize, c.typeMod, fmt(i))
            for i, c in enumerate(cols)))
