"""
Sans-IO recognisers of the file-transfer protocols an exec channel may speak
(scp source mode here, rsync --server in L{sealgate.protocols.ssh._rsync}):
which output bytes are file data.

A recogniser is fed the backend's output (L{Recogniser.serverData}) and the
client's input (L{Recogniser.clientData}) in the order the gateway sees
them, and splits the output into pieces C{(bytes, exempt)}: C{exempt} pieces
are file data or protocol framing (binary: masking would corrupt them), the
others are protocol text (scp records and error lines, rsync messages) or,
once the output stops following the protocol, everything after that point.
The caller masks every piece that is not exempt.  Failing is one-way
(L{Recogniser.failed}): from then on the channel is an ordinary masked
stream (fail closed).  A partial record is held (bounded); the caller gives
up on it after a quiet spell (L{Recogniser.stall}).

No Twisted here: tested with plain pytest and Hypothesis.
"""

import re
import shlex
from collections.abc import Callable

Piece = tuple[bytes, bool]

#: The longest scp record or rsync message held while it is incomplete.
MAX_RECORD = 8192
MAX_MESSAGE = 65536

# -- scp (the legacy rcp protocol, OpenSSH scp.c) ------------------------------

_RECORD = {
    ord("C"): re.compile(rb"C([0-7]{4}) (\d{1,20}) ([^/\n]+)\n\Z"),
    ord("D"): re.compile(rb"D([0-7]{4}) (\d{1,20}) ([^/\n]+)\n\Z"),
    ord("T"): re.compile(rb"T\d{1,20} \d{1,6} \d{1,20} \d{1,6}\n\Z"),
    ord("E"): re.compile(rb"E\n\Z"),
}
#: Prefixes of a record, to give up on a non-record at its first wrong byte.
_PREFIX = {
    ord("C"): re.compile(rb"C(?:[0-7]{0,3}|[0-7]{4}(?: (?:\d{0,20}|\d{1,20} [^/\n]*)?)?)\Z"),
    ord("D"): re.compile(rb"D(?:[0-7]{0,3}|[0-7]{4}(?: (?:\d{0,20}|\d{1,20} [^/\n]*)?)?)\Z"),
    ord("T"): re.compile(rb"T(?:\d{0,20}|\d{1,20} (?:\d{0,6}|\d{1,6} (?:\d{0,20}"
                         rb"|\d{1,20} \d{0,6})))\Z"),
    ord("E"): re.compile(rb"E\Z"),
}
_ERROR = (1, 2)  # \x01 warning, \x02 fatal: a text line to '\n'

# Which flags make `scp` a source (sends files: -f) or a sink (-t).
_SCP_FLAGS = re.compile(r"^-[a-zA-Z0-9]*$")


