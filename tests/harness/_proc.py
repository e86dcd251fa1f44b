"""Helpers shared by the backends: free loopback ports, running as another user, cleanup."""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def freePort(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out and we released; callers retry if it is taken again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def isRoot() -> bool:
    return os.geteuid() == 0


def asUser(user: str | None, argv: list[str]) -> list[str]:
    """Prefix argv so it runs as C{user} (only when we are root and it is someone else)."""
    if user is None or not isRoot() or user == "root":
        return argv
    return ["runuser", "-u", user, "--"] + argv


def tempDir(prefix: str, owner: str | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None and isRoot():
        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def removeTree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run(argv: list[str], what: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run a setup step; on failure raise with its output so the test log says why."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {' '.join(argv)}\n"
                           f"{result.stdout}\n{result.stderr}")
    return result


class SilentServer:
    """
    A loopback port that accepts connections (the kernel completes the
    handshake) and never says a word: a hung backend, for connect timeouts.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind((host, 0))
        self.socket.listen(64)  # never accepted: connects queue in the backlog
        self.host, self.port = self.socket.getsockname()

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
