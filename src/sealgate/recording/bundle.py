"""One-session export bundles and their offline verification (no store, no config needed)."""

import base64
import json
import struct
import time

from sealgate.recording import _format as fmt
from sealgate.recording._engine import StoreError
from sealgate.recording.checkpoint import NoteError, Verifier, openCheckpoint
from sealgate.recording.cosignature import quorumProblem
from sealgate.recording.cosigned import DB_NAME, cosignedCheckpoint
from sealgate.recording.merkle import Levels, ProofError, leafHash, verifyInclusion
from sealgate.recording.verify import Report, SessionSeals, noteSessionLeaf, verifyFrames

MAGIC = b"SEALGATE-BUNDLE 1\n"
_LEN = struct.Struct(">I")


def _b64(b) -> str:
    return base64.b64encode(bytes(b)).decode()


#: How long an export waits for witnesses to cosign a checkpoint covering the session's close.
WITNESS_WAIT = 10.0


def exportBundle(reader, sessionId: str, out, witnessWait: float = WITNESS_WAIT) -> dict:
    """
    See L{_exportBundle}; everything is read as of one commit.  When this
    node has witnesses, wait up to C{witnessWait} seconds for a cosigned
    checkpoint covering the session's CLOSE; past that the bundle carries
    the latest checkpoint and says it is not witnessed (C{witnessed: false}).
    """
    deadline = time.monotonic() + witnessWait
    while True:
        with reader.snapshot():
            if time.monotonic() >= deadline or not _awaitsWitnesses(reader, sessionId):
                return _exportBundle(reader, sessionId, out)
        time.sleep(0.2)  # a blocking export (CLI, admin thread): the witnesses answer within seconds


def _awaitsWitnesses(reader, sessionId: str) -> bool:
    """Whether this node collects cosignatures and none yet covers the session's (signed) CLOSE."""
    if not (reader.stateDir / DB_NAME).exists():
        return False
    latest = reader.latestCheckpoint()
    closes = [n for n, session, _k, leaf in reader.logLeaves()
              if session == sessionId and (latest is None or n < latest[0])
              and fmt.parseLogLeaf(bytes(leaf))["type"] == "close"]
    if not closes:
        return False  # still open (or its CLOSE unsigned): the export says so at once
    return cosignedCheckpoint(reader.stateDir, reader.checkpoints(), closes[-1] + 1) is None


def _exportBundle(reader, sessionId: str, out) -> dict:
    """
    Write one session as a bundle to the binary file C{out}: a JSON header
    (origin, public key, latest checkpoint, every log leaf of the session
    with its inclusion proof) followed by the frame records, redacted ones
    without salt and payload.

    @return: the header.
    """
    if reader.sessionRecord(sessionId) is None:  # its OPEN leaf, not the session table
        raise StoreError(f"no session {sessionId!r} in {reader.stateDir}")
    latest = reader.latestCheckpoint()
    if latest is None:
        raise StoreError("the store has no signed checkpoint yet")
    size, _t, note = latest
    hashes, mine = [], []
    for n, session, _kind, leaf in reader.logLeaves():
        if n >= size:
            break
        hashes.append(leafHash(bytes(leaf)))
        if session == sessionId:
            mine.append((n, bytes(leaf)))
    if len(hashes) != size:
        raise StoreError(f"the log holds {len(hashes)} leaves but its latest checkpoint covers {size}; "
                         "run `sealgate verify`")
    closes = [n for n, leaf in mine if fmt.parseLogLeaf(leaf)["type"] == "close"]
    if not closes:
        raise StoreError(f"session {sessionId} is not closed (or its CLOSE is not signed yet); "
                         "export it when it has ended")
    # The checkpoint witnesses cosigned that covers the CLOSE, when there is one (else the latest, unwitnessed).
    cosigned = cosignedCheckpoint(reader.stateDir, reader.checkpoints(), closes[-1] + 1)
    if cosigned is not None:
        size, note = cosigned
        hashes, mine = hashes[:size], [(n, leaf) for n, leaf in mine if n < size]
    levels = Levels(hashes)
    redacted = reader.redactions(sessionId)
    header = {
        "format": "sealgate-bundle/1",
        "origin": reader.origin,
        "vkey": reader.verifier().vkey(),
        "session": sessionId,
        "checkpoint": note,
        "leaves": [{"n": n, "leaf": _b64(leaf), "proof": [_b64(p) for p in levels.inclusionProof(n)]}
                   for n, leaf in mine],
        "redacted": sorted(redacted),
    }
    if (reader.stateDir / DB_NAME).exists():
        header["witnessed"] = cosigned is not None  # only a node with witnesses says
    blob = json.dumps(header, indent=1).encode()
    out.write(MAGIC + _LEN.pack(len(blob)) + blob)
    for position, leaf, salt, payload in reader.records(sessionId):
        if position in redacted:
            salt = payload = b""
        out.write(fmt.RECORD.pack(len(leaf), len(salt), len(payload)))
        out.write(leaf)
        out.write(salt)
        out.write(payload)
    return header


