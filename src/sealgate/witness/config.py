"""witness.toml: the witness's name and key, where it listens and keeps state, and the logs it witnesses."""

import os
import tomllib
from pathlib import Path

import attrs
from twisted.internet import endpoints

from sealgate.configtable import ConfigError, Table, Where, resolveSecret
from sealgate.recording.checkpoint import NoteError, Verifier
from sealgate.recording.cosignature import Cosigner


@attrs.frozen
class WitnessConfig:
    cosigner: Cosigner = attrs.field(repr=False)
    listen: str
    state_dir: Path
    #: origin -> the log keys trusted for it
    logs: dict[str, tuple[Verifier, ...]]
    max_body: int


def loadWitnessConfig(path: str | os.PathLike) -> WitnessConfig:
    """Parse and check witness.toml; every error names the file, the key and the fix."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{name}: cannot read the witness config: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: not valid TOML: {e}")
    top = Table(raw, Where(name, ""))
    w = Table(top._get("witness", None, True), Where(name, "witness"))
    skey = resolveSecret(w, "key", required=True)
    try:
        cosigner = Cosigner.fromSkey(skey or "")
    except NoteError as e:
        raise w.where.error("key_file", f"is not a witness signing key ({e})",
                            "generate one with: sealgate witness --generate-key NAME --key-file PATH")
    if w.str("name", cosigner.name) != cosigner.name:
        raise w.where.error("name", f"does not match the key's name {cosigner.name!r}",
                            "remove name or set it to the name the key was generated with")
    listen = w.str("listen", "tcp:port=8780:interface=127.0.0.1")
    try:
        endpoints.serverFromString(None, listen)
    except Exception as e:
        raise w.where.error("listen", f"cannot parse endpoint {listen!r} ({e})",
                            'write e.g. "tcp:port=8780:interface=127.0.0.1"')
    stateDir = Path(w.str("state_dir", "var/sealgate-witness"))
    if not stateDir.is_absolute():
        stateDir = Path(path).resolve().parent / stateDir
    maxBody = w.size("max_body", 64 * 1024, minimum=1024)
    w.finish()
    logs: dict[str, tuple[Verifier, ...]] = {}
    entries = top._get("logs", [], False)
    if not isinstance(entries, list) or not entries:
        raise top.where.error("logs", "names no log to witness",
                              'add [[logs]] with origin = "..." and vkey = "NAME+HASH+KEY"')
    for i, entry in enumerate(entries):
        t = Table(entry, Where(name, f"logs[{i}]"))
        origin = t.str("origin", required=True)
        keys = []
        for vkey in t.strings("vkey", required=True):
            try:
                keys.append(Verifier.fromVkey(vkey))
            except NoteError as e:
                raise t.where.error("vkey", f"{e}", "paste the log's key from `sealgate keys show`")
        if origin in logs:
            raise t.where.error("origin", f"{origin!r} is listed twice", "list each log once, with all its keys")
        logs[origin] = tuple(keys)
        t.finish()
    top.finish()
    return WitnessConfig(cosigner, listen, stateDir, logs, maxBody)
