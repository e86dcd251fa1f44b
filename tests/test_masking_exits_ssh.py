"""
SSH exit paths with masking on, through a real twistd gateway and a real
sshd with the real ssh, scp, sftp and rsync clients (pexpect for pty
shells): the raw value reaches neither the client's raw bytes nor the
sealed log, file transfers stay byte-exact, sessions stay valid.
"""

import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted

from tests.harness.twistd import GatewayProcess

CARD = b"4111 1111 1111 1111"
CARD_PLAIN = b"4111111111111111"
EMAIL = b"grace.hopper@example.com"
SECRETS = (CARD, CARD_PLAIN, EMAIL)
_ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]")

#: The client environment the exec cases send through.
ENV_ALLOW = 'env_allow = ["LANG", "SG_*"]'


def _config(sshd, recordInput: str) -> str:
    return f"""
[gateway]
state_dir = "var/sealgate"
admin = "tcp:0:interface=127.0.0.1"
checkpoint_interval = "1s"
{sshd.connection(options=ENV_ALLOW)}

[[roles]]
name = "engineers"
groups = ["eng"]
connections = ["*"]

[[rules]]
name = "no-rm"
action = "deny"
commands = ["^rm "]
reason = "deleting files is not allowed here"

[masking]
detectors = ["credit_card", "email"]
record_input = "{recordInput}"
"""


