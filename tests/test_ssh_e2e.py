"""SSH through the gateway with the real OpenSSH client against a real sshd."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.harness._proc import SilentServer

GATEWAY_USER_GROUPS = ["ops"]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "user@test",
                    "-f", str(path)], check=True)
    return path


def _closedPort() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


#: web-1's options beyond the login: the client environment let through, a short holdback.
WEB_OPTIONS = 'env_allow = ["LANG", "SG_*"]\nmask_holdback = "100ms"'


def _config(sshd, tmp: Path, silent: SilentServer | None = None) -> str:
    # silent-1's backend: a server that accepts and never answers, or (for
    # callers that never use that connection) a port nothing listens on.
    silentPort = silent.port if silent is not None else 9
    wrong = tmp / "wrong_known_hosts"
    other = _keygen(tmp / "other_host")
    wrong.write_text(f"[{sshd.host}]:{sshd.port} "
                     + " ".join(Path(str(other) + ".pub").read_text().split()[:2]) + "\n")
    unknown = tmp / "unknown_known_hosts"
    unknown.write_text("[10.9.9.9]:22 " + sshd.hostPublicKey + "\n")
    return f"""
[gateway]
admin = "tcp:0:interface=127.0.0.1"

[limits]
# Repeated failed logins from one source are sealed as one event per interval.
failed_login_interval = "1s"
{sshd.connection(options=WEB_OPTIONS)}

[[connections]]
name = "spoofed"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{wrong}"

[[connections]]
name = "unknown-host"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{unknown}"

[[connections]]
name = "fwd"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"
allow_port_forwarding = true
allow_agent_forwarding = true

[[connections]]
name = "down-1"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={_closedPort()}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"

[[connections]]
name = "silent-1"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={silentPort}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"
connect_timeout = "1s"

[[roles]]
name = "ops"
groups = ["ops"]
connections = ["web-1", "spoofed", "unknown-host", "fwd", "down-1", "silent-1"]

[[rules]]
name = "no-rm"
action = "deny"
commands = ["^rm "]
reason = "deleting files is not allowed here"

[[rules]]
name = "restart-needs-a-lead"
action = "approve"
commands = ["^echo restart"]
approvers = ["leads"]

[[rules]]
name = "sftp-remove-needs-a-lead"
action = "approve"
commands = ["^remove .*/approve-me"]
approvers = ["leads"]

[[rules]]
name = "no-etc-uploads"
action = "deny"
commands = ["^put /etc/"]
reason = "no uploads to /etc"

