"""SFTP transfer accounting: bytes moved per opened file, audited when the file is closed."""

from sealgate.protocols.ssh import _wire


class SFTPTransfers:
    """
    Follows one SFTP channel's requests and reply heads (observation only:
    nothing is changed or delayed) and calls C{audit(op, bytes, complete)}
    once per file opened for get or put, when the client closes it or the
    channel ends.  Malformed pieces are ignored: accounting never breaks a
    transfer.
    """

    def __init__(self, audit):
        self._audit = audit
        self._opens: dict[int, _wire.SFTPOperation] = {}
        self._reads: dict[int, bytes] = {}
        self._files: dict[bytes, list] = {}

    def request(self, packet: bytes, op) -> None:
        """A whole client request packet on its way to the server."""
        kind = packet[4]
        try:
            if op is not None:
                if op.op in ("get", "put"):
                    self._opens[op.requestId] = op
            elif kind == _wire.FXP_WRITE:
                f = self._files.get(_wire.handleOf(packet))
                if f is not None:
                    f[1] += _wire.writeLength(packet)
            elif kind == _wire.FXP_READ:
                handle = _wire.handleOf(packet)
                if handle in self._files:
                    self._reads[_wire.replyId(packet[4:9])] = handle
            elif kind == _wire.FXP_CLOSE:
                f = self._files.pop(_wire.handleOf(packet), None)
                if f is not None:
                    self._audit(f[0], f[1], True)
        except _wire.WireError:
            pass

    def replies(self, heads) -> None:
        """Heads of whole server replies (from L{_wire.SFTPResponses})."""
        for kind, head, _length in heads:
            try:
                rid = _wire.replyId(head)
                if kind == _wire.FXP_HANDLE:
                    op = self._opens.pop(rid, None)
                    if op is not None:
                        self._files[_wire.replyHandle(head)] = [op, 0]
                elif kind == _wire.FXP_DATA:
                    handle = self._reads.pop(rid, None)
                    f = self._files.get(handle) if handle is not None else None
                    if f is not None:
                        f[1] += _wire.dataLength(head)
                elif kind == _wire.FXP_STATUS:
                    self._opens.pop(rid, None)
                    self._reads.pop(rid, None)
            except _wire.WireError:
                continue

    def finish(self) -> None:
        """The channel ended: files never closed are audited as incomplete."""
        files, self._files = self._files, {}
        for op, count in files.values():
            self._audit(op, count, False)
