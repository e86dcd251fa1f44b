"""A terminal channel's two directions: stderr as a transport, stream masking with a bounded hold-back, typed input audit."""

from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import connection

from sealgate import StreamMasker
from sealgate.protocols.ssh import _transfer, _wire
from sealgate.protocols.ssh.relay import STREAM_DATA, recordChannel

_STDERR = connection.EXTENDED_DATA_STDERR


class Stderr:
    """A channel's stderr as a transport, for C{session.send}."""

    __slots__ = ("channel",)

    def __init__(self, channel):
        self.channel = channel

    def write(self, data: bytes) -> None:
        self.channel.writeExtended(_STDERR, data)


class StreamOutput:
    """
    The output masker of one stream of a terminal channel: a
    L{StreamMasker} holds back what may be the start of a value (bounded
    by C{mask_holdback}); the echo of what the user just typed (C{echo})
    and a C{flush} go out whole.
    """

    def __init__(self, masker: StreamMasker):
        self.masker = masker

    @property
    def pending(self) -> int:
        """What is held back now (the relay's holdback timer runs while it is not 0)."""
        return self.masker.pending

    def __call__(self, data: bytes, context) -> bytes:
        m = self.masker
        if context.get("flush") or context.get("echo"):
            return (m.feed(data) if data else b"") + m.flush()
        return m.feed(data)


class TransferOutput(StreamOutput):
    """
    The stdout masker of an exec that should speak a file-transfer protocol
    (scp source, rsync --server): the recogniser
    (L{sealgate.protocols.ssh._transfer}) says which bytes are file data
    (sent as they are) and which are protocol text (masked whole); once the
    output stops following the protocol, the rest is an ordinary masked
    stream.  A partial record still held at the holdback bound ends the
    exemption (fail closed).

    @param onFail: called once when the exemption ends.
    """

    def __init__(self, wire: _transfer.Recogniser, masker: StreamMasker,
                 onFail: Callable[[_transfer.Recogniser], None] | None = None):
        super().__init__(masker)
        self.wire = wire
        self._onFail = onFail

    @property
    def pending(self) -> int:
        return self.wire.held + self.masker.pending

    def __call__(self, data: bytes, context) -> bytes:
        wire, m = self.wire, self.masker
        wasFailed = wire.failed
        pieces = wire.serverData(data) if data else []
        if context.get("flush") and wire.held:
            pieces += wire.stall()
        out = []
        for piece, exempt in pieces:
            if exempt:
                # Protocol text before it is whole (records end in a newline).
                out.append(m.flush(atEnd=True))
                out.append(piece)
            else:
                out.append(m.feed(piece))
        if not wire.failed:
            out.append(m.flush(atEnd=True))
        elif context.get("flush") or context.get("echo"):
            out.append(m.flush())
        if wire.failed and not wasFailed and self._onFail is not None:
            self._onFail(wire)
        return b"".join(out)


class TerminalInput:
    """Mixin for L{sealgate.protocols.ssh.session.ClientSession}: what is typed, recorded and audited."""

    # The channel this mixes into sets these (ClientSession.__init__).
    session: Any
    id: Any
    _outTail: bytes
    _secretInput: bool
    _lines: _wire.LineAssembler | None

    def _terminalInput(self, data: bytes) -> None:
        """Record (and, in a shell, audit) what is typed into a pty."""
        hidden = 0
        recorded = data
        if not self._secretInput and _wire.SECRET_PROMPT.search(self._outTail):
            self._secretInput = True
        if self._secretInput:
            # What is typed at a password prompt is not echoed; keep it out of
            # the recording and the audit too (length is kept for timing).
            out = bytearray()
            for b in data:
                if self._secretInput and b not in (0x0D, 0x0A, 0x03):
                    out.append(0x2A)
                    continue
                out.append(b)
                if self._secretInput:
                    self._secretInput = False
                    self._outTail = b""
                    hidden += 1
            recorded = bytes(out)
        self.session.received(recorded, recordChannel(self.id, STREAM_DATA))
        if self._lines is None:
            return
        for line in self._lines.receive_data(data):
            if hidden:
                hidden -= 1
                self.session.audit("shell_input", channel=self.id, line="<hidden input>")
            elif line.strip():
                self.session.audit("shell_input", channel=self.id,
                                   line=line.decode("utf-8", "replace"))