class Gateway:
    """A twistd gateway in front of the sshd, with alice's key bound to group eng."""

    def __init__(self, sshd, directory: Path, recordInput: str):
        self.dir = directory
        self.proc = GatewayProcess(directory, _config(sshd, recordInput))
        self.key = directory / "alice"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.proc.cli("ssh-keys", "add", "alice", f"{self.key}.pub", "--group", "eng")
        self.proc.start()
        self.stateDir = directory / "var" / "sealgate"
        pub = (self.stateDir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.port = self.proc.port("web-1")
        self.knownHosts = directory / "known_hosts"
        self.knownHosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(pub)}\n")

    def options(self) -> list[str]:
        return ["-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.knownHosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]

    def sshArgs(self, *extra: str) -> list[str]:
        return ["ssh", "-p", str(self.port), *self.options(), *extra, "web-1@127.0.0.1"]

    def run(self, argv, input=b"", timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)

    def ssh(self, command: str, input=b"", extra=()) -> subprocess.CompletedProcess:
        return self.run(self.sshArgs(*extra) + [command], input=input)

    def scp(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(["scp", "-q", "-P", str(self.port), *self.options(), *args])

    def rshell(self) -> str:
        """The ssh command rsync runs (-e), without the destination."""
        return " ".join(shlex.quote(a) for a in self.sshArgs()[:-1])

    # -- the store --------------------------------------------------------------

    def sessions(self) -> set[str]:
        from sealgate.recording.reader import StoreReader

        if not (self.stateDir / "store.sqlite").exists() and not any(self.stateDir.glob("*.sqlite*")):
            return set()
        with StoreReader(self.stateDir) as r:
            return {s["id"] for s in r.sessions()}

    def closedSession(self, before: set[str], timeout: float = 30) -> "Recorded":
        """The one session opened since C{before}, once its CLOSE is sealed."""
        from sealgate.recording.reader import StoreReader

        deadline = time.monotonic() + timeout
        while True:
            with StoreReader(self.stateDir) as r:
                new = [s for s in r.sessions() if s["id"] not in before]
                if len(new) == 1 and new[0]["closed"] is not None:
                    sid = new[0]["id"]
                    return Recorded(sid, list(r.frames(sid)), r.events(sid))
            assert len(new) <= 1, new
            assert time.monotonic() < deadline, "no new closed session"
            time.sleep(0.05)  # polling the store for a condition, with a deadline

    def stop(self) -> None:
        self.proc.stop()


class Recorded:
    """One session as the sealed store holds it."""

    def __init__(self, sid, frames, events):
        self.id, self.frames, self.events = sid, frames, events

    def output(self) -> bytes:
        return b"".join(f.data for f in self.frames if f.direction == 1 and f.data)

    def input(self, stream: int | None = None) -> bytes:
        return b"".join(f.data for f in self.frames if f.direction == 0 and f.data
                        and (stream is None or f.channel % 4 == stream))

    def log(self) -> bytes:
        return json.dumps(self.events, default=str).encode()

    def eventsOf(self, kind: str) -> list[dict]:
        return [e.get("fields") or {} for e in self.events if e.get("event") == kind]

    def assertNoRawValue(self, inputToo: bool = True) -> None:
        for raw in SECRETS:
            assert raw not in self.output(), raw
            assert raw not in self.log(), raw
            if inputToo:
                assert raw not in self.input(), raw


def _clean(data: bytes) -> None:
    for raw in SECRETS:
        assert raw not in data, raw


@pytest.fixture(scope="module")
def gw(sshd, tmp_path_factory):
    g = Gateway(sshd, tmp_path_factory.mktemp("maskssh-raw"), "raw")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def gwMasked(sshd, tmp_path_factory):
    g = Gateway(sshd, tmp_path_factory.mktemp("maskssh-masked"), "masked")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("maskssh-files")
    (d / "customers.txt").write_bytes(b"ada " + CARD + b" " + EMAIL + b" paid\n")
    (d / "cards.bin").write_bytes(b"".join(b"row %d " % i + CARD + b"\n" for i in range(500))
                                  + os.urandom(20_000) + EMAIL + b"\n")
    return {p.name: p for p in d.iterdir()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- exec -------------------------------------------------------------------------------


def test_exec_cat_masks_card_and_email_and_keeps_the_rest(gw, files):
    before = gw.sessions()
    r = gw.ssh(f"cat {files['customers.txt']}")
    assert r.returncode == 0, r.stderr
    _clean(r.stdout)
    assert r.stdout == b"ada **** **** **** 1111 ************@example.com paid\n"
    gw.closedSession(before).assertNoRawValue()


def test_exec_stderr_is_masked(gw, files):
    before = gw.sessions()
    r = gw.ssh(f"cat {files['customers.txt']} >&2; exit 3")
    assert r.returncode == 3
    _clean(r.stderr)
    assert r.stderr.startswith(b"ada ****") and r.stdout == b""
    gw.closedSession(before).assertNoRawValue()


def test_a_value_split_by_a_pause_longer_than_the_holdback_shows_at_most_six_digits(gw):
    before = gw.sessions()
    r = gw.ssh("printf 'card 4111 11'; sleep 0.05; printf '11 1111 1111 end\\n'")
    assert r.returncode == 0, r.stderr
    # Flushed at the bound (or, on a slow gateway, masked whole): never more than six digits.
    assert r.stdout.startswith(b"card ") and r.stdout.endswith(b" end\n")
    assert b"4111 111" not in r.stdout and len(r.stdout) == len(b"card " + CARD + b" end\n")
    gw.closedSession(before).assertNoRawValue()


def test_exec_command_line_with_a_value_is_masked_in_output_and_in_the_sealed_command(gw):
    before = gw.sessions()
    r = gw.ssh(f"echo {CARD.decode()} {EMAIL.decode()}")
    assert r.returncode == 0 and r.stdout == b"**** **** **** 1111 ************@example.com\n"
    s = gw.closedSession(before)
    [command] = [e["command"] for e in s.eventsOf("command")]
    assert command == "echo **** **** **** 1111 ************@example.com"
    # record_input = "raw": the command as the client sent it stays in its frames (evidence).
    assert CARD in s.input()
    s.assertNoRawValue(inputToo=False)


def test_application_input_on_stdin_is_masked_in_output_and_kept_raw_as_evidence(gw):
    before = gw.sessions()
    r = gw.ssh("cat", input=b"pay " + CARD + b" for " + EMAIL + b"\n")
    assert r.returncode == 0 and r.stdout == b"pay **** **** **** 1111 for ************@example.com\n"
    s = gw.closedSession(before)
    assert CARD in s.input(0)
    s.assertNoRawValue(inputToo=False)


def test_env_value_echoed_back_is_masked(gw):
    before = gw.sessions()
    r = gw.ssh('echo "card=$SG_CARD"', extra=("-o", f"SetEnv=SG_CARD={CARD_PLAIN.decode()}"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"card=************1111\n"
    s = gw.closedSession(before)
    assert [e["name"] for e in s.eventsOf("env")] in ([], ["SG_CARD"])
    s.assertNoRawValue()


def test_a_command_killed_by_a_signal_has_its_output_masked_and_its_exit_signal_recorded(gw, files):
    before = gw.sessions()
    r = gw.ssh(f"cat {files['customers.txt']} >&2; kill -KILL $$")
    assert r.returncode == 255  # OpenSSH's status for a remote command killed by a signal
    _clean(r.stderr)
    s = gw.closedSession(before)
    controls = [json.loads(f.data) for f in s.frames if f.direction == 1 and f.channel % 4 == 2]
    assert {"type": "exit", "signal": "KILL"}.items() <= next(
        c for c in controls if c.get("type") == "exit").items()
    s.assertNoRawValue()


# -- file transfers: exempt by protocol, not by a command-line prefix ----------------------


def test_scp_prefix_then_cat_is_masked(gw, files):
    before = gw.sessions()
    r = gw.ssh(f"scp -f /dev/null; cat {files['customers.txt']}", input=b"\0")
    assert r.returncode == 0, r.stderr
    _clean(r.stdout)
    assert r.stdout.endswith(b"ada **** **** **** 1111 ************@example.com paid\n")
    s = gw.closedSession(before)
    assert s.eventsOf("transfer_masked")
    s.assertNoRawValue()


def test_a_forged_scp_record_with_acknowledgements_sent_ahead_is_masked(gw, files):
    data = files["customers.txt"].read_bytes()
    before = gw.sessions()
    r = gw.ssh(f"scp -f /dev/null; printf 'C0644 {len(data)} x\\n'; cat {files['customers.txt']}",
               input=b"\0" * 8)
    assert r.returncode == 0, r.stderr
    _clean(r.stdout)
    gw.closedSession(before).assertNoRawValue()


def test_legacy_scp_download_is_exempt_byte_exact_and_recorded(gw, files, tmp_path):
    src, out = files["cards.bin"], tmp_path / "cards.copy"
    before = gw.sessions()
    r = gw.scp("-O", f"web-1@127.0.0.1:{src}", str(out))
    assert r.returncode == 0, r.stderr
    assert _sha(out) == _sha(src)
    s = gw.closedSession(before)
    [transfer] = s.eventsOf("file_transfer")
    assert transfer["name"] == "cards.bin" and transfer["bytes"] == src.stat().st_size
    assert transfer["protocol"] == "scp" and transfer["direction"] == "download"
    # Recorded as the client got it (the file's bytes); never masked after the fact.
    assert src.read_bytes() in s.output()
    assert not s.eventsOf("transfer_masked")


def test_legacy_scp_recursive_download_with_times_is_exempt_byte_exact(gw, files, tmp_path):
    src, out = files["cards.bin"].parent, tmp_path / "tree"
    before = gw.sessions()
    r = gw.scp("-O", "-r", "-p", f"web-1@127.0.0.1:{src}", str(out))
    assert r.returncode == 0, r.stderr
    for name, path in files.items():
        assert _sha(out / name) == _sha(path), name
    s = gw.closedSession(before)
    assert sorted(t["name"] for t in s.eventsOf("file_transfer")) == sorted(files)
    assert not s.eventsOf("transfer_masked")


def test_scp_download_over_sftp_is_exempt_byte_exact(gw, files, tmp_path):
    src, out = files["cards.bin"], tmp_path / "cards.sftp"
    r = gw.scp(f"web-1@127.0.0.1:{src}", str(out))
    assert r.returncode == 0, r.stderr
    assert _sha(out) == _sha(src)


def test_legacy_scp_upload_is_byte_exact(gw, files, tmp_path):
    dest = tmp_path / "uploaded.bin"
    before = gw.sessions()
    r = gw.scp("-O", str(files["cards.bin"]), f"web-1@127.0.0.1:{dest}")
    assert r.returncode == 0, r.stderr
    assert _sha(dest) == _sha(files["cards.bin"])
    s = gw.closedSession(before)
    # The sink's output (acknowledgements) was masked and carried no value.
    for raw in SECRETS:
        assert raw not in s.output() and raw not in s.log()
    assert CARD in s.input()  # record_input = "raw": the upload is the evidence


def test_sftp_get_is_exempt_byte_exact_and_audited(gw, files, tmp_path):
    out = tmp_path / "got.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"get {files['cards.bin']} {out}\n")
    before = gw.sessions()
    r = gw.run(["sftp", "-b", str(batch), "-P", str(gw.port), *gw.options(), "web-1@127.0.0.1"])
    assert r.returncode == 0, r.stderr
    assert _sha(out) == _sha(files["cards.bin"])
    s = gw.closedSession(before)
    [t] = s.eventsOf("sftp_transfer")
    assert t["direction"] == "download" and t["complete"] and t["bytes"] == files["cards.bin"].stat().st_size


def test_rsync_download_and_upload_are_exempt_byte_exact(gw, files, tmp_path):
    src = files["cards.bin"].parent
    down, up = tmp_path / "down", tmp_path / "up"
    before = gw.sessions()
    r = gw.run(["rsync", "-a", "-e", gw.rshell(), f"web-1@127.0.0.1:{src}/", f"{down}/"])
    assert r.returncode == 0, r.stderr
    s = gw.closedSession(before)
    assert not s.eventsOf("transfer_masked")
    assert CARD in s.output()  # the file data, recorded as the client got it
    r = gw.run(["rsync", "-az", "-e", gw.rshell(), f"{src}/", f"web-1@127.0.0.1:{up}/"])
    assert r.returncode == 0, r.stderr
    for name, path in files.items():
        assert _sha(down / name) == _sha(path) == _sha(up / name), name


@pytest.mark.parametrize("flags", [["-az"], ["--protocol=29", "-a"], ["-a", "--cc=md5", "-z", "--zc=zlib"]],
                         ids=["compressed", "protocol-29", "choices-given"])
def test_rsync_download_variants_are_exempt_byte_exact(gw, files, tmp_path, flags):
    down = tmp_path / "downz"
    before = gw.sessions()
    r = gw.run(["rsync", *flags, "-e", gw.rshell(), f"web-1@127.0.0.1:{files['cards.bin']}", f"{down}"])
    assert r.returncode == 0, r.stderr
    assert _sha(down) == _sha(files["cards.bin"])
    assert not gw.closedSession(before).eventsOf("transfer_masked")


def test_rsync_daemon_mode_over_ssh_is_exempt_and_its_motd_masked(gw, files, tmp_path):
    conf, motd = tmp_path / "rsyncd.conf", tmp_path / "motd"
    motd.write_bytes(b"support: " + EMAIL + b"\n")
    # The daemon runs as the login user (as root it would switch to nobody).
    conf.write_text(f"use chroot = no\nuid = {os.getuid()}\ngid = {os.getgid()}\n"
                    f"motd file = {motd}\n[mod]\npath = {files['cards.bin'].parent}\n")
    down = tmp_path / "daemon"
    before = gw.sessions()
    r = gw.run(["rsync", "-a", "-e", gw.rshell(), f"--rsync-path=rsync --config={conf}",
                "web-1@127.0.0.1::mod/", f"{down}/"])
    assert r.returncode == 0, r.stderr
    assert b"support: ************@example.com" in r.stdout
    _clean(r.stdout)
    for name, path in files.items():
        assert _sha(down / name) == _sha(path), name
    s = gw.closedSession(before)
    assert not s.eventsOf("transfer_masked") and EMAIL not in s.log()


# -- pty shells ----------------------------------------------------------------------------


class Shell:
    """An interactive login shell through the gateway (ssh -tt under pexpect); C{raw} holds every byte read."""

    def __init__(self, g: Gateway):
        import pexpect

        self.raw = io.BytesIO()
        self.child = pexpect.spawn("ssh", g.sshArgs("-tt")[1:], dimensions=(24, 100), timeout=30,
                                   env={**os.environ, "TERM": "xterm"})
        self.child.logfile_read = self.raw
        self.child.expect(rb"[$#] ")
        # The prompt as typed does not match the prompt as shown.
        self.child.sendline("PS1='s''g> '")
        self.child.expect(rb"sg> ")

    def run(self, command: str) -> bytes:
        """Run C{command}; what the terminal showed up to the next prompt."""
        self.child.sendline(f"{command}; echo E$((6*7))X")
        self.child.expect(rb"E42X\r\n")
        shown = self.child.before
        self.child.expect(rb"sg> ")
        return shown

    def close(self) -> None:
        import pexpect

        self.child.sendline("exit 0")
        self.child.expect(pexpect.EOF)
        self.child.close()
        assert self.child.exitstatus == 0


def test_pty_shell_cat_is_masked(gw, files):
    before = gw.sessions()
    sh = Shell(gw)
    shown = sh.run(f"cat {files['customers.txt']}")
    sh.close()
    assert b"ada **** **** **** 1111 ************@example.com paid" in shown
    _clean(sh.raw.getvalue())
    gw.closedSession(before).assertNoRawValue()


def test_pty_grep_color_inside_a_value_is_masked_and_its_escapes_kept(gw, files):
    before = gw.sessions()
    sh = Shell(gw)
    shown = sh.run(f"grep --color=always '1111 1111' {files['customers.txt']}")
    sh.close()
    raw = sh.raw.getvalue()
    assert b"\x1b[01;31m\x1b[K" in shown and b"\x1b[m\x1b[K" in shown  # grep's colours, intact
    rendered = _ANSI.sub(b"", shown)
    assert b"ada **** **** **** 1111 ************@example.com paid" in rendered
    _clean(_ANSI.sub(b"", raw))
    _clean(raw)
    gw.closedSession(before).assertNoRawValue()


def test_ansi_cursor_moves_inside_a_value_do_not_hide_it(gw):
    before = gw.sessions()
    sh = Shell(gw)
    shown = sh.run(r"printf '4111 1111\033[K 1111\033[1C\033[1D 1111 done\n'")
    sh.close()
    rendered = _ANSI.sub(b"", shown)
    assert b"**** **** **** 1111 done" in rendered and b"\x1b[K" in shown and b"\x1b[1C\x1b[1D" in shown
    _clean(_ANSI.sub(b"", sh.raw.getvalue()))
    gw.closedSession(before).assertNoRawValue()


def test_tmux_redrawing_a_value_is_masked(gw, files):
    before = gw.sessions()
    sh = Shell(gw)
    sh.child.sendline(f"tmux -f /dev/null -L sg$$ new-session -x 80 -y 20 "
                      f"\"cat {files['customers.txt']}; echo T\\$((6*7))T; read x\"")
    sh.child.expect(rb"T42T")
    sh.child.sendline("")
    sh.child.expect(rb"sg> ")
    sh.close()
    raw = sh.raw.getvalue()
    assert b"1111" in _ANSI.sub(b"", raw)  # the masked form was drawn
    _clean(_ANSI.sub(b"", raw))
    _clean(raw)
    gw.closedSession(before).assertNoRawValue()


def _typeKeyByKey(sh: Shell, text: bytes) -> bytes:
    """Type C{text} one key at a time, each after the previous key's echo came back."""
    echoed = b""
    for key in text:
        sh.child.send(bytes([key]))
        sh.child.expect([re.escape(bytes([key])), rb"\*"])
        echoed += sh.child.after
    return echoed


def test_typed_keys_echo_at_once_and_never_show_more_than_six_digits_of_a_card(gw):
    before = gw.sessions()
    sh = Shell(gw)
    echoed = _typeKeyByKey(sh, b"echo " + CARD)
    sh.child.sendline("")
    sh.child.expect(rb"\r\n(.*)\r\n")
    printed = _ANSI.sub(b"", sh.child.match.group(1)).strip()
    sh.child.expect(rb"sg> ")
    sh.close()
    # Each key came back before the next was typed; a card's digits past
    # the sixth come back masked, the last ones as its masked form shows.
    assert echoed.startswith(b"echo 4111 11") and b"4111 111" not in echoed
    assert len(echoed) == len(b"echo " + CARD)
    assert printed == b"**** **** **** 1111"
    _clean(sh.raw.getvalue())
    s = gw.closedSession(before)
    # Shell lines typed are sealed masked; the raw keystrokes stay as evidence.
    lines = [e["line"] for e in s.eventsOf("shell_input")]
    assert "echo **** **** **** 1111" in lines
    assert CARD in s.input(0)
    s.assertNoRawValue(inputToo=False)


def test_an_exported_terminal_recording_holds_no_raw_value(gw, files, tmp_path):
    before = gw.sessions()
    sh = Shell(gw)
    sh.run(f"cat {files['customers.txt']}")
    sh.close()
    s = gw.closedSession(before)
    out = tmp_path / "s.cast"
    gw.proc.cli("export", s.id, "--format", "asciicast", "--out", str(out))
    cast = out.read_bytes()
    assert b"**** **** **** 1111" in cast
    _clean(cast)


# -- record_input = "masked" -----------------------------------------------------------------


def test_record_input_masked_removes_stdin_values_from_the_input_frames(gwMasked):
    before = gwMasked.sessions()
    r = gwMasked.ssh("cat", input=b"pay " + CARD + b" for " + EMAIL + b"\n")
    assert r.returncode == 0 and r.stdout == b"pay **** **** **** 1111 for ************@example.com\n"
    s = gwMasked.closedSession(before)
    assert s.input(0) == b"pay **** **** **** 1111 for ************@example.com\n"
    s.assertNoRawValue()


def test_record_input_masked_removes_the_command_line_value_from_the_exec_record(gwMasked):
    before = gwMasked.sessions()
    r = gwMasked.ssh(f"echo {CARD.decode()}")
    assert r.returncode == 0 and r.stdout == b"**** **** **** 1111\n"
    s = gwMasked.closedSession(before)
    [record] = [json.loads(f.data) for f in s.frames if f.direction == 0 and f.channel % 4 == 2
                and b'"exec"' in f.data]
    assert record["command"] == "echo **** **** **** 1111"
    s.assertNoRawValue()


def test_record_input_masked_removes_typed_keys_from_the_input_frames(gwMasked):
    before = gwMasked.sessions()
    sh = Shell(gwMasked)
    _typeKeyByKey(sh, b"echo " + CARD)
    sh.child.sendline("")
    sh.child.expect(rb"sg> ")
    sh.close()
    _clean(sh.raw.getvalue())
    s = gwMasked.closedSession(before)
    typed = s.input(0)
    assert b"echo **** **** **** 1111\n" in typed
    s.assertNoRawValue()


def test_record_input_masked_scp_upload_stays_byte_exact_with_masked_input_frames(gwMasked, files, tmp_path):
    dest = tmp_path / "up.bin"
    before = gwMasked.sessions()
    r = gwMasked.scp("-O", str(files["cards.bin"]), f"web-1@127.0.0.1:{dest}")
    assert r.returncode == 0, r.stderr
    assert _sha(dest) == _sha(files["cards.bin"])
    s = gwMasked.closedSession(before)
    # The upload in the input frames is masked (same length), not the file sent on.
    assert b"row 7 **** **** **** 1111\n" in s.input(0)
    assert len(s.input(0)) > files["cards.bin"].stat().st_size
    s.assertNoRawValue()


def test_record_input_must_be_raw_or_masked(tmp_path):
    from tests.test_config import GOOD, error, load

    m = error(tmp_path, GOOD + 'record_input = "hashed"\n')
    assert "masking.record_input: unknown value 'hashed'" in m and "use one of: raw, masked" in m
    assert load(tmp_path, GOOD + 'record_input = "masked"\n')[1].masking.record_input == "masked"
    assert load(tmp_path, GOOD)[1].masking.record_input == "raw"


# -- the core's input recording, without a reactor ----------------------------------------------


def _inputSession(recordInput: str):
    from sealgate.chain.masking import MaskingInterceptor
    from sealgate.config import MaskingConfig
    from sealgate.masking import Masker
    from sealgate.testing import fakeSession

    masker = Masker.fromConfig(MaskingConfig(detectors=("credit_card", "email"), record_input=recordInput))
    return fakeSession([MaskingInterceptor(masker)])


def _recordedInput(s, channel=0) -> bytes:
    return b"".join(d for direction, d, c in s.recording.frames if direction == 0 and c == channel)


def test_record_input_masked_masks_a_value_split_across_frames_per_channel():
    s = _inputSession("masked")
    pieces = (b"SELECT '4111 11", b"11 1111 1111' -- ", b"grace.hop", b"per@example.com\n")
    for piece in pieces:
        s.received(piece, 0)
    s.received(b"4111 1111", 4)  # another channel's stream is its own
    assert _recordedInput(s) == b"SELECT '**** **** **** 1111' -- ************@example.com\n"
    assert s.bytesFromClient == sum(map(len, pieces)) + 9  # counted as sent
    s.end()
    # What was still held (maybe a value's start) is recorded, masked, at the end.
    assert _recordedInput(s, 4) == b"4111 1111" and CARD not in b"".join(d for _, d, _ in s.recording.frames)


def test_record_input_masked_masks_the_login_frames_kept_before_the_session():
    s = _inputSession("masked")
    s.recordPreamble([(0, b"user\0alice\0application_name\0" + CARD_PLAIN + b"\0\0", 0)])
    assert _recordedInput(s) == b"user\0alice\0application_name\0************1111\0\0"


def test_record_input_raw_records_input_exactly_as_sent():
    s = _inputSession("raw")
    s.received(b"pay " + CARD + b"\n")
    assert _recordedInput(s) == b"pay " + CARD + b"\n"


def _user():
    from sealgate.protocols.ssh.server import GatewayUser

    user = GatewayUser.__new__(GatewayUser)  # no backend leg: its callbacks are driven here
    user.session = _inputSession("raw")
    user.failure, user.backendConn, user._waiters, user._ended = None, None, [], False
    return user


def test_the_backends_disconnect_text_is_masked_before_it_is_told_or_sealed():
    from twisted.conch import error
    from twisted.python.failure import Failure

    from sealgate.protocols.ssh.backend import BackendError
    from sealgate.protocols.ssh.relay import RelayChannel

    user = _user()
    user._backendDown(Failure(BackendError("the backend disconnected: card " + CARD.decode())))
    assert user.failure == "the backend disconnected: card **** **** **** 1111"
    [event] = user.session.recording.eventsOf("backend_failed")
    assert CARD.decode() not in event["reason"]
    refused = []
    user._pair(RelayChannel(), RelayChannel(), b"").addErrback(refused.append)
    [f] = refused
    assert f.check(error.ConchError) and f.value.args[0] == user.failure


def test_a_channel_open_failure_text_from_the_backend_is_masked():
    from twisted.conch import error

    from sealgate.protocols.ssh.relay import RelayChannel

    class Conn:
        def openChannel(self, channel, extra):
            channel.openFailed(error.ConchError(f"no channel for {EMAIL.decode()}", 2))

    user = _user()
    user.backendConn = Conn()
    refused = []
    user._pair(RelayChannel(), RelayChannel(), b"").addErrback(refused.append)
    [f] = refused
    assert f.value.args == ("no channel for ************@example.com", 2)


# -- record_input = "masked" for the other protocols: the core records input in one place --------


@pytest_twisted.ensureDeferred
async def test_record_input_masked_masks_postgres_client_frames_and_the_transcript_still_reads(
        tmp_path, postgres):
    import psycopg
    from twisted.internet import threads

    from sealgate.protocols.postgres.plugin import plugin
    from tests.test_pg_proxy import _dsn, _psql, _sessions, _start

    g, key = await _start(tmp_path, postgres, extra="""
[masking]
detectors = ["credit_card", "email"]
record_input = "masked"
""")
    try:
        r = await _psql(postgres, g, key, f"select '{CARD.decode()}' as c")
        assert r.returncode == 0 and "**** **** **** 1111" in r.stdout, r.stderr

        def extended():
            with psycopg.connect(_dsn(g, key, application_name=EMAIL.decode()), autocommit=True) as c:
                return c.execute("select %s::text", (EMAIL.decode(),)).fetchone()

        assert await threads.deferToThread(extended) == ("************@example.com",)
    finally:
        await g.stop()
    sessions = _sessions(g)
    assert len(sessions) == 2
    for _s, frames, events in sessions:
        for f in frames:
            _clean(f.data or b"")
        _clean(json.dumps(events, default=str).encode())
    # Masks keep lengths: the masked frames still parse as the protocol.
    [psql] = [frames for _s, frames, _e in sessions
              if b"application_name\0psql\0" in b"".join(f.data or b"" for f in frames)]
    out = io.BytesIO()
    plugin.replay(psql, out, None)
    assert b"select '**** **** **** 1111' as c" in out.getvalue()
    names = {e["info"]["meta"]["application_name"] for _s, _f, events in sessions for e in events
             if e.get("type") == "open"}
    assert names == {"psql", "************@example.com"}


@pytest_twisted.ensureDeferred
async def test_record_input_masked_masks_http_request_frames_and_the_har_still_reads(tmp_path, http_backend):
    from sealgate.protocols.http import har
    from tests.test_http_proxy import _curl, _frames, _start

    body = b"pay " + CARD + b" for " + EMAIL + b"\n"
    g, key = await _start(tmp_path, http_backend, extra='record_input = "masked"')
    try:
        r = await _curl("-u", f"ci:{key}", "-H", "Content-Type: text/plain", "--data-binary", body,
                        f"http://127.0.0.1:{g.port('web')}/echo/pay?to={EMAIL.decode()}")
        assert r.returncode == 0, r.stderr
        echoed = json.loads(r.stdout)
    finally:
        await g.stop()
    # The backend got the request as sent; the client got it back masked.
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    _clean(r.stdout)
    [(session, frames)] = _frames(g)
    for f in frames:
        _clean(f.data or b"")
    [entry] = har.toHar(frames, session["info"])["log"]["entries"]
    assert entry["request"]["postData"]["text"] == "pay **** **** **** 1111 for ************@example.com\n"
    assert entry["request"]["url"].endswith("/echo/pay?to=************@example.com")
