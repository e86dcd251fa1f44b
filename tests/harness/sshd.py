"""A real OpenSSH sshd on 127.0.0.1 with its own host key and config in a temp dir."""

import atexit
import getpass
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.harness._proc import freePort, isRoot, removeTree, run, tempDir

SSHD = os.environ.get("SEALGATE_SSHD", "/usr/sbin/sshd")
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


class SSHServer:
    """
    One sshd (C{-D -e}, so it stays our child and logs to our pipe).

    Public-key auth for a client key generated per run; password and
    keyboard-interactive auth off unless C{passwordAuthentication=True}
    (then the login user's system password applies).  The login user is
    the current user (root when running as root).  sftp is enabled.

    @ivar clientKey: path of the client's private key (ed25519, no passphrase).
    @ivar knownHostsLine: C{[127.0.0.1]:PORT ssh-ed25519 AAAA...}.
    """

    host = "127.0.0.1"

    def __init__(self, passwordAuthentication: bool = False, extraConfig: str = ""):
        self.user = getpass.getuser()
        self.passwordAuthentication = passwordAuthentication
        self.extraConfig = extraConfig
        self.dir: Path | None = None
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def clientKey(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def clientPublicKey(self) -> str:
        return (self.dir / "client_ed25519.pub").read_text().strip()

    @property
    def hostKey(self) -> Path:
        return self.dir / "host_ed25519"

    @property
    def hostPublicKey(self) -> str:
        """C{ssh-ed25519 AAAA...} (no comment)."""
        return " ".join((self.dir / "host_ed25519.pub").read_text().split()[:2])

    @property
    def knownHostsLine(self) -> str:
        return f"[{self.host}]:{self.port} {self.hostPublicKey}"

    @property
    def knownHosts(self) -> Path:
        """A known_hosts file holding only this server's key."""
        return self.dir / "known_hosts"

    @property
    def authorizedKeys(self) -> Path:
        """Add more public keys here (one per line) to let other clients in."""
        return self.dir / "authorized_keys"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "SSHServer":
        if not os.access(SSHD, os.X_OK):
            raise RuntimeError(f"{SSHD} not found: install openssh-server "
                               "(apt-get install -y openssh-server)")
        self.dir = tempDir("sealgate-sshd-")
        atexit.register(self.stop)
        os.chmod(self.dir, 0o700)
        for name in ("host_ed25519", "client_ed25519"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"sealgate-test-{name}",
                 "-f", str(self.dir / name)], "ssh-keygen")
        self.authorizedKeys.write_text(self.clientPublicKey + "\n")
        os.chmod(self.authorizedKeys, 0o600)
        if isRoot():
            # sshd insists on its privilege-separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for attempt in range(5):
            self.port = freePort()
            self._writeConfig()
            if self._spawn():
                break
            if attempt == 4:
                raise RuntimeError("sshd did not start:\n" + "\n".join(self.log[-30:]))
        self.knownHosts.write_text(self.knownHostsLine + "\n")
        return self

    def _writeConfig(self) -> None:
        d = self.dir
        pw = "yes" if self.passwordAuthentication else "no"
        (d / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress {self.host}
HostKey {self.hostKey}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {self.authorizedKeys}
PubkeyAuthentication yes
PasswordAuthentication {pw}
KbdInteractiveAuthentication no
PermitRootLogin {"yes" if self.passwordAuthentication else "prohibit-password"}
PermitEmptyPasswords no
UsePAM no
StrictModes no
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
AcceptEnv LANG LC_* SG_*
Subsystem sftp {SFTP_SERVER}
LogLevel VERBOSE
MaxStartups 100
MaxSessions 50
{self.extraConfig}
""")

    def _spawn(self) -> bool:
        """Start sshd; True once it listens, False if the port was taken."""
        self.log = []
        argv = [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")]
        run(argv[:1] + ["-t"] + argv[3:], "sshd -t (config check)")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, bufsize=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stderr], [], [], 0.5)
            if ready:
                line = self.process.stderr.readline()
                if not line:
                    break
                self.log.append(line.rstrip())
                if "Server listening on" in line:
                    self._drainInBackground()
                    return True
                if "Address already in use" in line or "Cannot bind any address" in line:
                    break
            elif self.process.poll() is not None:
                break
        self._terminate()
        return False

    def _drainInBackground(self) -> None:
        # sshd -e logs every login to stderr; keep reading so it never blocks on a full pipe.
        import threading

        def drain(stream, sink):
            for line in stream:
                sink.append(line.rstrip())

        threading.Thread(target=drain, args=(self.process.stderr, self.log), daemon=True).start()

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # Per-connection sshd processes outlive a terminated listener; end them too.
            for child in _children(process.pid):
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self) -> None:
        if self.dir is None:
            return
        atexit.unregister(self.stop)
        self._terminate()
        removeTree(self.dir)
        self.dir = None

    @property
    def endpoint(self) -> str:
        """The Twisted client endpoint string for a connection's C{backend}."""
        return f"tcp:host={self.host}:port={self.port}"

    def connection(self, name: str = "web-1", options: str = "") -> str:
        """
        A gateway config's C{[[connections]]} table for an ssh connection to
        this server, listening on a port the OS picks, logging in as its
        user with its client key; C{options} adds lines to its options.
        """
        return f"""
[[connections]]
name = "{name}"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{self.endpoint}"
[connections.options]
username = "{self.user}"
private_key_file = "{self.clientKey}"
known_hosts = "{self.knownHosts}"
{options}"""

    # -- clients -------------------------------------------------------------

    def sshArgs(self, key: str | os.PathLike | None = None, port: int | None = None,
                user: str | None = None, knownHosts: str | os.PathLike | None = None) -> list[str]:
        """
        argv for the real ssh client up to and including the destination;
        append a command.  Host keys are checked against C{knownHosts}.
        """
        return ["ssh", "-F", "/dev/null", "-p", str(port or self.port),
                "-i", str(key or self.clientKey), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={knownHosts or self.knownHosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", f"{user or self.user}@{self.host}"]

    def ssh(self, *command: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a command on the server with the real ssh client."""
        return subprocess.run(self.sshArgs(**kw) + list(command), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _children(pid: int) -> list[int]:
    """Pids whose parent is C{pid} (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found
