"""The witness's add-checkpoint decision (tlog-witness), pure: request and stored state in, status out."""

from collections.abc import Mapping, Sequence

import attrs

from sealgate.recording.checkpoint import Checkpoint, NoteError, Verifier, openNote
from sealgate.recording.cosignature import SIZE_CONTENT_TYPE, AddCheckpoint, RequestError, sizeBody
from sealgate.recording.merkle import ProofError, verifyConsistency

OK, BAD_REQUEST, FORBIDDEN, NOT_FOUND, CONFLICT, UNPROCESSABLE = 200, 400, 403, 404, 409, 422


@attrs.frozen
class Latest:
    """The latest checkpoint a witness cosigned for one origin."""

    size: int
    root: bytes


@attrs.frozen
class Outcome:
    """What the witness answers; C{checkpoint} is set only when it is to be stored and cosigned."""

    status: int
    reason: str
    body: bytes = b""
    contentType: str = "text/plain; charset=utf-8"
    checkpoint: Checkpoint | None = None
    #: The origin is known and the log's signature verified: a refusal is evidence worth keeping.
    evidence: bool = False


def _refuse(status: int, reason: str, evidence: bool = False) -> Outcome:
    return Outcome(status, reason, (reason + "\n").encode(), evidence=evidence)


def decide(request: AddCheckpoint, logs: Mapping[str, Sequence[Verifier]], latest: Latest | None) -> Outcome:
    """
    Check one add-checkpoint request in the order tlog-witness lists its
    rules: origin known (404), a trusted log signature (403), old size not
    past the new one (400), old size equal to what was cosigned (409 with
    the witness's size), the consistency proof (422), equal sizes with equal
    roots (409).
    """
    try:
        cp = request.checkpoint()
    except RequestError as e:
        return _refuse(BAD_REQUEST, str(e))
    keys = logs.get(cp.origin)
    if keys is None:
        return _refuse(NOT_FOUND, f"unknown log origin {cp.origin!r}")
    if not any(_signedBy(request.note, k) for k in keys):
        return _refuse(FORBIDDEN, "no signature on the checkpoint verifies against a key trusted for its origin")
    if request.oldSize > cp.size:
        return _refuse(BAD_REQUEST, f"old size {request.oldSize} is past the checkpoint size {cp.size}")
    have = latest.size if latest is not None else 0
    if request.oldSize != have:
        return Outcome(CONFLICT, f"old size {request.oldSize} is not the cosigned size {have}",
                       sizeBody(have), SIZE_CONTENT_TYPE, evidence=True)
    if latest is not None and have == cp.size:
        if cp.root != latest.root:
            return Outcome(CONFLICT, f"a different root for the cosigned size {have} (a fork)",
                           sizeBody(have), SIZE_CONTENT_TYPE, evidence=True)
        if request.proof:
            return _refuse(UNPROCESSABLE, "a consistency proof between equal sizes must be empty", evidence=True)
    elif have == 0:
        if request.proof:
            return _refuse(UNPROCESSABLE, "a consistency proof from size 0 must be empty", evidence=True)
    else:
        assert latest is not None  # have > 0
        try:
            verifyConsistency(have, cp.size, latest.root, cp.root, request.proof)
        except ProofError as e:
            return _refuse(UNPROCESSABLE, f"the consistency proof does not verify: {e}", evidence=True)
    return Outcome(OK, "cosigned", checkpoint=cp)


def _signedBy(note: str, key: Verifier) -> bool:
    try:
        openNote(note, key)
    except NoteError:
        return False
    return True
