"""The ssh session channel without sockets: a fake Conch connection on each leg, the gateway a fake (deny, hold, rewrite, sftp, masking, hooks, pressure)."""

import struct

import attrs
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from sealgate import CANNOT_REWRITE, Deny, Identity, Rewrite
from sealgate.chain.masking import MaskingInterceptor
from sealgate.chain.rules import RulesInterceptor
from sealgate.config import MaskingConfig
from sealgate.masking import Masker
from sealgate.protocols.ssh import _wire
from sealgate.protocols.ssh.relay import STREAM_CONTROL, STREAM_DATA, STREAM_STDERR, recordChannel
from sealgate.protocols.ssh.session import ClientSession
from sealgate.testing import (
    CommandInterceptor,
    FakeTransport,
    OutputRecorder,
    fakeGateway,
    fakeSession,
    rule,
)

CARD = b"4111 1111 1111 1111"


class FakeConn:
    """What a channel asks of its Conch connection, kept for the test."""

    def __init__(self):
        self.requests: list = []
        self.eofs = self.closes = 0
        self.windows: list = []
        self.localToRemoteChannel = {0: 0}

    def sendRequest(self, channel, kind, data, wantReply=False):
        self.requests.append((kind, data))
        return defer.succeed(None) if wantReply else None

    def sendEOF(self, channel):
        self.eofs += 1

    def sendClose(self, channel):
        self.closes += 1

    def adjustWindow(self, channel, n):
        self.windows.append(n)


class FakePeer:
    """The backend leg's channel."""

    localClosed = False
    peer = None

    def __init__(self):
        self.conn = FakeConn()
        self.data: list = []
        self.lost = False

    def write(self, data):
        self.data.append(data)

    def writeExtended(self, kind, data):
        self.data.append(data)

    def afterData(self, action):
        action()

    def sendEOFAfterData(self):
        pass

    def loseConnection(self):
        self.lost = True


@attrs.frozen
class Options:
    mask_holdback: float = 0.005
    env_allow: tuple = ()
    allow_agent_forwarding: bool = False


@attrs.define
class User:
    session: object
    reactor: object
    options: Options = Options()
    agentForwarding: bool = False


REWRITER = CommandInterceptor(
    lambda hook: Rewrite(hook.text.replace("/etc/passwd", "/tmp/x").replace("uptime", "id")),
    name="rewriter")


def masking():
    return MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card",))))


def channel(interceptors=(), reactor=None, rules=()):
    reactor = reactor or MemoryReactorClock()
    gw = fakeGateway(reactor=reactor)
    chain = list(interceptors)
    if rules:
        chain.insert(0, RulesInterceptor(list(rules), gw.approvals))
    gw.chain = gw.chain.__class__(chain)
    s = fakeSession(gateway=gw, protocol="ssh")
    chan = ClientSession(User(s, reactor))
    chan.id = 0
    chan.conn = FakeConn()
    chan.peer = FakePeer()
    chan.out, chan.err = [], []
    chan.write = chan.out.append
    chan.writeExtended = lambda kind, data: chan.err.append(data)
    chan.channelOpen(b"")
    return chan, s


def sftpPacket(kind: int, rid: int, *strings: bytes) -> bytes:
    body = bytes([kind]) + struct.pack(">L", rid) + b"".join(_wire.NS(x) for x in strings)
    return struct.pack(">L", len(body)) + body


def test_sftp_rewrite_is_an_audited_deny_not_a_silent_pass():
    chan, s = channel([REWRITER])
    chan.requestReceived(b"subsystem", _wire.NS(b"sftp"))
    chan.dataReceived(sftpPacket(_wire.FXP_REMOVE, 7, b"/etc/passwd"))
    # The backend never saw the request, rewritten or not; the client got a refusal.
    assert not any(b"passwd" in d or b"/tmp/x" in d for d in chan.peer.data)
    assert any(b"denied by sealgate" in d and CANNOT_REWRITE.encode() in d for d in chan.out)
    [event] = s.recording.eventsOf("command")
    assert (event["verdict"], event["rule"], event["reason"]) == ("deny", "rewriter", CANNOT_REWRITE)


def test_exec_rewrite_runs_the_rewritten_command():
    chan, s = channel([REWRITER])
    chan.requestReceived(b"exec", _wire.NS(b"uptime"))
    assert chan.peer.conn.requests == [(b"exec", _wire.NS(b"id"))]


def test_denied_exec_says_why_on_stderr_exits_1_and_never_runs():
    chan, s = channel(rules=[rule("no-rm", "deny", matchers={"commands": ["^rm "]})])
    backend = chan.peer
    chan.requestReceived(b"exec", _wire.NS(b"rm -rf /"))
    assert backend.conn.requests == [] and backend.lost
    assert b"denied by rule no-rm" in b"".join(chan.err)
    assert (b"exit-status", _wire.exitStatus(1)) in chan.conn.requests
    assert s.recording.bytesTo(recordChannel(0, STREAM_STDERR)) == b"".join(chan.err)


