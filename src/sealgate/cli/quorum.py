"""`verify --witness NAME+VKEY --quorum K`: the witnesses an auditor trusts, and the checkpoints they cosigned."""

from sealgate.cli._common import CommandError
from sealgate.recording.checkpoint import NoteError
from sealgate.recording.cosignature import CosignatureVerifier, cosignatures, quorumProblem


def addWitnessOptions(parser) -> None:
    parser.add_argument("--witness", action="append", default=[], metavar="NAME+HASH+KEY",
                        help="a witness's cosignature key you trust (repeatable)")
    parser.add_argument("--quorum", type=int, default=None, metavar="K",
                        help="fail unless K of the --witness keys cosigned the checkpoint (default: all of them)")


def witnessPolicy(args) -> tuple[list[CosignatureVerifier], int]:
    witnesses = []
    for vkey in args.witness:
        try:
            witnesses.append(CosignatureVerifier.fromVkey(vkey))
        except NoteError as e:
            raise CommandError(f"--witness {vkey[:60]}: {e}")
    quorum = len(witnesses) if args.quorum is None else args.quorum
    if quorum > len(witnesses) or quorum < 0:
        raise CommandError(f"--quorum {quorum} needs at least {quorum} --witness keys (got {len(witnesses)})")
    return witnesses, quorum


def quorumCheckpoints(report, reader, kept, witnesses, quorum: int) -> list[tuple[str, str]]:
    """
    The checkpoints (collected by the gateway, or kept by the auditor) that
    a quorum cosigned, for verify to check the log extends each; names a
    problem when there is none.
    """
    from sealgate.recording.cosignature import addSignatures
    from sealgate.recording.cosigned import Cosignatures

    notes = []
    with Cosignatures(reader.stateDir, readOnly=True) as c:
        for size, _t, note in reader.checkpoints():
            lines = c.lines(size)
            if lines:
                notes.append((f"the checkpoint at size {size} the witnesses cosigned", addSignatures(note, lines)))
    notes += list(kept)
    met = [(label, note) for label, note in notes if quorumProblem(note, witnesses, quorum) is None]
    if not met:
        report.problem(f"no checkpoint of this log carries {quorum} valid cosignature(s) of the "
                       f"{len(witnesses)} witnesses given: it is not witnessed")
        return []
    best = max(met, key=lambda m: _size(m[1]))
    latest = reader.latestCheckpoint()
    if latest is not None and latest[0] > _size(best[1]):
        names = ", ".join(sorted(c.name for c in cosignatures(best[1], witnesses)))
        report.warnings.append(f"the log is witnessed up to size {_size(best[1])} (by {names}); its latest "
                               f"checkpoint at size {latest[0]} is not witnessed yet")
    return [(f"{label} (cosigned by a quorum)", note) for label, note in met]


def _size(note: str) -> int:
    try:
        return int(note.split("\n", 2)[1])
    except (IndexError, ValueError):
        return -1
