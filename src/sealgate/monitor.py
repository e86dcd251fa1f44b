"""A log monitor's judgement, pure: a newly served checkpoint against those seen before (fork, rollback, ok)."""

import base64
from collections.abc import Callable, Sequence

import attrs

from sealgate.recording.checkpoint import Checkpoint
from sealgate.recording.merkle import ProofError, verifyConsistency

OK, FORK, ROLLBACK = "OK", "FORK", "ROLLBACK"


@attrs.frozen
class Seen:
    """A checkpoint the monitor verified and kept: parsed, and its note as evidence."""

    checkpoint: Checkpoint
    note: str

    def asDict(self) -> dict:
        cp = self.checkpoint
        return {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": self.note}

    @classmethod
    def fromDict(cls, d: dict) -> "Seen":
        return cls(Checkpoint(d["origin"], int(d["size"]), base64.b64decode(d["root"])), d["note"])


@attrs.frozen
class Verdict:
    kind: str
    line: str
    #: The checkpoint seen earlier that the new one contradicts (None when OK).
    earlier: Seen | None = None


def judge(seen: Sequence[Seen], new: Seen, proof: Callable[[int, int], list[bytes]] | None) -> Verdict:
    """
    Compare C{new} with what was seen.  Each checkpoint kept was checked
    against the largest one before it, so the kept ones form one consistent
    chain and checking the new one against its neighbours covers every pair:
    the same size must have the same root, a smaller size than the largest
    seen is a rollback, and a larger one must be proved consistent with the
    largest seen (C{proof(first, second)} fetches the proof; None when the
    source serves no proofs, as a witness).
    """
    cp = new.checkpoint
    for s in seen:
        if s.checkpoint.size == cp.size and s.checkpoint.root != cp.root:
            return Verdict(FORK, f"FORK {cp.origin}: two roots for size {cp.size}", s)
    largest = max(seen, key=lambda s: s.checkpoint.size, default=None)
    if largest is None or largest.checkpoint.size == cp.size:
        return Verdict(OK, f"OK {cp.origin} at size {cp.size}")
    if cp.size < largest.checkpoint.size:
        return Verdict(ROLLBACK, f"ROLLBACK {cp.origin}: size {cp.size} served after size {largest.checkpoint.size}",
                       largest)
    if proof is None:
        return Verdict(OK, f"OK {cp.origin} at size {cp.size} (grew from {largest.checkpoint.size}; "
                           "the source serves no consistency proofs)")
    first = largest.checkpoint
    try:
        verifyConsistency(first.size, cp.size, first.root, cp.root, proof(first.size, cp.size))
    except ProofError as e:
        return Verdict(FORK, f"FORK {cp.origin}: size {cp.size} does not extend size {first.size} ({e})", largest)
    return Verdict(OK, f"OK {cp.origin} at size {cp.size}, consistent with size {first.size}")