def readBundle(data: bytes) -> tuple:
    """Split a bundle into its header dict and the offset of its frame records."""
    if data[: len(MAGIC)] != MAGIC:
        raise fmt.FormatError("not a sealgate bundle (bad magic line)")
    at = len(MAGIC)
    if len(data) < at + _LEN.size:
        raise fmt.FormatError("bundle header is cut off")
    (n,) = _LEN.unpack_from(data, at)
    at += _LEN.size
    try:
        header = json.loads(bytes(data[at : at + n]))
    except ValueError:
        raise fmt.FormatError("bundle header is not JSON (altered or cut off)")
    if not isinstance(header, dict) or header.get("format") != "sealgate-bundle/1":
        raise fmt.FormatError("unknown bundle format")
    return header, at + n


def verifyBundle(data: bytes, trusted: Verifier | str | None = None, witnesses=(),
                 quorum: int = 0) -> tuple:
    """
    Check a bundle offline.

    @param trusted: the key the auditor trusts, or its fingerprint (the
        bundle's key must then have it); without it the bundle's own key is
        used and a warning says so.
    @return: C{(report, header)}.
    """
    report = Report()
    try:
        header, at = readBundle(data)
    except fmt.FormatError as e:
        report.problem(str(e))
        return report, None
    sid = header.get("session")
    origin = header.get("origin")
    if not isinstance(sid, str) or not 0 < len(sid.encode()) < 256 or not isinstance(origin, str):
        report.problem("the bundle header has no valid session id or origin")
        return report, None
    try:
        own = Verifier.fromVkey(str(header.get("vkey", "")))
    except NoteError as e:
        own = None
        report.problem(f"the bundle's key: {e}")
    if isinstance(trusted, str):
        fp = trusted.strip()
        if own is not None and own.fingerprint != fp:
            report.problem(f"the bundle's key is {own.fingerprint}, not the key you hold ({fp})")
            return report, header
        trusted = own
        report.key = f"{fp} (the fingerprint you passed)"
    elif trusted is None:
        trusted = own
        report.warnings.append("checked against the key inside the bundle; pass --key with the "
                               "gateway's published key to know who signed it")
    elif own is not None and own != trusted:
        report.warnings.append("the bundle names a different key than the one given; using the one given")
    if trusted is None:
        return report, header
    try:
        cp = openCheckpoint(str(header.get("checkpoint", "")), trusted, origin)
    except NoteError as e:
        report.problem(f"the checkpoint: {e}")
        return report, header
    report.checkpoint = report.logSize = cp.size
    problem = quorumProblem(str(header.get("checkpoint", "")), witnesses, quorum)
    if problem:
        report.problem(problem)
    seals: dict = {}
    for entry in header.get("leaves") or []:
        try:
            n = entry["n"]
            leaf = base64.b64decode(entry["leaf"], validate=True)
            proof = [base64.b64decode(p, validate=True) for p in entry["proof"]]
            verifyInclusion(n, cp.size, leafHash(leaf), proof, cp.root)
        except (KeyError, TypeError, ValueError) as e:
            report.problem(f"log leaf {entry.get('n') if isinstance(entry, dict) else '?'} is not in the "
                           f"signed log ({e if isinstance(e, ProofError) else 'malformed entry'}): altered")
            continue
        try:
            body = fmt.parseLogLeaf(leaf)
        except fmt.FormatError as e:
            report.problem(f"log leaf {n}: {e}")
            continue
        if body.get("session") != sid or body["n"] != n:
            report.problem(f"log leaf {n} belongs to another session or position")
            continue
        noteSessionLeaf(seals, n, body)
    s = seals.get(sid) or SessionSeals(sid)
    if s.openLeaf is None:
        report.problem(f"session {sid}: the bundle has no OPEN leaf proven in the log")
    if s.close is None:
        report.problem(f"session {sid}: the bundle has no CLOSE leaf proven in the log")
    report.sessions = 1

    def records():
        for position, (leaf, salt, payload) in enumerate(fmt.iterRecords(data, at)):
            yield position, leaf, salt, payload

    try:
        verifyFrames(report, s, records())
    except fmt.FormatError as e:
        report.problem(f"session {sid}: frame records are cut off or malformed ({e})")
    return report, header
