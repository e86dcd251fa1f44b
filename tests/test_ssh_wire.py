"""Sans-IO SSH pieces: SFTP framing and operations, request payloads, shell line assembly."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.protocols.ssh import _wire


def _pkt(kind: int, body: bytes, rid: int = 7) -> bytes:
    payload = bytes([kind]) + struct.pack(">L", rid) + body
    return struct.pack(">L", len(payload)) + payload


def _attrs(size=None) -> bytes:
    if size is None:
        return struct.pack(">L", 0)
    return struct.pack(">LQ", 1, size)


def open_(path: bytes, flags: int, size=None, rid=7) -> bytes:
    return _pkt(_wire.FXP_OPEN, _wire.NS(path) + struct.pack(">L", flags) + _attrs(size), rid)


def _split(data: bytes, cuts) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points + [len(data)]:
        out.append(data[last:p])
        last = p
    return out


SAMPLE = [
    open_(b"/srv/report.csv", _wire.FXF_READ, rid=1),
    open_(b"/etc/motd", _wire.FXF_WRITE | _wire.FXF_CREAT | _wire.FXF_TRUNC, 1234, rid=2),
    _pkt(_wire.FXP_WRITE, _wire.NS(b"h1") + struct.pack(">Q", 0) + _wire.NS(b"x" * 5000), 3),
    _pkt(_wire.FXP_REMOVE, _wire.NS(b"/tmp/old"), 4),
    _pkt(_wire.FXP_RENAME, _wire.NS(b"/a") + _wire.NS(b"/b"), 5),
    _pkt(_wire.FXP_OPENDIR, _wire.NS(b"/home"), 6),
    _pkt(_wire.FXP_EXTENDED, _wire.NS(b"posix-rename@openssh.com") + _wire.NS(b"/c")
         + _wire.NS(b"/d"), 8),
    _pkt(17, _wire.NS(b"/stat/only"), 9),
]


def test_sftp_operations_are_decoded_with_path_direction_and_size():
    ops = [_wire.decodeOperation(p) for p in SAMPLE]
    texts = [o.text if o else None for o in ops]
    assert texts == ["get /srv/report.csv", "put /etc/motd", None, "remove /tmp/old",
                     "rename /a /b", "list /home", "rename /c /d", None]
    assert ops[0].direction == "download" and ops[1].direction == "upload"
    assert ops[1].size == 1234 and ops[0].size is None
    assert [o.requestId for o in ops if o] == [1, 2, 4, 5, 6, 8]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=12))
def test_sftp_framing_survives_any_split(cuts):
    stream = b"".join(SAMPLE)
    reader = _wire.SFTPRequests()
    seen = []
    for piece in _split(stream, cuts):
        reader.receive_data(piece)
        while (event := reader.next_event()) is not _wire.NEED_DATA:
            seen.append(event[0])
    assert seen == SAMPLE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20000), max_size=12))
def test_sftp_response_boundaries_are_tracked_across_splits(cuts):
    replies = [_pkt(_wire.FXP_HANDLE, _wire.NS(b"h1")), _pkt(_wire.FXP_DATA, _wire.NS(b"y" * 9000)),
               _wire.statusReply(3, 0, "ok")]
    stream = b"".join(replies)
    ends = {sum(len(r) for r in replies[:i + 1]) for i in range(len(replies))}
    tracker = _wire.SFTPResponses()
    fed = 0
    for piece in _split(stream, cuts):
        tracker.receive_data(piece)
        fed += len(piece)
        assert tracker.atBoundary == (fed in ends or fed == 0)


@given(st.binary(max_size=64))
def test_garbage_sftp_never_raises_anything_but_wire_error(data):
    reader = _wire.SFTPRequests()
    reader.receive_data(data)
    try:
        while reader.next_event() is not _wire.NEED_DATA:
            pass
    except _wire.WireError:
        pass


def test_oversized_sftp_packet_is_a_protocol_error():
    reader = _wire.SFTPRequests()
    reader.receive_data(struct.pack(">L", 64 * 1024 * 1024) + b"\x03")
    with pytest.raises(_wire.WireError):
        reader.next_event()


def test_status_reply_is_a_well_formed_packet():
    packet = _wire.statusReply(42, _wire.FX_PERMISSION_DENIED, "denied by sealgate: no")
    (n,) = struct.unpack(">L", packet[:4])
    assert n == len(packet) - 4 and packet[4] == _wire.FXP_STATUS
    assert struct.unpack(">LL", packet[5:13]) == (42, 3)


@given(st.binary(max_size=80))
def test_request_parsers_raise_only_wire_error(data):
    for parse in (_wire.parsePtyRequest, _wire.parseWindowChange, _wire.parseString,
                  _wire.parseEnv, _wire.parseExitStatus, _wire.parseExitSignal):
        try:
            parse(data)
        except _wire.WireError:
            pass


def test_pty_request_and_window_change():
    data = (_wire.NS(b"xterm-256color") + struct.pack(">4L", 120, 40, 0, 0) + _wire.NS(b"\x00"))
    pty = _wire.parsePtyRequest(data)
    assert (pty.term, pty.cols, pty.rows) == ("xterm-256color", 120, 40)
    assert _wire.parseWindowChange(struct.pack(">4L", 100, 30, 0, 0)) == (100, 30)
    assert _wire.parseExitStatus(_wire.exitStatus(3)) == 3


def test_line_assembler_applies_editing_keys_and_drops_escape_sequences():
    la = _wire.LineAssembler()
    assert la.receive_data(b"lss\x7f -l\r") == [b"ls -l"]
    assert la.receive_data(b"rm -rf /\x15echo hi\r\n") == [b"echo hi"]
    # An arrow key split across two packets leaves nothing behind.
    assert la.receive_data(b"cat \x1b[") == []
    assert la.receive_data(b"Afile\r") == [b"cat file"]
    assert la.receive_data(b"git commit\x17push\r") == [b"git push"]
    assert la.receive_data(b"sleep 9\x03") == []
    assert la.receive_data(b"\r") == [b""]


def test_secret_prompts_are_recognised():
    for prompt in (b"[sudo] password for ada: ", b"Password:", b"Enter passphrase for key: "):
        assert _wire.SECRET_PROMPT.search(prompt)
    assert not _wire.SECRET_PROMPT.search(b"ada@web-1:~$ ")


def test_transfers_are_counted_per_file_and_audited_on_close():
    from sealgate.protocols.ssh.sftpaudit import SFTPTransfers

    audited = []
    t = SFTPTransfers(lambda op, n, complete: audited.append((op.text, n, complete)))

    def req(packet):
        t.request(packet, _wire.decodeOperation(packet))

    def replies(*packets):
        r = _wire.SFTPResponses()
        r.receive_data(b"".join(packets))
        t.replies(r.heads)

    req(open_(b"/up", _wire.FXF_WRITE | _wire.FXF_CREAT, rid=1))
    req(open_(b"/down", _wire.FXF_READ, rid=2))
    req(open_(b"/missing", _wire.FXF_READ, rid=3))
    replies(_pkt(_wire.FXP_HANDLE, _wire.NS(b"H1"), 1), _pkt(_wire.FXP_HANDLE, _wire.NS(b"H2"), 2),
            _wire.statusReply(3, 2, "no such file"))
    req(_pkt(_wire.FXP_WRITE, _wire.NS(b"H1") + struct.pack(">Q", 0) + _wire.NS(b"a" * 700), 4))
    req(_pkt(_wire.FXP_WRITE, _wire.NS(b"H1") + struct.pack(">Q", 700) + _wire.NS(b"b" * 300), 5))
    req(_pkt(_wire.FXP_READ, _wire.NS(b"H2") + struct.pack(">QL", 0, 4096), 6))
    req(_pkt(_wire.FXP_READ, _wire.NS(b"H2") + struct.pack(">QL", 4096, 4096), 7))
    replies(_pkt(_wire.FXP_DATA, _wire.NS(b"z" * 4096), 6), _wire.statusReply(7, 1, "EOF"))
    req(_pkt(_wire.FXP_CLOSE, _wire.NS(b"H1"), 8))
    req(_pkt(_wire.FXP_WRITE, b"\x00\x00", 9))  # malformed: ignored
    assert audited == [("put /up", 1000, True)]
    t.finish()
    assert audited == [("put /up", 1000, True), ("get /down", 4096, False)]
