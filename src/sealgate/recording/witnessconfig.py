"""C{[[witnesses]]} and C{[gateway] witness_quorum}: which witnesses cosign this node's checkpoints, and how many must."""

import attrs

from sealgate.configtable import Table, Where
from sealgate.recording.checkpoint import NoteError
from sealgate.recording.cosignature import CosignatureVerifier


@attrs.frozen
class WitnessEndpoint:
    """One C{[[witnesses]]} entry: who cosigns, where its submission prefix is."""

    name: str
    url: str
    verifier: CosignatureVerifier
    timeout: float = 10.0
    backoff: float = 1.0
    max_backoff: float = 60.0


@attrs.frozen
class WitnessPolicy:
    witnesses: tuple[WitnessEndpoint, ...] = ()
    #: A checkpoint counts as published once this many witnesses cosigned it.
    quorum: int = 0


def parseWitnesses(top: Table, g: Table, path: str) -> WitnessPolicy:
    """C{[[witnesses]]} and C{[gateway] witness_quorum}; call before C{g.finish()}."""
    entries = top._get("witnesses", [], False)
    if not isinstance(entries, list):
        raise top.where.error("witnesses", "must be an array of tables", "write each as [[witnesses]]")
    out: list[WitnessEndpoint] = []
    for n, entry in enumerate(entries):
        t = Table(entry, Where(path, f"witnesses[{n}]"))
        vkey = t.str("vkey", required=True)
        try:
            verifier = CosignatureVerifier.fromVkey(vkey)
        except NoteError as e:
            raise t.where.error("vkey", str(e), "paste the vkey `sealgate witness --generate-key` printed")
        name = t.str("name", verifier.name)
        if name != verifier.name or any(w.name == name for w in out):
            raise t.where.error("name", f"{name!r} is a duplicate or not the name in its vkey ({verifier.name!r})",
                                "leave name out (it is the vkey's) and list each witness once")
        url = t.str("url", required=True).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise t.where.error("url", "is not an http(s) URL", 'write the submission prefix, e.g. "https://w.example/"')
        out.append(WitnessEndpoint(name, url, verifier, timeout=t.duration("timeout", 10.0),
                                   backoff=t.duration("backoff", 1.0), max_backoff=t.duration("max_backoff", 60.0)))
        t.finish()
    quorum = int(g.number("witness_quorum", 0, minimum=0))
    if quorum > len(out):
        raise g.where.error("witness_quorum", f"asks for {quorum} cosignatures but {len(out)} [[witnesses]] are configured",
                            "lower witness_quorum or add [[witnesses]]")
    return WitnessPolicy(tuple(out), quorum)