def expectedProtocol(command: str) -> str | None:
    """
    Which transfer protocol an exec command line says the channel will
    speak: C{"scp"} (source mode, a download), C{"rsync"} (C{rsync
    --server}), or None.  This only chooses the recogniser; the wire decides
    (a command that merely starts like one is still masked once its output
    stops following the protocol).  An scp sink (C{-t}, an upload) sends
    only acknowledgements and error texts, masked like any output.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words:
        return None
    program = words[0].rsplit("/", 1)[-1]
    if program == "scp":
        for w in words[1:]:
            if w == "--" or not _SCP_FLAGS.match(w):
                break
            if "f" in w[1:]:
                return "scp"
        return None
    if program == "rsync" and "--server" in words[1:]:
        return "rsync"
    return None


class Recogniser:
    """What both recognisers share: pieces out, a one-way failure, a held partial unit."""

    protocol = ""
    #: Every state transition of the machine: state -> the states it may go to.
    TRANSITIONS: dict[str, frozenset[str]] = {}

    def __init__(self) -> None:
        self.failed = False
        self._held = b""
        self._state = ""

    def _go(self, state: str) -> None:
        """Move to C{state}: only along L{TRANSITIONS} (a bug otherwise: the output step refuses)."""
        if state not in self.TRANSITIONS[self._state]:
            raise AssertionError(f"{self.protocol}: no transition {self._state} -> {state}")
        self._state = state

    @property
    def held(self) -> int:
        """Bytes held back (an incomplete record or message header)."""
        return len(self._held)

    def clientData(self, data: bytes) -> None:
        """What the client sent (before it is relayed)."""

    def serverData(self, data: bytes) -> list[Piece]:
        """Split backend output into pieces, C{(bytes, exempt)}, in order."""
        if self.failed:
            return [(data, False)] if data else []
        out: list[Piece] = []
        buf = self._held + data
        self._held = b""
        pos = self._parse(buf, out)
        if self.failed:
            if pos < len(buf):
                out.append((buf[pos:], False))
        else:
            self._held = buf[pos:]
        return _joined(out)

    def stall(self) -> list[Piece]:
        """
        Output went quiet with a partial unit held: a real transfer writes
        its records whole, so this is not the protocol; what was held goes
        out as text to mask.
        """
        if not self._held:
            return []
        held, self._held = self._held, b""
        self.failed = True
        return [(held, False)]

    def _parse(self, buf: bytes, out: list[Piece]) -> int:
        raise NotImplementedError

    def _fail(self) -> None:
        self.failed = True


def _joined(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for data, exempt in pieces:
        if not data:
            continue
        if out and out[-1][1] == exempt:
            out[-1] = (out[-1][0] + data, exempt)
        else:
            out.append((data, exempt))
    return out


class SCPSource(Recogniser):
    """
    The server side of C{scp -f}: every record (C{T}, C{C}, C{D}, C{E})
    and every file's data follow a response of the client's (C{\\0}, or an
    error line), as scp's source waits for one; a C{C} record's C{size}
    bytes of data (exempt) end with a status byte.  Records and error lines
    are text (masked: a card number in a file name is masked, the name
    keeps its length).

    @param onFile: called C{(name, size)} for each C{C} record (the audit).
    """

    protocol = "scp"
    TRANSITIONS = {
        "record": frozenset({"data-wait", "error-line"}),  # T/D/E records stay in "record"
        "data-wait": frozenset({"data", "status"}),          # after the client's response
        "data": frozenset({"status"}),
        "status": frozenset({"record", "error-line"}),
        "error-line": frozenset({"record"}),
    }

    def __init__(self, onFile: Callable[[str, int], None] | None = None) -> None:
        super().__init__()
        self.onFile = onFile
        # Whether the client responded since the output's last record: a
        # sink answers each one after it sees it (responses sent ahead are
        # not an scp sink's, and count once).
        self._credit = False
        self._clientLine = False  # inside a client error line
        self._state = "record"
        self._left = 0            # data bytes still to come
        self._calls = 0           # serverData calls so far
        self._recordCall = -1     # the call that brought the last C record
        self.files: list[tuple[str, int]] = []

    def clientData(self, data: bytes) -> None:
        if self.failed:
            return
        for b in data:
            if self._clientLine:
                if b == 0x0A:
                    self._clientLine = False
                    self._credit = True
            elif b == 0:
                self._credit = True
            elif b in _ERROR:
                self._clientLine = True
            else:
                # Not what an scp sink sends: not an scp session.
                self._fail()
                return

    def serverData(self, data: bytes) -> list[Piece]:
        self._calls += 1
        return super().serverData(data)

    def _parse(self, buf: bytes, out: list[Piece]) -> int:
        pos, n = 0, len(buf)
        while pos < n and not self.failed:
            state = self._state
            if state == "data-wait":
                # The data follows the client's response to the record (a
                # real source waits for it): not in the record's own chunk.
                if self._calls == self._recordCall or not self._credit:
                    self._fail()
                    break
                self._credit = False
                state = "data" if self._left else "status"
                self._go(state)
            if state == "data":
                take = min(self._left, n - pos)
                out.append((buf[pos:pos + take], True))
                pos += take
                self._left -= take
                if not self._left:
                    self._go("status")
                continue
            first = buf[pos]
            if state == "status" and first == 0:
                out.append((buf[pos:pos + 1], True))
                pos += 1
                self._go("record")
                continue
            if first in _ERROR and state in ("record", "status"):
                state = "error-line"
                self._go(state)
            if state == "error-line":
                end = buf.find(b"\n", pos)
                if end < 0:
                    if n - pos > MAX_RECORD:
                        self._fail()
                    break
                out.append((buf[pos:end + 1], False))
                pos = end + 1
                self._go("record")
                continue
            if state == "status":
                self._fail()
                break
            pos = self._record(buf, pos, out)
            if pos < 0:
                return -pos - 1
        return pos

    def _record(self, buf: bytes, pos: int, out: list[Piece]) -> int:
        """One T/C/D/E record at C{pos}: the position after it, or C{-pos-1} to hold from C{pos}."""
        first = buf[pos]
        prefix = _PREFIX.get(first)
        if prefix is None or not self._credit:
            self._fail()
            return pos
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_RECORD or not prefix.match(buf, pos):
                self._fail()
                return pos
            return -pos - 1
        record = buf[pos:end + 1]
        m = _RECORD[first].match(record)
        if m is None or (first == ord("C") and m.group(3) in (b".", b"..")):
            self._fail()
            return pos
        self._credit = False
        out.append((record, False))
        if first == ord("C"):
            name, size = m.group(3).decode("utf-8", "replace"), int(m.group(2))
            self.files.append((name, size))
            if self.onFile is not None:
                self.onFile(name, size)
            self._left = size
            self._go("data-wait")
            self._recordCall = self._calls
        return end + 1
