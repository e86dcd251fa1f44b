"""The signing key's pin: its public half as first used, so a key swapped later is named, not trusted."""

import os
from pathlib import Path

from sealgate.recording.checkpoint import NoteError, Signer, Verifier


class PinError(ValueError):
    """The pin file is unreadable or malformed; the message names it."""


def pinPath(stateDir) -> Path:
    return Path(stateDir) / "signing.key.pin"


def pinKey(stateDir, signer: Signer) -> bool:
    """
    Pin C{signer}'s verifier key and fingerprint unless a pin exists (it
    is never rewritten: a changed key must be accepted by an auditor,
    with C{verify --key}).  @return: whether it pinned now.
    """
    v = signer.verifier
    try:
        fd = os.open(pinPath(stateDir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write("# the checkpoint signing key of this store, pinned at its first start; "
                f"`sealgate verify` compares the key with it\n{v.vkey()}\n{v.fingerprint}\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def readPin(stateDir) -> Verifier | None:
    """The pinned L{Verifier}, or None for a store from before pinning. @raise PinError."""
    path = pinPath(stateDir)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PinError(f"the pinned key file {path} cannot be read: {e.strerror}")
    except UnicodeDecodeError:
        lines = []
    try:
        if len(lines) != 2:
            raise NoteError("it should hold a verifier key and its fingerprint, one per line")
        v = Verifier.fromVkey(lines[0])
        if v.fingerprint != lines[1].strip():
            raise NoteError("its fingerprint does not match its verifier key")
    except NoteError as e:
        raise PinError(f"the pinned key file {path} is malformed (truncated or altered): {e}")
    return v


def keyNotice(stateDir, verifier: Verifier, pinnedNow: bool) -> tuple:
    """C{(log level, text)} naming the key that signs, for the gateway's log at every start."""
    try:
        pinned = readPin(stateDir)
    except PinError as e:
        return "critical", f"Checkpoints are signed by key {verifier.fingerprint}, but {e}"
    where = pinPath(stateDir)
    if pinned is not None and pinned != verifier:
        return "critical", (f"The checkpoint signing key changed: it is {verifier.fingerprint}, but "
                            f"{pinned.fingerprint} was pinned at the first start ({where}); "
                            "`sealgate verify` fails until an auditor accepts the new key with --key")
    return "info", (f"Checkpoints are signed by key {verifier.fingerprint} "
                    f"({'pinned now' if pinnedNow else 'as pinned'} in {where})")
