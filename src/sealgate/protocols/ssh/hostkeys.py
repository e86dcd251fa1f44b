"""SSH host keys: the gateway's own (created once in <state_dir>/ssh/) and the backend's known_hosts name."""

import os
import re
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.conch.ssh import keys

_KINDS: dict[str, Callable[[], ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey]] = {
    "ssh_host_ed25519_key": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ssh_host_ecdsa_key": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def loadHostKeys(stateDir: os.PathLike | str) -> dict[bytes, keys.Key]:
    """
    Load (creating on first start) the host keys, by SSH key type.

    Runs at service start-up, before the reactor serves anything, so the
    small synchronous file access blocks no session.
    """
    directory = Path(stateDir) / "ssh"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    found = {}
    for name, generate in _KINDS.items():
        path = directory / name
        if not path.exists():
            pem = generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption())
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            key = keys.Key.fromString(pem)
            (directory / (name + ".pub")).write_text(key.public().toString("openssh").decode() + "\n")
        key = keys.Key.fromFile(str(path))
        found[key.sshType()] = key
    return found


def knownHostsName(backend: str) -> bytes:
    """The name OpenSSH would look up in known_hosts for a client endpoint string."""
    parts = re.split(r"(?<!\\):", backend)
    kind, args = parts[0], parts[1:]
    host, port = None, 22
    positional = []
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            if k == "host":
                host = v
            elif k == "port":
                port = int(v)
        else:
            positional.append(a)
    if host is None and positional:
        host = positional[0]
        if len(positional) > 1:
            port = int(positional[1])
    if host is None or kind not in ("tcp", "tcp6", "tls"):
        raise ValueError(backend)
    host = host.replace("\\:", ":")
    return (host if port == 22 else f"[{host}]:{port}").encode()
