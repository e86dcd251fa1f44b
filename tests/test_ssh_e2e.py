"""SSH through the gateway with the real OpenSSH client against a real sshd."""

import os
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

GATEWAY_USER_GROUPS = ["ops"]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "user@test",
                    "-f", str(path)], check=True)
    return path


def _config(sshd, tmp: Path) -> str:
    wrong = tmp / "wrong_known_hosts"
    other = _keygen(tmp / "other_host")
    wrong.write_text(f"[{sshd.host}]:{sshd.port} "
                     + " ".join(Path(str(other) + ".pub").read_text().split()[:2]) + "\n")
    unknown = tmp / "unknown_known_hosts"
    unknown.write_text("[10.9.9.9]:22 " + sshd.hostPublicKey + "\n")
    return f"""
[gateway]
admin = "tcp:0:interface=127.0.0.1"

[[connections]]
name = "web-1"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"
env_allow = ["LANG", "SG_*"]

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

[[roles]]
name = "ops"
groups = ["ops"]
connections = ["web-1", "spoofed", "unknown-host"]

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
        self.knownHosts = tmp / "gateway_known_hosts"
        pub = (gw.stateDir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.knownHosts.write_text("".join(
            f"[127.0.0.1]:{gw.port(c)} {' '.join(pub)}\n" for c in ("web-1",)))

    def port(self, conn="web-1") -> int:
        return self.gw.port(conn)

    def sshArgs(self, conn="web-1", key=None, extra=(), logLevel="ERROR") -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.port(conn)),
                "-i", str(key or self.userKey), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.knownHosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", f"LogLevel={os.environ.get('SG_SSH_LOGLEVEL', logLevel)}", *extra, f"{conn}@127.0.0.1"]

    def run(self, argv, input=None, timeout=60):
        """Run a client off the reactor thread (the gateway runs on it)."""
        return threads.deferToThread(subprocess.run, argv, input=input, capture_output=True,
                                     timeout=timeout)

    def ssh(self, *command, conn="web-1", input=None, **kw):
        return self.run(self.sshArgs(conn, **kw) + list(command), input=input)


def _importable(plugin) -> bool:
    try:
        plugin._load()
    except ImportError:
        return False
    return True


if os.environ.get("SG_DEBUG"):
    import sys

    from twisted.logger import globalLogPublisher, textFileLogObserver

    globalLogPublisher.addObserver(textFileLogObserver(sys.stderr))


@pytest.fixture(scope="module")
def env(sshd, tmp_path_factory):
    from twisted.internet import defer

    import sealgate.plugins
    from sealgate.identity.sshkeys import SSHKeyStore
    from sealgate.testing import startGateway

    tmp = tmp_path_factory.mktemp("sshgw")
    with pytest.MonkeyPatch.context() as mp:
        # TEMPORARY until every built-in plugin module has landed.
        realP, realI = sealgate.plugins.protocolPlugins, sealgate.plugins.interceptorPlugins
        mp.setattr(sealgate.plugins, "protocolPlugins",
                   lambda: {k: v for k, v in realP().items() if _importable(v)})
        mp.setattr(sealgate.plugins, "interceptorPlugins",
                   lambda: [p for p in realI() if _importable(p)])
        gw = pytest_twisted.blockon(defer.ensureDeferred(startGateway(_config(sshd, tmp), tmp)))
    userKey = _keygen(tmp / "alice")
    SSHKeyStore.forStateDir(gw.stateDir).add(
        "alice", Path(str(userKey) + ".pub").read_text(), ["ops"])
    yield Env(sshd, gw, tmp, userKey)
    pytest_twisted.blockon(gw.stop())


@pytest_twisted.ensureDeferred
async def test_exec_returns_output_and_exit_status(env):
    r = await env.ssh("echo hello; echo oops >&2; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout == b"hello\n"
    assert r.stderr == b"oops\n"


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
    with _reader(env) as r:
        return {s["id"] for s in r.sessions()}


async def _newClosedSession(env, before: set) -> str:
    def find():
        with _reader(env) as r:
            new = [s for s in r.sessions() if s["id"] not in before and s["closed"] is not None]
        return new[0]["id"] if new else None

    return await _until(find)


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

    def audited():
        with _reader(env) as r:
            reasons = [(e.get("fields") or {}).get("reason") for e in r.events(None)]
        return reasons if "ssh key expired" in reasons and "unknown ssh key" in reasons else None

    await _until(audited)
