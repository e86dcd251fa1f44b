"""Channel pairs: one Conch channel on each leg, relaying data, requests and EOF/close in order."""

import struct

from twisted.conch import error
from twisted.conch.ssh import channel as _channel
from twisted.conch.ssh import common, connection
from twisted.internet import defer
from twisted.logger import Logger

from sealgate import OutputRefused, unmasked

#: Receive window and packet size offered on both legs.  The window is the
#: bound on what the gateway buffers per channel and direction: when one leg
#: cannot send, the other leg's window is no longer replenished.
WINDOW = 2 * 1024 * 1024
MAX_PACKET = 32768

#: Recorded channel number = 4 * SSH channel id + stream.
STREAM_DATA, STREAM_STDERR, STREAM_CONTROL = 0, 1, 2


def recordChannel(channelId: int, stream: int) -> int:
    return channelId * 4 + stream


class FlowConnection:
    """
    Mixin for both legs' C{SSHConnection}: window adjustment stops for a
    channel whose peer cannot keep up, and C{getChannel} may return a
    Deferred (the other leg's channel must open first).
    """

    _log = Logger()
    lost = False

    def adjustWindow(self, channel, bytesToAdd):
        if getattr(channel, "inputPaused", False):
            return
        super().adjustWindow(channel, bytesToAdd)

    def serviceStopped(self):
        self.lost = True
        super().serviceStopped()

    def ssh_CHANNEL_OPEN(self, packet):
        channelType, rest = common.getNS(packet)
        sender, window, maxPacket = struct.unpack(">3L", rest[:12])
        extra = rest[12:]
        d = defer.maybeDeferred(self.getChannel, channelType, window, maxPacket, extra)
        d.addCallbacks(self._opened, self._openFailed, (sender, extra), None, (sender,))

    def _opened(self, chan, sender, extra):
        if self.lost:
            chan.peerGone()
            return
        local = self.localChannelID
        self.localChannelID += 1
        chan.id = local
        chan.conn = self
        self.channels[local] = chan
        self.channelsToRemoteChannel[chan] = sender
        self.localToRemoteChannel[local] = sender
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_CONFIRMATION,
            struct.pack(">4L", sender, local, chan.localWindowSize, chan.localMaxPacket)
            + chan.specificData)
        chan.channelOpen(extra)

    def _openFailed(self, f, sender):
        if f.check(error.ConchError):
            text, code = f.value.args
        else:
            self._log.failure("Channel open failed", f)
            text, code = "the gateway could not open the channel", connection.OPEN_CONNECT_FAILED
        if self.lost:
            return
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, code) + common.NS(text.encode()) + common.NS(b""))


class RelayChannel(_channel.SSHChannel):
    """
    One leg of a relayed channel.  C{peer} is the other leg's channel.
    Writes that find no window are buffered by Conch and pause the peer's
    input; actions that must follow the data (EOF, exit-status, close) wait
    until the buffers drain.
    """

    peer: "RelayChannel | None" = None
    inputPaused = False
    # SSHConnection sets both before the channel gets any callback; Conch
    # leaves conn Optional and id unannotated (inferred from "= None").
    conn: connection.SSHConnection
    id: int  # type: ignore[assignment]  # Conch's id is None until opened

    def __init__(self, *args, **kw):
        kw.setdefault("localWindow", WINDOW)
        kw.setdefault("localMaxPacket", MAX_PACKET)
        super().__init__(*args, **kw)
        self._pauses: set[str] = set()
        self._afterDrain: list = []
        self.opened: defer.Deferred = defer.Deferred()

    # -- flow control --------------------------------------------------------

    def stopWriting(self):
        if self.peer is not None:
            self.peer.pauseInput("backpressure")

    def startWriting(self):
        if self.peer is not None:
            self.peer.resumeInput("backpressure")

    def pauseInput(self, reason: str) -> None:
        self._pauses.add(reason)
        self.inputPaused = True

    def resumeInput(self, reason: str) -> None:
        self._pauses.discard(reason)
        if self._pauses:
            return
        self.inputPaused = False
        if self.localClosed or self.conn is None:
            return
        missing = self.localWindowSize - self.localWindowLeft
        if missing > 0:
            self.conn.adjustWindow(self, missing)

    def addWindowBytes(self, data):
        super().addWindowBytes(data)
        self._drain()

    def _drain(self):
        while self._afterDrain and not self.buf and not self.extBuf:
            self._afterDrain.pop(0)()

    def afterData(self, action) -> None:
        """Run C{action} once everything written so far has been sent."""
        if self.buf or self.extBuf or self._afterDrain:
            self._afterDrain.append(action)
        else:
            action()

    # -- ordering helpers ---------------------------------------------------

    def sendEOFAfterData(self) -> None:
        self.afterData(lambda: self.localClosed or self.conn.sendEOF(self))

    def sendRequestAfterData(self, kind: bytes, data: bytes) -> None:
        self.afterData(lambda: self.localClosed or self.conn.sendRequest(self, kind, data))

    def closeAfterData(self) -> None:
        self.afterData(self.loseConnection)

    # -- Conch callbacks ----------------------------------------------------

    def channelOpen(self, specificData):
        if not self.opened.called:
            self.opened.callback(self)

    def openFailed(self, reason):
        if not self.opened.called:
            self.opened.errback(reason)

    def closeReceived(self):
        if self.peer is not None:
            self.peer.closeAfterData()
        self.loseConnection()

    def peerGone(self):
        """The other leg's channel went away before this one opened."""
        if self.conn is not None and not self.localClosed and self.id is not None:
            self.loseConnection()

    def closed(self):
        self._afterDrain.clear()
        peer, self.peer = self.peer, None
        if peer is not None and peer.peer is self:
            peer.closeAfterData()


class ForwardChannel(RelayChannel):
    """
    A plain byte relay (direct-tcpip, agent forwarding).  Both legs record
    into the session under the client-side channel's number; what goes to
    the client passes the output step, unmasked on purpose (a forwarded
    TCP stream or the agent protocol is binary that masking would corrupt).
    """

    session = None
    clientSide = False
    recordId = 0

    def channelOpen(self, specificData):
        if self.clientSide and self.peer is not None:
            self.recordId = self.peer.recordId = recordChannel(self.id, STREAM_DATA)
        super().channelOpen(specificData)

    def dataReceived(self, data):
        peer, session = self.peer, self.session
        if session is None:
            # Not paired with its session yet: nothing may pass unrecorded.
            return
        if self.clientSide:
            session.received(data, self.recordId)
            if peer is not None:
                peer.write(data)  # to the backend leg
            return
        if peer is None:
            return
        session.setOutputMasker(unmasked, self.recordId)
        try:
            session.send(peer, data, channel=self.recordId, protocol="ssh", forwarded=True)
        except OutputRefused:
            peer.loseConnection()

    def eofReceived(self):
        if self.peer is not None:
            self.peer.sendEOFAfterData()
