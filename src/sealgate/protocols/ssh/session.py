"""Session channels: pty/shell/exec/sftp relayed with guardrails, approvals, masking and recording."""

import fnmatch
import json
import time

from twisted.conch.ssh import connection
from twisted.internet import defer
from twisted.logger import Logger

from sealgate import (
    CONTINUE,
    FROM_CLIENT,
    TO_CLIENT,
    OutputRefused,
    Rewrite,
    unmasked,
)
from sealgate.protocols.ssh import _rsync, _transfer, _wire
from sealgate.protocols.ssh.relay import (
    STREAM_CONTROL,
    STREAM_DATA,
    STREAM_STDERR,
    RelayChannel,
    recordChannel,
)
from sealgate.protocols.ssh.sftpaudit import SFTPTransfers
from sealgate.protocols.ssh.sftprelay import SFTPRelay
from sealgate.protocols.ssh.terminal import Stderr, StreamOutput, TerminalInput, TransferOutput

_STDERR = connection.EXTENDED_DATA_STDERR
#: Requests relayed without asking the backend for a reply (clients send
#: them with want-reply false).
_NO_REPLY = {b"window-change", b"signal", b"eow@openssh.com"}


class BackendSession(RelayChannel):
    """The backend leg of a session channel: hands everything to its client leg."""

    name = b"session"

    def dataReceived(self, data):
        if self.peer is not None:
            self.peer.fromBackend(data, STREAM_DATA)

    def extReceived(self, dataType, data):
        if self.peer is not None and dataType == _STDERR:
            self.peer.fromBackend(data, STREAM_STDERR)

    def eofReceived(self):
        if self.peer is not None:
            self.peer.backendEOF()

    def requestReceived(self, requestType, data):
        if self.peer is None:
            return False
        return self.peer.backendRequest(requestType, data)