[masking]
detectors = ["credit_card"]
"""


class Env:
    """One gateway in front of the sshd, a user key bound to identity alice."""

    def __init__(self, sshd, gw, tmp: Path, userKey: Path):
        self.sshd, self.gw, self.tmp, self.userKey = sshd, gw, tmp, userKey
        self.opened: list[tuple[str, str]] = []
        self.knownHosts = tmp / "gateway_known_hosts"
        pub = (gw.stateDir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.knownHosts.write_text("".join(
            f"[127.0.0.1]:{gw.port(c)} {' '.join(pub)}\n" for c in ("web-1",)))

    def port(self, conn="web-1") -> int:
        return self.gw.port(conn)

    def sshArgs(self, conn="web-1", key=None, extra=(), logLevel="ERROR",
                batch=True) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.port(conn)),
                "-i", str(key or self.userKey), "-o", "IdentitiesOnly=yes",
                "-o", f"BatchMode={'yes' if batch else 'no'}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.knownHosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", f"LogLevel={os.environ.get('SG_SSH_LOGLEVEL', logLevel)}", *extra, f"{conn}@127.0.0.1"]

    def clientOptions(self, key=None) -> list[str]:
        """Options shared by scp and sftp (which take the port as -P)."""
        args = self.sshArgs(key=key)[5:-1]
        return ["-P", str(self.port()), "-F", "/dev/null"] + args

    def run(self, argv, input=None, timeout=60, environ=None):
        """Run a client off the reactor thread (the gateway runs on it)."""
        return threads.deferToThread(subprocess.run, argv, input=input, capture_output=True,
                                     timeout=timeout, env=environ)

    def ssh(self, *command, conn="web-1", input=None, **kw):
        return self.run(self.sshArgs(conn, **kw) + list(command), input=input)


LOGGED: list[str] = []


def _collectLog(event) -> None:
    from twisted.logger import formatEvent

    LOGGED.append(formatEvent(event) or "")
    if "log_failure" in event:
        LOGGED.append(event["log_failure"].getTraceback())


@pytest.fixture(scope="module")
def env(sshd, tmp_path_factory):
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher

    from sealgate.identity.sshkeys import SSHKeyStore
    from sealgate.testing import startGateway

    globalLogPublisher.addObserver(_collectLog)
    tmp = tmp_path_factory.mktemp("sshgw")
    # A backend that accepts and never answers (for connect_timeout), one per env: a module
    # that imports this fixture (test_ssh_exec_cast) gets its own and closes only that.
    silent = SilentServer()
    gw = pytest_twisted.blockon(defer.ensureDeferred(startGateway(_config(sshd, tmp, silent), tmp)))
    userKey = _keygen(tmp / "alice")
    SSHKeyStore.forStateDir(gw.stateDir).add(
        "alice", Path(str(userKey) + ".pub").read_text(), ["ops"])
    e = Env(sshd, gw, tmp, userKey)
    realOpen = gw.gateway.openSession

    def openSession(connection, *a, **kw):
        session = realOpen(connection, *a, **kw)
        e.opened.append((session.id, connection.name))
        return session

    gw.gateway.openSession = openSession
    yield e
    pytest_twisted.blockon(gw.stop())
    silent.close()
    globalLogPublisher.removeObserver(_collectLog)


@pytest_twisted.ensureDeferred
async def test_exec_returns_output_and_exit_status(env):
    before = _sessionIds(env)
    r = await env.ssh("echo hello; echo oops >&2; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == b"hello\n"
    assert r.stderr == b"oops\n"

    import io

    from sealgate.protocols.ssh.plugin import plugin

    sessionId = await _newClosedSession(env, before)
    out = io.BytesIO()
    plugin.replay(_frames(env, sessionId), out, None)
    assert out.getvalue() == b"$ echo hello; echo oops >&2; exit 7\nhello\noops\n[exit 7]\n"


async def _until(predicate, timeout=20.0, step=0.05):
    """Wait (without blocking the reactor) until C{predicate()} is truthy."""
    from twisted.internet import reactor, task

    waited = 0.0
    while True:
        value = predicate()
        if value:
            return value
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, step, lambda: None)
        waited += step


def _reader(env):
    from sealgate.recording.reader import StoreReader

    return StoreReader(env.gw.stateDir)


def _sessionIds(env) -> set:
    """Sessions the gateway opened so far (the store writes them a bit later)."""
    return {sid for sid, _conn in env.opened}


async def _newClosedSession(env, before: set, conn: str = "web-1") -> str:
    new = [sid for sid, c in env.opened if sid not in before and c == conn]
    assert len(new) == 1, new

    def closed():
        with _reader(env) as r:
            s = r.session(new[0])
        return s is not None and s["closed"] is not None

    await _until(closed)
    return new[0]


def _frames(env, sessionId):
    with _reader(env) as r:
        return list(r.frames(sessionId))


@pytest_twisted.ensureDeferred
async def test_stdin_is_piped_and_eof_ends_the_remote_command(env):
    blob = os.urandom(300_000)
    target = env.tmp / "piped.bin"
    r = await env.ssh(f"cat > {target}; echo stored", input=blob)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"stored\n"
    assert target.read_bytes() == blob
    r = await env.ssh("wc -c", input=b"x" * 12345)
    assert r.stdout.strip() == b"12345"


@pytest_twisted.ensureDeferred
async def test_denied_exec_gets_stderr_message_and_exit_status_1(env):
    victim = env.tmp / "keep-me"
    victim.write_text("still here")
    r = await env.ssh(f"rm -f {victim}")
    assert r.returncode == 1
    assert b"deleting files is not allowed here" in r.stderr
    assert b"no-rm" in r.stderr
    assert victim.read_text() == "still here"


@pytest_twisted.ensureDeferred
async def test_held_exec_tells_the_ticket_at_once_and_runs_on_approval(env):
    from sealgate.identity import Identity

    argv = env.sshArgs() + ["echo restart done"]

    def start():
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    proc = await threads.deferToThread(start)
    try:
        firstLine = await threads.deferToThread(proc.stderr.readline)
        tickets = env.gw.gateway.approvals.pending()
        assert len(tickets) == 1
        ticket = tickets[0]
        assert f"ticket {ticket.id} waits for leads".encode() in firstLine
        assert ticket.command == "echo restart done"
        assert proc.poll() is None  # nothing ran yet: it waits for the decision
        env.gw.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}), "ok")
        out, err = await threads.deferToThread(proc.communicate, None, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out == b"restart done\n"


@pytest_twisted.ensureDeferred
async def test_held_exec_denied_by_approver_exits_1(env):
    from sealgate.identity import Identity

    argv = env.sshArgs() + ["echo restart never"]
    proc = await threads.deferToThread(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        await threads.deferToThread(proc.stderr.readline)
        ticket = env.gw.gateway.approvals.pending()[0]
        env.gw.gateway.approvals.deny(ticket.id, Identity("bob", {"leads"}), "not now")
        out, err = await threads.deferToThread(proc.communicate, None, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert out == b""
    assert b"denied" in err


@pytest_twisted.ensureDeferred
async def test_unknown_backend_host_key_refuses_the_session(env):
    marker = env.tmp / "ran-on-unknown"
    r = await env.ssh(f"touch {marker}", conn="unknown-host", logLevel="INFO")
    assert r.returncode == 255
    assert b"open failed" in r.stderr
    assert b"presented a host key" in r.stderr and b"is not in" in r.stderr, r.stderr.decode()
    assert not marker.exists()


@pytest_twisted.ensureDeferred
async def test_down_backend_refuses_the_session_with_a_message(env):
    r = await env.ssh("echo never", conn="down-1", logLevel="INFO")
    assert r.returncode == 255 and b"never" not in r.stdout
    assert b"cannot reach the backend of down-1" in r.stderr, r.stderr.decode()


@pytest_twisted.ensureDeferred
async def test_a_backend_that_never_answers_refuses_the_session_after_connect_timeout(env):
    started = time.monotonic()
    r = await env.ssh("echo never", conn="silent-1", logLevel="INFO")
    assert r.returncode == 255 and b"never" not in r.stdout
    assert (b"the backend of silent-1 did not answer within 1 s (connect_timeout)" in r.stderr), \
        r.stderr.decode()
    assert time.monotonic() - started < 9  # the gateway's 1 s, not the client's ConnectTimeout=10


@pytest_twisted.ensureDeferred
async def test_changed_backend_host_key_refuses_the_session(env):
    marker = env.tmp / "ran-on-spoofed"
    r = await env.ssh(f"touch {marker}", conn="spoofed", logLevel="INFO")
    assert r.returncode == 255
    assert b"has CHANGED" in r.stderr, r.stderr.decode()
    assert not marker.exists()


@pytest_twisted.ensureDeferred
async def test_expired_and_unknown_keys_are_refused_and_audited(env):
    import time

    from sealgate.identity.sshkeys import SSHKeyStore

    old = _keygen(env.tmp / "expired")
    SSHKeyStore.forStateDir(env.gw.stateDir).add(
        "mallory", Path(str(old) + ".pub").read_text(), ["ops"], expires=time.time() - 1)
    stranger = _keygen(env.tmp / "stranger")
    for key in (old, stranger):
        r = await env.ssh("echo in", key=key)
        assert r.returncode == 255
        assert b"Permission denied" in r.stderr
        assert r.stdout == b""

    # The first failure from an address is sealed at once; the next ones in
    # the interval are folded into one event with a count, sealed at its end.
    env.gw.gateway.throttle.flush()

    def audited():
        with _reader(env) as r:
            fields = [e.get("fields") or {} for e in r.events(None)]
        # One event for the first failure from a source, then one aggregate per interval.
        reasons = [f.get("reason") for f in fields] + [x for f in fields for x in f.get("reasons") or ()]
        return reasons if "ssh key expired" in reasons and "unknown ssh key" in reasons else None

    await _until(audited)


def _interactive(argv, marker: str):
    """Drive a real terminal session through the gateway (runs in a thread)."""
    import pexpect

    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), timeout=20,
                          env={**os.environ, "TERM": "xterm"})
    try:
        child.expect(r"[$#] ")
        child.sendline("PS1='sg> '")
        child.expect("sg> ")
        child.sendline(f"echo {marker}-$((6*7))")
        child.expect(f"{marker}-42")
        child.expect("sg> ")
        child.setwinsize(40, 120)
        child.sendline("stty size")
        child.expect(r"(\d+) (\d+)\r\n")
        size = (int(child.match.group(1)), int(child.match.group(2)))
        child.expect("sg> ")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return size, child.exitstatus, child.before


@pytest_twisted.ensureDeferred
async def test_interactive_shell_echo_resize_exit_code_and_asciicast(env):
    import io

    from sealgate.protocols.ssh.asciicast import writeAsciicast

    before = _sessionIds(env)
    argv = env.sshArgs(extra=("-tt",))
    size, status, _ = await threads.deferToThread(_interactive, argv, "typed")
    assert size == (40, 120)
    assert status == 3

    sessionId = await _newClosedSession(env, before)
    out = io.StringIO()
    writeAsciicast(_frames(env, sessionId), out)
    cast = env.tmp / "session.cast"
    # The command an operator runs writes the same file.
    from sealgate.cli.main import main

    assert main(["export", sessionId, "--asciicast", str(cast),
                 "--state-dir", str(env.gw.stateDir)]) == 0
    assert cast.read_text() == out.getvalue()
    lines = out.getvalue().splitlines()
    header = json.loads(lines[0])
    events = [json.loads(line) for line in lines[1:]]
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    assert header["env"]["TERM"] == "xterm"
    assert abs(header["timestamp"] - time.time()) < 300
    output = "".join(e[2] for e in events if e[1] == "o")
    assert "typed-42" in output
    assert ["r", "120x40"] in [e[1:] for e in events]
    times = [e[0] for e in events]
    assert times == sorted(times)

    played = await env.run([str(Path(sys.executable).parent / "asciinema"), "cat", str(cast)])
    assert played.returncode == 0, played.stderr
    assert b"typed-42" in played.stdout

    with _reader(env) as r:
        audited = [(e.get("fields") or {}) for e in r.events(sessionId)
                   if e.get("event") == "shell_input"]
    assert "echo typed-$((6*7))" in [a.get("line") for a in audited]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: 100 MB as the issue asks; each way takes a few seconds here.
SCP_SIZE = 100 * 1000 * 1000


@pytest_twisted.ensureDeferred
async def test_scp_100MB_up_and_down_with_matching_sha256(env):
    src = env.tmp / "big.src"
    with open(src, "wb") as f:
        for _ in range(SCP_SIZE // 1_000_000):
            f.write(os.urandom(1_000_000))
    remote = env.tmp / "big.remote"
    back = env.tmp / "big.back"
    try:
        up = await env.run(["scp", "-q"] + env.clientOptions() + [str(src), f"web-1@127.0.0.1:{remote}"],
                           timeout=120)
        assert up.returncode == 0, up.stderr
        assert _sha256(remote) == _sha256(src)
        down = await env.run(["scp", "-q"] + env.clientOptions() + [f"web-1@127.0.0.1:{remote}", str(back)],
                             timeout=120)
        assert down.returncode == 0, down.stderr
        assert _sha256(back) == _sha256(src)
    finally:
        for p in (src, remote, back):
            p.unlink(missing_ok=True)


@pytest_twisted.ensureDeferred
async def test_rsync_over_ssh_copies_a_tree_both_ways_byte_exact(env):
    import shlex

    src, dest, back = env.tmp / "rs-src", env.tmp / "rs-dest", env.tmp / "rs-back"
    (src / "sub").mkdir(parents=True)
    files = {"a.bin": os.urandom(300_000), "sub/card.txt": b"4111 1111 1111 1111\n" * 100,
             "sub/empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    # rsync runs `ssh ... web-1@127.0.0.1 rsync --server ...`: an exec the
    # gateway relays byte-exact (masking must not touch file transfers).
    transport = " ".join(shlex.quote(a) for a in env.sshArgs()[:-1])
    up = await env.run(["rsync", "-a", "-e", transport, f"{src}/", f"web-1@127.0.0.1:{dest}/"])
    assert up.returncode == 0, up.stderr
    down = await env.run(["rsync", "-a", "-e", transport, f"web-1@127.0.0.1:{dest}/", f"{back}/"])
    assert down.returncode == 0, down.stderr
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
        assert (back / name).read_bytes() == data, name


@pytest_twisted.ensureDeferred
async def test_sftp_ls_put_get_and_denied_put(env):
    d = env.tmp / "sftpdir"
    d.mkdir()
    (d / "listed.txt").write_text("x")
    local = env.tmp / "local.txt"
    local.write_bytes(b"sftp payload\n" * 1000)
    batch = env.tmp / "batch"
    batch.write_text(f"ls {d}\nput {local} {d}/uploaded.txt\nget {d}/uploaded.txt {env.tmp}/fetched.txt\n")
    before = _sessionIds(env)
    r = await env.run(["sftp", "-b", str(batch)] + env.clientOptions() + ["web-1@127.0.0.1"])
    assert r.returncode == 0, r.stderr
    assert b"listed.txt" in r.stdout
    assert (d / "uploaded.txt").read_bytes() == local.read_bytes()
    assert (env.tmp / "fetched.txt").read_bytes() == local.read_bytes()
    sessionId = await _newClosedSession(env, before)
    with _reader(env) as reader:
        events = reader.events(sessionId)
    commands = [(e.get("fields") or {}).get("command") for e in events
                if e.get("event") == "command"]
    assert f"list {d}/" in commands and f"put {d}/uploaded.txt" in commands
    assert f"get {d}/uploaded.txt" in commands
    transfers = [(f["op"], f["path"], f["direction"], f["bytes"], f["complete"])
                 for e in events if e.get("event") == "sftp_transfer" for f in [e["fields"]]]
    size = local.stat().st_size
    assert transfers == [("put", f"{d}/uploaded.txt", "upload", size, True),
                         ("get", f"{d}/uploaded.txt", "download", size, True)]

    batch.write_text(f"put {local} /etc/sealgate-should-not-exist\n")
    r = await env.run(["sftp", "-b", str(batch)] + env.clientOptions() + ["web-1@127.0.0.1"])
    assert r.returncode != 0
    assert b"no uploads to /etc" in r.stderr
    assert not Path("/etc/sealgate-should-not-exist").exists()


@pytest_twisted.ensureDeferred
async def test_card_number_printed_by_cat_is_masked_in_output_and_recording(env):
    card = b"4111 1111 1111 1111"
    f = env.tmp / "customers.txt"
    f.write_bytes(b"ada " + card + b" paid\n" * 1)
    before = _sessionIds(env)
    r = await env.ssh(f"cat {f}")
    assert r.returncode == 0, r.stderr
    assert card not in r.stdout and b"4111" not in r.stdout
    assert r.stdout.startswith(b"ada ") and r.stdout.endswith(b" paid\n")
    assert b"****" in r.stdout
    sessionId = await _newClosedSession(env, before)
    recorded = b"".join(fr.data for fr in _frames(env, sessionId) if fr.direction == 1)
    assert b"ada " in recorded and b"4111" not in recorded


@pytest_twisted.ensureDeferred
async def test_card_number_split_across_packets_is_still_masked(env):
    # Two writes 10 ms apart arrive as two SSH packets; the gateway holds the
    # trailing digits back (up to mask_holdback, 100ms here) and masks the whole.
    r = await env.ssh("printf 'card 4111 1111'; sleep 0.01; printf ' 1111 1111 end\\n'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"card ") and r.stdout.endswith(b" end\n")
    assert b"4111" not in r.stdout


def _askpass(env, secret: str) -> dict:
    script = env.tmp / "askpass.sh"
    (env.tmp / "askpass.secret").write_text(secret)
    script.write_text(f"#!/bin/sh\ncat {env.tmp / 'askpass.secret'}\n")
    script.chmod(0o700)
    return {**os.environ, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0"}


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
async def test_api_key_logs_in_by_password_or_keyboard_interactive(env, method):
    apiKey = env.gw.createKey(f"ci-bot-{method}", ["ops"])
    opts = ("-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1")
    before = _sessionIds(env)
    r = await env.run(env.sshArgs(extra=opts, batch=False) + ["echo as-bot"],
                      environ=_askpass(env, apiKey), input=b"")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"as-bot\n"
    sessionId = await _newClosedSession(env, before)
    with _reader(env) as reader:
        opened = reader.session(sessionId)
    assert opened["info"]["identity"]["subject"] == f"ci-bot-{method}"
    assert opened["info"]["identity"]["method"] == "apikey"

    bad = await env.run(env.sshArgs(extra=opts, batch=False) + ["echo as-bot"],
                        environ=_askpass(env, "sg_wrong_key"), input=b"")
    assert bad.returncode == 255
    assert b"as-bot" not in bad.stdout


@pytest_twisted.ensureDeferred
async def test_env_allow_list(env):
    environ = {**os.environ, "SG_COLOR": "teal", "OTHER_VAR": "leak"}
    r = await env.run(env.sshArgs(extra=("-o", "SendEnv=SG_COLOR OTHER_VAR"))
                      + ['echo "[$SG_COLOR][$OTHER_VAR]"'], environ=environ)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"[teal][]\n"


@pytest_twisted.ensureDeferred
async def test_port_forwarding_only_where_enabled_and_recorded(env):
    target = ("-W", f"127.0.0.1:{env.sshd.port}")
    refused = await env.ssh(extra=target, logLevel="INFO", input=b"")
    assert refused.returncode == 255
    assert b"port forwarding is not enabled" in refused.stderr

    before = _sessionIds(env)
    r = await env.ssh(conn="fwd", extra=target, input=b"")
    assert r.stdout.startswith(b"SSH-2.0-OpenSSH"), r.stderr
    sessionId = await _newClosedSession(env, before, "fwd")
    recorded = b"".join(f.data for f in _frames(env, sessionId) if f.direction == 1)
    assert b"SSH-2.0-OpenSSH" in recorded


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_backend_instead_of_buffering(env):
    from sealgate.protocols.ssh.relay import WINDOW

    size = 64 * 1024 * 1024
    proc = await threads.deferToThread(
        subprocess.Popen, env.sshArgs() + [f"head -c {size} /dev/zero"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        factory = env.gw.service.ports["web-1"].factory
        # The client reads nothing: its window (2 MiB in OpenSSH) fills up,
        # then ours towards the backend stops being replenished.
        def paused():
            for user in factory.users:
                for chan in user.transport.service.channels.values():
                    if chan.peer is not None and chan.peer.inputPaused:
                        return chan
            return None

        chan = await _until(paused)
        held = len(chan.buf) + sum(len(d) for _, d in chan.extBuf)
        assert held <= WINDOW + 64 * 1024
        total = 0
        while True:
            block = await threads.deferToThread(proc.stdout.read, 1 << 20)
            if not block:
                break
            total += len(block)
        await threads.deferToThread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert total == size
    assert proc.returncode == 0


@pytest_twisted.ensureDeferred
async def test_no_backend_credential_in_recordings_audit_or_logs(env):
    secret = env.sshd.clientKey.read_text()
    pieces = [line for line in secret.splitlines() if len(line) > 20 and "PRIVATE" not in line]
    assert pieces
    # A session of its own: under xdist this test may be the module's first on its worker.
    before = _sessionIds(env)
    done = await env.ssh("echo sealgate")
    assert done.returncode == 0, done.stderr
    await _newClosedSession(env, before)
    with _reader(env) as r:
        sessions = r.sessions()
        assert sessions
        blobs = [json.dumps(r.events(None))]
        for s in sessions:
            blobs.append(json.dumps(s["info"]))
            blobs.append(json.dumps(r.events(s["id"])))
            blobs.append(b"".join(f.data or b"" for f in r.frames(s["id"])).decode("latin-1"))
    blobs.extend(LOGGED)
    text = "\n".join(blobs)
    assert "sealgate" in text
    for piece in pieces:
        assert piece not in text


@pytest_twisted.ensureDeferred
async def test_several_channels_share_one_connection_and_session(env):
    sock = env.tmp / "mux.sock"
    path = ("-o", f"ControlPath={sock}")
    mux = path + ("-o", "ControlMaster=no")
    before = _sessionIds(env)
    # An explicit background master: with ControlMaster=auto the first
    # client forks into the master while others race to use it, and OpenSSH
    # itself then sometimes ends a client with 255.
    master = await env.run(env.sshArgs(extra=path + ("-o", "ControlMaster=yes", "-N", "-f")))
    assert master.returncode == 0, master.stderr
    try:
        check = await env.run(env.sshArgs(extra=path + ("-O", "check")))
        assert check.returncode == 0, check.stderr
        zero = await env.ssh("echo zero", extra=mux)
        first, second = await defer.gatherResults([
            env.ssh("sleep 0.3; echo one", extra=mux),
            env.ssh("sleep 0.3; echo two >&2; exit 4", extra=mux)])
    finally:
        await env.run(env.sshArgs(extra=path + ("-O", "exit")))
    assert zero.stdout == b"zero\n"
    assert (first.stdout, first.returncode) == (b"one\n", 0), first.stderr
    assert (second.stderr, second.returncode) == (b"two\n", 4)
    sessionId = await _newClosedSession(env, before)  # exactly one session for all three
    channels = {f.channel // 4 for f in _frames(env, sessionId)}
    assert len(channels) == 3


@pytest_twisted.ensureDeferred
async def test_agent_forwarding_only_where_enabled(env):
    agent = await env.run(["ssh-agent", "-s"])
    out = agent.stdout.decode()
    sockPath = out.split("SSH_AUTH_SOCK=")[1].split(";")[0]
    pid = int(out.split("SSH_AGENT_PID=")[1].split(";")[0])
    environ = {**os.environ, "SSH_AUTH_SOCK": sockPath}
    try:
        added = await env.run(["ssh-add", str(env.userKey)], environ=environ)
        assert added.returncode == 0, added.stderr
        fp = subprocess.run(["ssh-keygen", "-lf", str(env.userKey) + ".pub"], capture_output=True,
                            text=True, check=True).stdout.split()[1].encode()
        allowed = await env.run(env.sshArgs(conn="fwd", extra=("-A",)) + ["ssh-add -l"],
                                environ=environ)
        assert fp in allowed.stdout, allowed.stderr
        refused = await env.run(env.sshArgs(extra=("-A",)) + ["ssh-add -l"], environ=environ)
        assert fp not in refused.stdout
        assert refused.returncode != 0
    finally:
        os.kill(pid, 15)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("command", [
    "printf 'no newline'; exit 0",
    "echo out; echo err >&2; exit 42",
    "kill -9 $$",
    "cat /nonexistent-file",
    "exit 255",
])
async def test_exit_codes_and_streams_match_a_direct_connection(env, command):
    direct = await env.run(env.sshd.sshArgs() + [command])
    via = await env.ssh(command)
    assert (via.returncode, via.stdout, via.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr)


@pytest_twisted.ensureDeferred
async def test_keepalives_are_answered(env):
    r = await env.ssh("sleep 2.5; echo alive", extra=("-o", "ServerAliveInterval=1",
                                                       "-o", "ServerAliveCountMax=1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"alive\n"


@pytest_twisted.ensureDeferred
async def test_backend_dying_ends_the_client_connection(env):
    # Kill this connection's sshd process: the backend leg drops mid-session.
    r = await env.run(env.sshArgs(extra=("-o", "ServerAliveInterval=0"))
                      + ["echo started; sleep 0.5; kill -9 $PPID; sleep 30"], timeout=25)
    assert r.stdout.startswith(b"started")
    assert r.returncode != 0
    factory = env.gw.service.ports["web-1"].factory
    await _until(lambda: not factory.users)


@pytest_twisted.ensureDeferred
async def test_held_sftp_operation_waits_for_approval(env):
    from sealgate.identity import Identity

    victim = env.tmp / "approve-me"
    victim.write_text("x")
    batch = env.tmp / "rm-batch"
    batch.write_text(f"rm {victim}\n")
    argv = ["sftp", "-b", str(batch)] + env.clientOptions() + ["web-1@127.0.0.1"]
    proc = await threads.deferToThread(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        line = await threads.deferToThread(proc.stderr.readline)
        ticket = env.gw.gateway.approvals.pending()[0]
        assert f"ticket {ticket.id} waits for leads".encode() in line
        assert ticket.kind == "sftp" and ticket.command == f"remove {victim}"
        assert victim.exists()
        env.gw.gateway.approvals.approve(ticket.id, Identity("bob", {"leads"}), "ok")
        out, err = await threads.deferToThread(proc.communicate, None, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert not victim.exists()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp", "scp-O"])
async def test_file_transfers_are_byte_exact_even_where_terminal_output_is_masked(env, legacy):
    data = b"".join(b"row %d 4111 1111 1111 1111\n" % i for i in range(2000)) + os.urandom(4096)
    remote = env.tmp / f"cards-{legacy}.bin"
    remote.write_bytes(data)
    local = env.tmp / f"cards-{legacy}.copy"
    flags = ["-O"] if legacy else []
    r = await env.run(["scp", "-q", *flags] + env.clientOptions()
                      + [f"web-1@127.0.0.1:{remote}", str(local)])
    assert r.returncode == 0, r.stderr
    assert local.read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_malformed_input_closes_only_that_session(env):
    import socket

    def garbage():
        with socket.create_connection(("127.0.0.1", env.port()), timeout=10) as s:
            s.recv(256)  # the gateway's version line
            s.sendall(b"SSH-2.0-fuzzer\r\n" + os.urandom(4096))
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass

    await threads.deferToThread(garbage)
    # A malformed SFTP stream (a packet length far beyond the limit) on the
    # sftp subsystem: that channel closes.
    bad = await env.run(env.sshArgs(extra=("-s",)) + ["sftp"],
                        input=b"\x7f\xff\xff\xff\x03" + b"\x00" * 64)
    assert bad.stdout == b"" and bad.returncode != 0
    ok = await env.ssh("echo still-serving")
    assert ok.stdout == b"still-serving\n"


@pytest_twisted.ensureDeferred
async def test_identity_without_a_role_is_refused_with_a_banner(env):
    from sealgate.identity.sshkeys import SSHKeyStore

    key = _keygen(env.tmp / "outsider")
    SSHKeyStore.forStateDir(env.gw.stateDir).add(
        "outsider", Path(str(key) + ".pub").read_text(), ["interns"])
    r = await env.ssh("echo in", key=key, logLevel="INFO")
    assert r.returncode == 255
    assert r.stdout == b""
    assert b"sealgate: " in r.stderr
    assert b"Permission denied" in r.stderr


def _typeSecret(argv, secret: str):
    import pexpect

    child = pexpect.spawn(argv[0], argv[1:], dimensions=(24, 80), timeout=20,
                          env={**os.environ, "TERM": "xterm"})
    try:
        child.expect(r"[$#] ")
        child.sendline("read -s -p 'Password: ' pw; echo; echo got-${#pw}")
        child.expect("Password: ")
        child.sendline(secret)
        child.expect(r"got-(\d+)")
        length = int(child.match.group(1))
        child.sendline("echo after-secret")
        child.expect("after-secret\r\n")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    return length


@pytest_twisted.ensureDeferred
async def test_input_at_a_password_prompt_is_neither_recorded_nor_audited(env):
    secret = "hunter2-" + os.urandom(4).hex()
    before = _sessionIds(env)
    length = await threads.deferToThread(_typeSecret, env.sshArgs(extra=("-tt",)), secret)
    assert length == len(secret)
    sessionId = await _newClosedSession(env, before)
    typed = b"".join(f.data for f in _frames(env, sessionId) if f.direction == 0)
    assert secret.encode() not in typed
    assert b"*" * len(secret) in typed
    assert b"echo after-secret" in typed
    with _reader(env) as r:
        lines = [(e.get("fields") or {}).get("line") for e in r.events(sessionId)
                 if e.get("event") == "shell_input"]
    assert "<hidden input>" in lines and "echo after-secret" in lines
    assert not any(secret in (line or "") for line in lines)


def test_the_gateway_logged_no_unhandled_error(env):
    # Last in this module: everything above ran on this gateway.
    problems = [line for line in LOGGED
                if "Unhandled" in line or "Traceback (most recent call last)" in line]
    assert problems == []


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_then_disconnects_ssh_clients_with_the_reason(sshd, tmp_path):
    from sealgate.identity.sshkeys import SSHKeyStore
    from sealgate.recording.reader import StoreReader
    from sealgate.testing import startGateway

    admin = 'admin = "tcp:0:interface=127.0.0.1"\n'
    config = _config(sshd, tmp_path).replace(admin, admin + 'drain_timeout = "1s"\n', 1)
    gw = await startGateway(config, tmp_path)
    key = _keygen(tmp_path / "bob")
    SSHKeyStore.forStateDir(gw.stateDir).add("bob", Path(str(key) + ".pub").read_text(), ["ops"])
    e = Env(sshd, gw, tmp_path, key)
    running = e.ssh("sleep 60")
    for _ in range(400):
        if gw.gateway.sessions:
            break
        await deferLater(0.025)
    assert gw.gateway.sessions, "the ssh session never opened"
    await gw.stop()
    r = await running
    assert r.returncode == 255
    assert b"the gateway is shutting down" in r.stderr, r.stderr.decode()
    with StoreReader(gw.stateDir) as reader:
        assert [s["state"] for s in reader.sessions()] == ["closed"]


def deferLater(seconds):
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)
