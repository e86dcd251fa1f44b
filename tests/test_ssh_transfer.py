"""The file-transfer recognisers (scp source, rsync --server) without a reactor: real streams, any split."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.protocols.ssh._rsync import RsyncServer, rsyncOptions, rsyncServer
from sealgate.protocols.ssh._transfer import SCPSource, expectedProtocol

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
CARD = b"4111 1111 1111 1111"


def _scpSink(argv) -> list[tuple[str, bytes]]:
    """
    Drive a real C{scp -f} as its sink would (a response after each record
    and after each file's data); the exchange, in order, as C{(who, bytes)}.
    """
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    events: list[tuple[str, bytes]] = []

    def ack():
        p.stdin.write(b"\0")
        p.stdin.flush()
        events.append(("client", b"\0"))

    def line():
        out = b""
        while not out.endswith(b"\n"):
            c = p.stdout.read(1)
            if not c:
                return None
            out += c
        return out

    ack()
    while (record := line()) is not None:
        events.append(("server", record))
        if record[:1] in (b"\x01", b"\x02"):
            continue
        if record[:1] == b"C":
            ack()
            events.append(("server", p.stdout.read(int(record.split()[1]) + 1)))
        ack()
    p.stdin.close()
    p.wait(30)
    return events


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("xfer") / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(os.urandom(70_000))
    (d / "sub" / "cards.txt").write_bytes(b"ada " + CARD + b" paid\n" * 50)
    (d / "empty").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def scpStream(tree):
    return _scpSink(["scp", "-r", "-p", "-f", str(tree)])


#: rsync invocations whose server streams the recogniser must follow.
RSYNC_RUNS = (["-a"], ["-az"], ["--protocol=29", "-a"], ["--protocol=30", "-a"],
              ["-a", "--cc=md5", "-z", "--zc=zlib"])

_WRAP = """#!{python}
import os, subprocess, sys, threading
work = {work!r}
n = len([f for f in os.listdir(work) if f.startswith("cmd.")])
command = " ".join(sys.argv[2:])
open(f"{{work}}/cmd.{{n}}", "w").write(command)
p = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
log = open(f"{{work}}/ev.{{n}}", "wb")
lock = threading.Lock()

def record(who, data):
    with lock:
        log.write(who + len(data).to_bytes(4, "big") + data)
        log.flush()

def pumpIn():
    while data := os.read(0, 65536):
        record(b"c", data)
        p.stdin.write(data)
        p.stdin.flush()
    p.stdin.close()

threading.Thread(target=pumpIn, daemon=True).start()
while data := os.read(p.stdout.fileno(), 65536):
    record(b"s", data)
    os.write(1, data)
sys.exit(p.wait())
"""


def _events(path: Path) -> list[tuple[str, bytes]]:
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        n = int.from_bytes(data[i + 1:i + 5], "big")
        out.append(("client" if data[i:i + 1] == b"c" else "server", data[i + 5:i + 5 + n]))
        i += 5 + n
    return out


@pytest.fixture(scope="module")
def rsyncStreams(tree, tmp_path_factory):
    """
    Real rsync sessions as the gateway would see them (both directions in
    the order they happened, through rsync's -e program): downloads with
    each of L{RSYNC_RUNS}, an upload, and a download from rsync's daemon
    mode over the remote shell.
    """
    work = tmp_path_factory.mktemp("rsync")
    wrap = work / "wrap.py"
    wrap.write_text(_WRAP.format(python=sys.executable, work=str(work)))
    wrap.chmod(0o700)
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                    f"motd file = {work / 'motd'}\n[mod]\npath = {tree}\n")
    (work / "motd").write_text("welcome; support: " + "grace.hopper@example.com\n")
    runs = [[*flags, f"x:{tree}/", str(work / f"down{n}")] for n, flags in enumerate(RSYNC_RUNS)]
    runs.append(["-a", f"{tree}/", f"x:{work / 'up'}/"])
    runs.append(["-a", f"--rsync-path=rsync --config={conf}", "x::mod/", str(work / "daemon")])
    for argv in runs:
        subprocess.run(["rsync", "-e", str(wrap), *argv], check=True, timeout=60, capture_output=True)
    return [((work / f"cmd.{n}").read_text().strip(), _events(work / f"ev.{n}"))
            for n in range(len(runs))]


def _feed(recogniser, events, cuts):
    """Feed C{events}, each server message split at the C{cuts} (fractions); the pieces out."""
    pieces = []
    for who, data in events:
        if who == "client":
            recogniser.clientData(data)
            continue
        points = sorted({int(len(data) * c) for c in cuts} | {0, len(data)})
        for a, b in zip(points, points[1:], strict=False):
            pieces += recogniser.serverData(data[a:b])
    return pieces


@SETTINGS
@given(st.lists(st.floats(0, 1), max_size=8))
def test_any_split_of_a_real_scp_stream_is_recognised(scpStream, cuts):
    r = SCPSource()
    pieces = _feed(r, scpStream, cuts)
    assert not r.failed and r.held == 0
    server = b"".join(d for who, d in scpStream if who == "server")
    assert b"".join(p for p, _ in pieces) == server
    exempt = b"".join(p for p, e in pieces if e)
    # Exactly the files' data and their status bytes are exempt.
    assert CARD in exempt
    assert sorted(name for name, _ in r.files) == ["a.bin", "cards.txt", "empty"]
    assert len(exempt) == 70_000 + len((b"ada " + CARD + b" paid\n" * 50)) + 3


@SETTINGS
@given(st.lists(st.floats(0, 1), max_size=8), st.integers(0, len(RSYNC_RUNS) + 1))
def test_any_split_of_a_real_rsync_stream_is_recognised(rsyncStreams, cuts, which):
    command, events = rsyncStreams[which]
    assert expectedProtocol(command) == "rsync"
    r = rsyncServer(command)
    pieces = _feed(r, events, cuts)
    assert not r.failed and r.held == 0
    assert b"".join(p for p, _ in pieces) == b"".join(d for who, d in events if who == "server")
    # Only the daemon's greeting lines (its MOTD too) are text, and they are whole.
    text = [p for p, e in pieces if not e and not p.startswith(b"\x00")]
    assert all(p.endswith(b"\n") for p in text)


def test_the_protocol_spoken_is_the_lower_of_both_versions(rsyncStreams):
    for (command, events), flags in zip(rsyncStreams, [*RSYNC_RUNS, ["-a"], ["-a"]], strict=True):
        r = rsyncServer(command)
        _feed(r, events, [])
        assert not r.failed, command
        first = next(d for who, d in events if who == "server")
        daemon = re.match(rb"@RSYNCD: (\d+)", first)
        own = int(daemon.group(1)) if daemon else int.from_bytes(first[:4], "little")
        expected = int(flags[0].split("=")[1]) if flags[0].startswith("--protocol=") else own
        assert r.version == min(own, expected), command


def test_the_daemons_greeting_and_motd_are_masked_text(rsyncStreams):
    command, events = rsyncStreams[-1]
    assert "--daemon" in command
    r = rsyncServer(command)
    pieces = _feed(r, events, [])
    text = b"".join(p for p, e in pieces if not e)
    assert text.startswith(b"@RSYNCD: ") and text.endswith(b"@RSYNCD: OK\n")
    assert b"welcome; support: grace.hopper@example.com\n" in text


def test_rsync_output_past_the_version_before_the_clients_version_is_masked():
    r = RsyncServer()
    pieces = r.serverData(b"\x20\x00\x00\x00\x00SEED" + CARD)
    assert r.failed and CARD not in b"".join(p for p, e in pieces if e)


def test_rsync_options_follow_the_command_line():
    assert rsyncOptions("rsync --server --sender -logDtprze.iLsfxCIvu . /d") == (True, True)
    assert rsyncOptions("rsync --server -logDtpre.iLsfxCIvu . /d") == (True, False)
    assert rsyncOptions("rsync --server -z --zc=zstd --cc=md5 . /d") == (False, False)
    assert rsyncOptions("rsync --server -logDtprze.iLsfxCIvu --old-compress . /d") == (True, False)


@pytest.mark.parametrize("command,expected", [
    ("scp -f /srv/x", "scp"), ("/usr/bin/scp -pf x", "scp"), ("scp -r -f d", "scp"),
    ("scp -f /dev/null; cat file", "scp"),   # chosen by the line, decided by the wire
    ("scp -t /srv", None), ("cat x", None), ("rsync --server --sender . x", "rsync"),
    ("rsync -a x y", None), ("echo scp -f x", None), ("'unbalanced", None), ("", None),
])
def test_the_command_line_only_chooses_which_protocol_to_expect(command, expected):
    assert expectedProtocol(command) == expected


_TEXT = st.binary(min_size=1, max_size=200)


@SETTINGS
@given(_TEXT, st.lists(st.floats(0, 1), max_size=5), st.booleans())
def test_output_that_is_not_scp_is_never_exempt(data, cuts, acked):
    # Whatever a command prints, unless it is a record answering the
    # client's response, nothing of it passes unmasked.
    r = SCPSource()
    events = ([("client", b"\0")] if acked else []) + [("server", data)]
    pieces = _feed(r, events, cuts)
    assert not any(e for _, e in pieces)


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 3))
def test_data_not_answered_by_the_client_after_its_record_is_masked(data, acksAhead):
    # Responses sent ahead (piped in) do not stand for a sink's answer to a record.
    r = SCPSource()
    r.clientData(b"\0" * (acksAhead + 1))
    pieces = r.serverData(b"C0644 %d x\n" % (len(data) + len(CARD)))
    pieces += r.serverData(CARD + data)
    assert r.failed
    assert CARD not in b"".join(p for p, e in pieces if e)


def test_a_partial_record_held_at_a_quiet_spell_is_given_up_as_text():
    r = SCPSource()
    r.clientData(b"\0")
    assert r.serverData(b"C0644 12") == [] and r.held == 8
    assert r.stall() == [(b"C0644 12", False)] and r.failed
    assert r.serverData(CARD) == [(CARD, False)]


def test_scp_error_lines_and_a_card_in_a_file_name_are_text():
    r = SCPSource()
    r.clientData(b"\0")
    pieces = r.serverData(b"\x01scp: " + CARD + b": No such file\n")
    assert pieces == [(b"\x01scp: " + CARD + b": No such file\n", False)]
    assert r.serverData(b"C0644 3 " + CARD + b".txt\n") == [(b"C0644 3 " + CARD + b".txt\n", False)]
    r.clientData(b"\0")
    assert r.serverData(b"abc\0") == [(b"abc\0", True)]


def test_a_client_that_is_not_an_scp_sink_ends_the_exemption():
    r = SCPSource()
    r.clientData(b"hello\n")
    assert r.failed
    assert r.serverData(b"C0644 3 x\n") == [(b"C0644 3 x\n", False)]


@pytest.mark.parametrize("stream", [
    b"\x05\x00\x00\x00",                                   # protocol 5: no rsync we speak
    b"\x20\x00\x00\x00\x00" + b"SEED" + b"\x00\x00\x00\x50",  # message code 73
    b"\x20\x00\x00\x00\x81\xff\x05AB CD",                  # negotiation string not names
    b"\x20\x00\x00\x00\x00SEED" + b"\x10\x00\x01\x09" + b"x" * 100,  # a 65 KiB+ message
    CARD,
])
def test_output_that_breaks_the_rsync_protocol_is_masked_from_there(stream):
    r = RsyncServer()
    r.clientData(b"\x20\x00\x00\x00")
    pieces = r.serverData(stream) + r.serverData(b"after " + CARD)
    assert r.failed
    assert CARD not in b"".join(p for p, e in pieces if e)


def test_rsync_messages_other_than_data_are_text_to_mask():
    r = RsyncServer(checksumList=False)
    r.clientData(b"\x20\x00\x00\x00")
    head = b"\x20\x00\x00\x00" + b"\x00" + b"SEED"
    info = b"card " + CARD + b"\n"
    msg = (len(info) | (7 + 2) << 24).to_bytes(4, "little") + info     # MSG_INFO
    data = (len(CARD) | 7 << 24).to_bytes(4, "little") + CARD         # MSG_DATA
    pieces = r.serverData(head + msg + data)
    assert not r.failed
    assert (info, False) in pieces and CARD in b"".join(p for p, e in pieces if e)



@pytest.mark.parametrize("machine", [SCPSource, RsyncServer])
def test_each_machine_moves_only_along_its_one_transition_table(machine):
    table = machine.TRANSITIONS
    # Every state a transition reaches has its own row.
    assert set().union(*table.values()) <= set(table)
    r = machine()
    with pytest.raises(AssertionError, match="no transition"):
        r._go("nowhere")
