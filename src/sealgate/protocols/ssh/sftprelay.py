"""The sftp subsystem of a session channel: each operation decided by the core, denials answered in SFTP."""

from typing import Any

from twisted.logger import Logger

from sealgate import Deny
from sealgate.protocols.ssh import _wire
from sealgate.protocols.ssh.relay import STREAM_DATA


class SFTPRelay:
    """
    Mixin for L{sealgate.protocols.ssh.session.ClientSession}: the client's
    SFTP stream split into operations, each through C{session.decide}
    (C{rewritable=False}: the packet is forwarded as it came), and the
    gateway's own replies slipped in between whole backend replies.
    """

    # The channel this mixes into sets these (ClientSession.__init__).
    session: Any
    peer: Any
    id: Any
    localClosed: Any
    _log: Logger
    _sftp: _wire.SFTPRequests | None
    _sftpHeld: bool
    _boundary: _wire.SFTPResponses | None
    _inject: list[bytes]
    _transfers: Any
    _wantsCommand: bool
    loseConnection: Any
    _stderrNote: Any
    _send: Any

    # _sftp, _boundary and _transfers are set together when the sftp
    # subsystem starts, and only sftp mode reaches the code that reads them.

    def _sftpPump(self) -> None:
        assert self._sftp is not None
        chain = self.session
        while not self._sftpHeld and self.peer is not None:
            try:
                event = self._sftp.next_event()
            except _wire.WireError as e:
                self._log.info("Malformed SFTP on session {session}: {error}",
                               session=chain.id, error=str(e))
                self.loseConnection()
                return
            if event is _wire.NEED_DATA:
                return
            packet, op = event
            if op is None or not self._wantsCommand:
                self._sftpForward(packet, op)
                continue
            details = {"op": op.op, "path": op.path, "size": op.size,
                       "direction": op.direction}
            if op.target is not None:
                details["target"] = op.target
            # The packet is forwarded as it came: a rewrite cannot apply.
            decision = chain.decide("sftp", op.text, details, rewritable=False, hold=self)
            if decision.held:
                self._stderrNote(decision.verdict.message)
                self._sftpHeld = True
                decision.pending.addCallback(self._sftpDecided, packet, op)
                return
            self._sftpVerdict(decision.verdict, packet, op)

    def _sftpVerdict(self, verdict, packet: bytes, op) -> None:
        if isinstance(verdict, Deny):
            reason = getattr(verdict, "reason", "not approved")
            self._stderrNote(f"sftp {op.text}: denied: {reason}")
            self._injectReply(_wire.statusReply(op.requestId, _wire.FX_PERMISSION_DENIED,
                                                f"denied by sealgate: {reason}"))
        else:
            self._sftpForward(packet, op)

    def _sftpForward(self, packet: bytes, op) -> None:
        if self.peer is not None:
            assert self._transfers is not None
            self._transfers.request(packet, op)
            self.peer.write(packet)

    def _auditTransfer(self, op, count: int, complete: bool) -> None:
        self.session.audit("sftp_transfer", channel=self.id, op=op.op, path=op.path,
                           direction=op.direction, bytes=count, complete=complete)

    def _sftpDecided(self, verdict, packet, op) -> None:
        if self.localClosed:
            return
        self._sftpHeld = False
        self._sftpVerdict(verdict, packet, op)
        self._sftpPump()

    def _injectReply(self, packet: bytes) -> None:
        """A gateway-made SFTP reply, sent between whole backend replies."""
        self._inject.append(packet)
        assert self._boundary is not None
        if self._boundary.atBoundary:
            self._flushInjected()

    def _flushInjected(self) -> None:
        inject, self._inject = self._inject, []
        for packet in inject:
            self._send(packet, STREAM_DATA, injected=True)
