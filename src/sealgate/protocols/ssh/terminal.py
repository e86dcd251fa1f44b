"""A terminal channel's two directions: stderr as a transport, stream masking with a bounded hold-back, typed input audit."""

from typing import Any

from twisted.conch.ssh import connection

from sealgate import StreamMasker
from sealgate.protocols.ssh import _wire
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

    def __call__(self, data: bytes, context) -> bytes:
        m = self.masker
        if context.get("flush") or context.get("echo"):
            return (m.feed(data) if data else b"") + m.flush()
        return m.feed(data)


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