def test_held_exec_pauses_only_its_channel_then_runs_after_approval():
    chan, s = channel(rules=[rule("deploys", "approve", matchers={"commands": ["^deploy"]})])
    client = FakeTransport()
    s.attach(client)
    chan.requestReceived(b"exec", _wire.NS(b"deploy v2"))
    assert chan.inputPaused and client.producerState == "producing"
    assert chan.peer.conn.requests == [] and b"ticket" in b"".join(chan.err)
    [ticket] = s.gateway.approvals.pending()
    s.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}))
    assert chan.peer.conn.requests == [(b"exec", _wire.NS(b"deploy v2"))]
    assert not chan.inputPaused


def test_held_exec_that_expires_is_refused():
    reactor = MemoryReactorClock()
    chan, s = channel(reactor=reactor,
                      rules=[rule("deploys", "approve", matchers={"commands": ["^deploy"]})])
    backend = chan.peer
    chan.requestReceived(b"exec", _wire.NS(b"deploy v2"))
    reactor.advance(31)
    assert backend.conn.requests == [] and backend.lost
    assert b"expired" in b"".join(chan.err)
    assert (b"exit-status", _wire.exitStatus(1)) in chan.conn.requests


def test_output_hooks_see_the_held_back_masked_tail_too():
    hook = OutputRecorder()
    reactor = MemoryReactorClock()
    chan, s = channel([masking(), hook], reactor=reactor)
    chan.requestReceived(b"shell", b"")
    chan.fromBackend(b"total 4111 1111", STREAM_DATA)  # may be the start of a card
    reactor.advance(0.01)
    sent = b"".join(chan.out)
    data = recordChannel(0, STREAM_DATA)
    assert sent == hook.shown(data) == s.recording.bytesTo(data)
    # Flushed at the bound, the pending run is masked conservatively: no
    # more of a card than its masked form may show (issue 15.3).
    assert len(sent) == len(b"total 4111 1111") and b"4111 1111" not in sent


def test_masked_output_is_held_back_at_most_the_bound():
    reactor = MemoryReactorClock()
    chan, s = channel([masking()], reactor=reactor)
    chan.requestReceived(b"shell", b"")
    chan.fromBackend(b"total 4111 1111", STREAM_DATA)
    assert b"4111" not in b"".join(chan.out)
    reactor.advance(0.004)
    assert b"4111 1111" not in b"".join(chan.out)
    chan.fromBackend(b" 1111 1111 ok\n", STREAM_DATA)
    reactor.advance(0.006)
    out = b"".join(chan.out)
    assert out.startswith(b"total ") and out.endswith(b" ok\n") and b"4111" not in out
    chan.fromBackend(b"prompt 12", STREAM_DATA)
    reactor.advance(0.005)
    assert b"".join(chan.out).endswith(b"prompt 12")


def test_echo_of_typed_keys_is_not_held_back():
    reactor = MemoryReactorClock()
    chan, s = channel([masking()], reactor=reactor)
    chan.pty = _wire.PtyRequest("xterm", 80, 24, 0, 0, b"")
    chan.requestReceived(b"shell", b"")
    for key in b"ada4":
        chan.dataReceived(bytes([key]))
        chan.fromBackend(bytes([key]), STREAM_DATA)
        assert chan.out[-1] == bytes([key])  # at once, no clock advance
    # Backend output that is not an echo is still held while it may be a value.
    chan.fromBackend(b" 4111", STREAM_DATA)
    assert not b"".join(chan.out).endswith(b"4111")
    reactor.advance(0.005)
    assert b"".join(chan.out).endswith(b"4111")


def test_scp_sink_output_is_masked_it_is_only_acks_and_error_texts():
    chan, s = channel([masking()])
    chan.requestReceived(b"exec", _wire.NS(b"scp -t /tmp"))
    chan.fromBackend(b"\x00\x01scp: " + CARD + b": no such file\n", STREAM_DATA)
    out = b"".join(chan.out)
    assert out.startswith(b"\x00\x01scp: ") and CARD not in out


def test_scp_source_file_data_passes_unmasked_after_the_clients_ack():
    chan, s = channel([masking()])
    chan.requestReceived(b"exec", _wire.NS(b"scp -f /srv/cards.txt"))
    chan.dataReceived(b"\x00")
    chan.fromBackend(b"C0644 20 cards.txt\n", STREAM_DATA)
    chan.dataReceived(b"\x00")
    chan.fromBackend(CARD + b"\n\x00", STREAM_DATA)
    assert b"".join(chan.out) == b"C0644 20 cards.txt\n" + CARD + b"\n\x00"
    [event] = s.recording.eventsOf("file_transfer")
    assert event["name"] == "cards.txt" and event["bytes"] == 20