class ClientSession(SFTPRelay, TerminalInput, RelayChannel):
    """
    The client leg of a session channel.  Commands (exec, sftp operations)
    go through the chain first; while one is held, client input is queued
    (bounded by the channel window, which is not replenished meanwhile).
    """

    name = b"session"
    _log = Logger()

    def __init__(self, user, **kw):
        super().__init__(**kw)
        self.user = user
        self.session = user.session
        self.mode: str | None = None
        self.pty: _wire.PtyRequest | None = None
        self._queue: list | None = None
        self._sftp: _wire.SFTPRequests | None = None
        self._sftpHeld = False
        self._boundary: _wire.SFTPResponses | None = None
        self._inject: list[bytes] = []
        self._lines: _wire.LineAssembler | None = None
        self._outTail = b""
        self._secretInput = False
        self._maskers: dict[int, StreamOutput] | None = None
        self._stderr = Stderr(self)
        self._flushCall = None
        self.exitStatus: int | None = None
        # An exec that should speak a file-transfer protocol: its recogniser
        # (the wire decides what is exempt from masking, _transfer.py).
        self._wire: _transfer.Recogniser | None = None
        self._typed = b""
        self._wantsCommand = bool(self.session.chain.wantsCommand)
        self._transfers: SFTPTransfers | None = None

    # -- recording ------------------------------------------------------------

    def _control(self, direction: int, **fields) -> bool:
        """
        Record a control event.  One to the client passes the output step
        (its hooks see it) before the protocol message it stands for is
        sent; False means it was refused and must not be.
        """
        fields["t"] = round(time.time(), 6)
        data = json.dumps(fields).encode()
        channel = recordChannel(self.id, STREAM_CONTROL)
        if direction == FROM_CLIENT:
            self.session.received(data, channel)
            return True
        try:
            self.session.emit(data, channel=channel, control=fields["type"])
        except OutputRefused:
            self.loseConnection()
            return False
        return True

    def channelOpen(self, specificData):
        # Control records are the gateway's own JSON: masking would only
        # corrupt them.
        self.session.setOutputMasker(unmasked, recordChannel(self.id, STREAM_CONTROL))
        super().channelOpen(specificData)

    # The core pauses a held channel (not the whole connection) through these.
    def pauseProducing(self) -> None:
        self.pauseInput("hold")

    def resumeProducing(self) -> None:
        self.resumeInput("hold")

    # -- client -> backend -------------------------------------------------

    def _toBackend(self, action) -> None:
        """Run C{action} now, or after the held command is decided."""
        if self._queue is not None:
            self._queue.append(action)
        else:
            action()

    def dataReceived(self, data):
        if self.pty is not None and self._maskers is not None:
            self._typed = (self._typed + data)[-64:]
        if self.pty is not None or self._lines is not None:
            self._terminalInput(data)
        else:
            self.session.received(data, recordChannel(self.id, STREAM_DATA))
        if self._wire is not None:
            self._wire.clientData(data)
        if self._sftp is not None:
            self._sftp.receive_data(data)
            self._sftpPump()
            return
        peer = self.peer
        if peer is None:
            return
        if self._queue is not None:
            self._queue.append(lambda: peer.write(data))
        else:
            peer.write(data)

    def extReceived(self, dataType, data):
        self.session.received(data, recordChannel(self.id, STREAM_STDERR))
        if self.peer is not None:
            peer = self.peer
            self._toBackend(lambda: peer.writeExtended(dataType, data))

    def eofReceived(self):
        self._control(FROM_CLIENT, type="eof")
        if self.peer is not None:
            self._toBackend(self.peer.sendEOFAfterData)

    def requestReceived(self, requestType, data):
        try:
            return self._request(requestType, data)
        except _wire.WireError as e:
            self._log.info("Malformed {kind} request on session {session}: {error}",
                           kind=requestType, session=self.session.id, error=str(e))
            self.loseConnection()
            return False

    def _request(self, kind: bytes, data: bytes):
        opts = self.user.options
        if kind == b"pty-req":
            self.pty = _wire.parsePtyRequest(data)
            self._control(FROM_CLIENT, type="pty", term=self.pty.term, cols=self.pty.cols,
                          rows=self.pty.rows)
            return self._forward(kind, data)
        if kind == b"window-change":
            cols, rows = _wire.parseWindowChange(data)
            self._control(FROM_CLIENT, type="resize", cols=cols, rows=rows)
            return self._forward(kind, data)
        if kind == b"env":
            name, _ = _wire.parseEnv(data)
            text = name.decode("ascii", "replace")
            if not any(fnmatch.fnmatchcase(text, p) for p in opts.env_allow):
                return False
            self._control(FROM_CLIENT, type="env", name=text)
            return self._forward(kind, data)
        if kind in (b"signal", b"break"):
            self._control(FROM_CLIENT, type=kind.decode(),
                          signal=_wire.parseString(data).decode("ascii", "replace")
                          if kind == b"signal" else None)
            return self._forward(kind, data)
        if kind == b"eow@openssh.com":
            return self._forward(kind, data)
        if kind == b"auth-agent-req@openssh.com":
            if not opts.allow_agent_forwarding:
                return False
            self.user.agentForwarding = True
            self.session.audit("agent_forwarding", channel=self.id)
            return self._forward(kind, data)
        if self.mode is not None:
            return False  # one shell/exec/subsystem per channel (RFC 4254 6.5)
        if kind == b"shell":
            self.mode = "shell"
            self._lines = _wire.LineAssembler()
            self._setUpMasking()
            self._control(FROM_CLIENT, type="shell")
            self.session.audit("shell", channel=self.id, pty=self.pty is not None)
            return self._forward(kind, data)
        if kind == b"exec":
            return self._exec(_wire.parseString(data))
        if kind == b"subsystem":
            name = _wire.parseString(data)
            if name != b"sftp":
                return False
            self.mode = "sftp"
            self._control(FROM_CLIENT, type="subsystem", name="sftp")
            self._boundary = _wire.SFTPResponses()
            self._sftp = _wire.SFTPRequests()
            self._transfers = SFTPTransfers(self._auditTransfer)
            self._setUpMasking(unmaskedOutput=True)
            return self._forward(kind, data)
        return False

    def _forward(self, kind: bytes, data: bytes):
        """Relay a request after the data sent before it; fires True/False."""
        peer = self.peer
        result: defer.Deferred = defer.Deferred()
        if peer is None:
            return False

        def reply(ok):
            # Conch cannot answer a request on a channel that is gone.
            if self.conn is not None and self.id in self.conn.localToRemoteChannel:
                # The outcome Conch answers with (when the client wants a
                # reply) passes the output step first, like every reply.
                name = kind.decode("ascii", "replace")
                if kind not in _NO_REPLY and not self._control(
                        TO_CLIENT, type="request-result", request=name, ok=ok):
                    return
                result.callback(ok)

        def send():
            if peer.localClosed or peer.conn is None:
                reply(False)
            elif kind in _NO_REPLY:
                peer.conn.sendRequest(peer, kind, data)
                reply(True)
            else:
                d = peer.conn.sendRequest(peer, kind, data, wantReply=True)
                d.addCallbacks(lambda _: reply(True), lambda _: reply(False))

        self._toBackend(lambda: peer.afterData(send))
        return result

    # -- exec and the chain ---------------------------------------------------

    def _exec(self, raw: bytes):
        self.mode = "exec"
        text = raw.decode("utf-8", "replace")
        expected = _transfer.expectedProtocol(text) if self.pty is None else None
        if expected is not None and self.session.chain.masker is not None:
            self._wire = self._recogniser(expected, text)
        self._setUpMasking()
        self._control(FROM_CLIENT, type="exec", command=text)
        if not self.session.chain.wantsCommand:
            return self._forward(b"exec", _wire.NS(raw))
        decision = self.session.decide("exec", text, {"command": text}, hold=self)
        if decision.held:
            # The core keeps this channel's input paused; what the client
            # sends meanwhile waits in the queue.
            self._queue = []
            self._stderrNote(decision.verdict.message)
            decision.pending.addCallback(self._execDecided, raw)
            return True
        return self._execVerdict(decision.verdict, raw)

    def _execVerdict(self, verdict, raw: bytes):
        if verdict is CONTINUE:
            return self._forward(b"exec", _wire.NS(raw))
        if isinstance(verdict, Rewrite):
            return self._forward(b"exec", _wire.NS(str(verdict.value).encode()))
        self._refuse(f"denied by rule {verdict.rule}: {verdict.reason}")
        return True

    def _execDecided(self, verdict, raw: bytes):
        if self.localClosed:
            return
        if verdict is CONTINUE or isinstance(verdict, Rewrite):
            self._stderrNote("approved; running")
            if isinstance(verdict, Rewrite):
                raw = str(verdict.value).encode()
            d = defer.maybeDeferred(self._forward, b"exec", _wire.NS(raw))
            self._release()

            def ran(ok):
                if not ok:
                    self._refuse("the backend refused to run the command")
                return ok

            d.addCallback(ran)
        else:
            self._refuse(f"denied: {getattr(verdict, 'reason', 'not approved')}")

    def _release(self) -> None:
        queue, self._queue = self._queue or [], None
        for action in queue:
            action()

    def _eol(self) -> str:
        return "\r\n" if self.pty is not None else "\n"

    def _stderrNote(self, message: str) -> None:
        if not message.startswith("sealgate:"):
            message = f"sealgate: {message}"
        # A note goes out whole: nothing of it is held back with the stream.
        self._send(f"{message}{self._eol()}".encode(), STREAM_STDERR, note=True, flush=True)

    def _refuse(self, message: str) -> None:
        """The command does not run: say why on stderr, exit status 1, close."""
        self._queue = []
        self._stderrNote(message)
        self.exitStatus = 1
        if self._control(TO_CLIENT, type="exit", status=1):
            self.sendRequestAfterData(b"exit-status", _wire.exitStatus(1))
            self.sendEOFAfterData()
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer.loseConnection()
        self.closeAfterData()

    # -- backend -> client -------------------------------------------------------

    def _recogniser(self, protocol: str, command: str) -> _transfer.Recogniser:
        def onFile(name: str, size: int) -> None:
            self.session.audit("file_transfer", channel=self.id, protocol="scp",
                               direction="download", name=name, bytes=size)

        if protocol == "scp":
            return _transfer.SCPSource(onFile)
        return _rsync.rsyncServer(command)

    def _transferMasked(self, wire: _transfer.Recogniser) -> None:
        """The output stopped following the protocol: sealed, masked from here on."""
        self.session.audit("transfer_masked", channel=self.id, protocol=wire.protocol,
                           reason="the output stopped following the protocol")

    def _setUpMasking(self, unmaskedOutput: bool = False) -> None:
        """
        Register this channel's output maskers with the session: a stream
        masker per stream (for a file-transfer exec, stdout goes through
        its protocol's recogniser: file data exempt, the rest masked), or
        (the sftp subsystem, whose bytes masking would corrupt) L{unmasked},
        on purpose.
        """
        session = self.session
        masker = session.chain.masker
        if masker is None:
            return
        if unmaskedOutput:
            for stream in (STREAM_DATA, STREAM_STDERR):
                session.setOutputMasker(unmasked, recordChannel(self.id, stream))
            return
        data = StreamOutput(masker.streamMasker())
        if self._wire is not None:
            data = TransferOutput(self._wire, data.masker, self._transferMasked)
        self._maskers = {STREAM_DATA: data, STREAM_STDERR: StreamOutput(masker.streamMasker())}
        for stream, m in self._maskers.items():
            session.setOutputMasker(m, recordChannel(self.id, stream))

    def _maskText(self, text: str) -> str:
        """A text from the backend (an exit-signal message), masked as the session masks output."""
        masker = self.session.chain.masker
        return text if masker is None else masker.maskText(text)

    def fromBackend(self, data: bytes, stream: int) -> None:
        if self._boundary is not None:
            if stream == STREAM_DATA:
                self._boundary.receive_data(data)
                if self._boundary.heads:
                    assert self._transfers is not None
                    self._transfers.replies(self._boundary.heads)
                    self._boundary.heads.clear()
            self._send(data, stream)
            if self._inject and self._boundary.atBoundary:
                self._flushInjected()
            return
        if self.pty is not None:
            self._outTail = (self._outTail + data)[-96:]
        maskers = self._maskers
        if maskers is None:
            self._send(data, stream)
            return
        echo = bool(data) and self._typed.startswith(data)
        # The terminal echoing what the user just typed is nothing the client
        # does not already have, so it is not held back.
        self._typed = self._typed[len(data):] if echo else b""
        self._send(data, stream, echo=echo)
        if self._flushCall is None and self._maskers is not None and maskers[stream].pending:
            # Bound how long a possible start of a value is held back.
            self._flushCall = self.user.reactor.callLater(
                self.user.options.mask_holdback, self._flushMaskers)

    def _send(self, data: bytes, stream: int, **context) -> bool:
        """
        The output step for this channel: masked (by the stream's masker),
        shown to the output hooks, recorded, then written.  What cannot be
        vetted is withheld and the channel closes; False then.
        """
        transport = self if stream == STREAM_DATA else self._stderr
        try:
            self.session.send(transport, data, channel=recordChannel(self.id, stream),
                              protocol="ssh", stream=stream, **context)
        except OutputRefused as e:
            if not context.get("note"):
                self._stderrNote(f"output withheld: {e}")
            self.loseConnection()
            return False
        return True

    def _flushMaskers(self) -> None:
        """Send what the stream maskers held back (bounded by mask_holdback), through the output step."""
        self._flushCall = None
        if self._maskers is None:
            return
        for stream, m in list(self._maskers.items()):
            if m.pending and not self._send(b"", stream, flush=True):
                return

    def _flushNow(self) -> None:
        if self._flushCall is not None:
            self._flushCall.cancel()
        if self._maskers is not None:
            self._flushMaskers()

    def backendEOF(self) -> None:
        self._flushNow()
        if self._control(TO_CLIENT, type="eof"):
            self.sendEOFAfterData()

    def backendRequest(self, kind: bytes, data: bytes):
        if kind == b"exit-status":
            self._flushNow()
            self.exitStatus = _wire.parseExitStatus(data)
            sent = self._control(TO_CLIENT, type="exit", status=self.exitStatus)
        elif kind == b"exit-signal":
            self._flushNow()
            name, core, msg = _wire.parseExitSignal(data)
            # The message is the backend's text: masked like its output.
            msg = self._maskText(msg)
            data = _wire.exitSignal(name, core, msg)
            sent = self._control(TO_CLIENT, type="exit", signal=name, core=core, message=msg)
        elif kind == b"eow@openssh.com":
            sent = self._control(TO_CLIENT, type="eow")
        else:
            return False
        if sent:
            self.sendRequestAfterData(kind, data)
        return sent

    def closeAfterData(self) -> None:
        self._flushNow()
        super().closeAfterData()

    def closed(self):
        if self._flushCall is not None:
            self._flushCall.cancel()
            self._flushCall = None
        self._maskers = None
        if self.id is not None:
            for stream in (STREAM_DATA, STREAM_STDERR, STREAM_CONTROL):
                self.session.setOutputMasker(None, recordChannel(self.id, stream))
        if self._transfers is not None:
            self._transfers.finish()
        self.session.audit("channel_closed", channel=self.id, mode=self.mode,
                           exit_status=self.exitStatus)
        super().closed()
