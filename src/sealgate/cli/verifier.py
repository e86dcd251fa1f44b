"""The checkpoints `sealgate verify` keeps on the verifier's side, so a later run catches a log cut back."""

import os
import re
from pathlib import Path

from sealgate.recording.checkpoint import Checkpoint, NoteError, Verifier

ENV = "SEALGATE_CHECKPOINT_DIR"


def checkpointDir(args) -> Path | None:
    """The verifier's own directory of saved checkpoints, or None when it keeps none."""
    chosen = getattr(args, "checkpoint_dir", None) or os.environ.get(ENV)
    if chosen:
        return None if chosen == "none" else Path(chosen)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sealgate" / "checkpoints"


def _path(args, origin: str, key: Verifier) -> Path | None:
    d = checkpointDir(args)
    if d is None:
        return None
    # One file per log and key: another store, or a store re-keyed, never meets this one's note.
    return d / f"{re.sub(r'[^A-Za-z0-9._-]', '_', origin)}+{key.keyId.hex()}.checkpoint"


def savedCheckpoint(args, key: Verifier | None):
    """C{(label, note)} of the checkpoint an earlier verify of this log kept, or None."""
    if key is None:
        return None
    path = _path(args, key.name, key)  # the key's name is the log's origin (verify checks it)
    if path is None:
        return None
    try:
        return (f"the checkpoint an earlier verify kept in {path}", path.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    except OSError as e:
        return (f"the checkpoint an earlier verify kept in {path}", f"unreadable: {e.strerror}")


def _size(note: str) -> int:
    try:
        return Checkpoint.parse(note.rpartition("\n\n")[0] + "\n").size
    except NoteError:
        return -1


def saveCheckpoint(args, reader, key: Verifier | None) -> None:
    """Keep the newest stored checkpoint (just verified) unless the kept one is as new."""
    latest = reader.latestCheckpoint()
    path = _path(args, reader.origin, key) if key is not None else None
    if latest is None or path is None:
        return
    try:
        if path.exists() and _size(path.read_text(errors="replace")) >= latest[0]:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(latest[2])
        tmp.replace(path)
    except OSError:
        return  # keeping it is a convenience; the verdict above stands