def test_a_command_that_only_starts_like_scp_is_masked_once_it_stops_speaking_scp():
    chan, s = channel([masking()])
    chan.requestReceived(b"exec", _wire.NS(b"scp -f /dev/null; cat /srv/cards.txt"))
    chan.dataReceived(b"\x00")
    chan.fromBackend(b"\x01scp: /dev/null: not a regular file\n", STREAM_DATA)
    chan.fromBackend(b"ada " + CARD + b" paid\n", STREAM_DATA)
    out = b"".join(chan.out)
    assert out.endswith(b" paid\n") and CARD not in out and b"4111" not in out
    assert s.recording.eventsOf("transfer_masked")


def test_scp_data_sent_before_the_client_acknowledged_the_record_is_masked():
    chan, s = channel([masking()])
    chan.requestReceived(b"exec", _wire.NS(b"scp -f x"))
    chan.dataReceived(b"\x00")
    chan.fromBackend(b"C0644 20 x\n" + CARD + b"\n", STREAM_DATA)
    assert CARD not in b"".join(chan.out)


def test_exit_signal_message_from_the_backend_is_masked():
    chan, s = channel([masking()])
    chan.requestReceived(b"exec", _wire.NS(b"true"))
    chan.backendRequest(b"exit-signal", _wire.exitSignal("TERM", False, "killed at " + CARD.decode()))
    [(kind, data)] = [r for r in chan.conn.requests if r[0] == b"exit-signal"]
    name, core, msg = _wire.parseExitSignal(data)
    assert name == "TERM" and msg.startswith("killed at ") and "4111" not in msg
    assert CARD not in s.recording.bytesTo(recordChannel(0, STREAM_CONTROL))


def test_exit_status_passes_the_output_step_before_it_is_sent():
    hook = OutputRecorder()
    chan, s = channel([hook])
    chan.requestReceived(b"exec", _wire.NS(b"true"))
    chan.backendRequest(b"exit-status", _wire.exitStatus(0))
    control = recordChannel(0, STREAM_CONTROL)
    assert b'"exit"' in hook.shown(control)
    assert (b"exit-status", _wire.exitStatus(0)) in chan.conn.requests


def test_refused_output_is_withheld_and_the_channel_closes():
    @attrs.define
    class Refuses:
        name: str = "refuses"

        def appliesTo(self, session):
            return True

        def output(self, hook):
            return Deny("refuses", "no") if hook.context.get("stream") == STREAM_DATA else None

    chan, s = channel([Refuses()])
    chan.requestReceived(b"exec", _wire.NS(b"cat secret"))
    chan.fromBackend(b"secret", STREAM_DATA)
    assert chan.out == [] and b"output withheld" in b"".join(chan.err)
    assert chan.closing
    assert s.recording.eventsOf("output_refused")


def test_store_pressure_pauses_both_tcp_legs_and_failure_disconnects():
    chan, s = channel()
    client, backend = FakeTransport(), FakeTransport()
    s.attach(client, backend)
    said = []
    s.abort = said.append
    s.gateway.store.setPressure("paused", "the disk is full")
    assert client.producerState == backend.producerState == "paused"
    s.gateway.store.setPressure("flowing")
    assert client.producerState == backend.producerState == "producing"
    s.gateway.store.setPressure("failed", "the recording store is restarting")
    assert said and "recording store failed" in said[0]
    assert s.recording.closed[0] == "store failed"


def test_forwarded_channel_bytes_pass_the_output_step_unmasked_and_are_recorded():
    from sealgate.protocols.ssh.relay import ForwardChannel

    hook = OutputRecorder()
    s = fakeSession([masking(), hook], protocol="ssh")
    client, backend = ForwardChannel(), ForwardChannel()
    client.peer, backend.peer = backend, client
    client.session = backend.session = s
    client.clientSide = True
    client.recordId = backend.recordId = recordChannel(3, STREAM_DATA)
    sent, upstream = [], []
    client.write, backend.write = sent.append, upstream.append
    client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    backend.dataReceived(b"card " + CARD)  # a forwarded stream is binary: not masked
    assert upstream == [b"GET / HTTP/1.0\r\n\r\n"] and sent == [b"card " + CARD]
    assert s.recording.bytesTo(client.recordId) == b"card " + CARD
    assert s.recording.bytesFrom(client.recordId) == b"GET / HTTP/1.0\r\n\r\n"
    assert hook.shown(client.recordId) == b"card " + CARD
