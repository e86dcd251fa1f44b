"""Full verification of a store: frame commitments, session trees, log leaves, checkpoints."""

import hashlib

import attrs

from sealgate.recording import _format as fmt
from sealgate.recording.checkpoint import NoteError, Verifier, openCheckpoint
from sealgate.recording.merkle import CompactTree


@attrs.define
class Report:
    """What a verification found: problems (fatal), warnings, and counts."""

    problems: list = attrs.field(factory=list)
    warnings: list = attrs.field(factory=list)
    sessions: int = 0
    frames: int = 0
    redacted: int = 0
    bytes: int = 0
    logSize: int = 0
    checkpoint: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)


@attrs.define
class SessionSeals:
    """What the log says about one session: where it opened, its sealed roots, redactions, close."""

    sessionId: str
    openLeaf: int | None = None
    seals: list = attrs.field(factory=list)  # (log index, type, size, root hex)
    redacted: dict = attrs.field(factory=dict)  # frame seq -> log index of the redaction event
    closeLeaf: int | None = None
    close: dict | None = None


def noteSessionLeaf(seals: dict, n: int, body: dict) -> None:
    """File a parsed log leaf under its session."""
    sid = body.get("session")
    if sid is None:
        return
    s = seals.setdefault(sid, SessionSeals(sid))
    kind = body["type"]
    if kind == "open":
        s.openLeaf = n
    elif kind in ("progress", "close"):
        s.seals.append((n, kind, body.get("size"), body.get("root")))
        if kind == "close":
            s.closeLeaf, s.close = n, body
    elif body.get("event") == "redaction":
        frame = (body.get("fields") or {}).get("frame")
        if isinstance(frame, int):
            s.redacted[frame] = n


def verifyFrames(report: Report, seals: SessionSeals, records) -> tuple:
    """
    Check one session's frame records against what the log sealed.

    @param records: iterable of C{(position, leaf, salt, payload)}.
    @return: C{(frame count, root)} as recomputed.
    """
    sid = seals.sessionId
    where = f"session {sid}"
    bySize: dict = {}
    for n, kind, size, root in seals.seals:
        if isinstance(size, int):
            bySize.setdefault(size, []).append((n, kind, root))
    tree = CompactTree()
    last = fmt.NO_PREV
    offsets = [0, 0]
    prefix = fmt.framePrefix(sid)
    fieldsAt = len(prefix)
    unpack = fmt.FRAME_FIELDS.unpack_from
    leafLen = fieldsAt + fmt.FRAME_FIELDS.size + 64
    sha = hashlib.sha256
    commitment = fmt.commitment
    shift = 0  # after a removal or insertion, report the first displaced frame only
    for position, leaf, salt, payload in records:
        what = f"{where} frame {position}"
        if len(leaf) != leafLen or leaf[:fieldsAt] != prefix:
            report.problem(f"{what}: its leaf is malformed or names another session (altered or moved)")
        else:
            seq, _t, _ch, direction, offset, length = unpack(leaf, fieldsAt)
            prev = leaf[leafLen - 64 : leafLen - 32]
            if seq - position != shift:
                shift = seq - position
                if shift:
                    report.problem(
                        f"{what}: the leaf says it is frame {seq} (frames removed, inserted or reordered)")
            elif prev != last:
                report.problem(f"{where} frame {position - 1}: its leaf was altered or a frame is missing "
                               f"(frame {position} records a different hash before it)")
            elif direction not in (0, 1) or offset != offsets[direction]:
                report.problem(f"{what}: stream offset {offset} where {offsets[direction & 1]} was expected "
                               "(frame removed or leaf altered)")
            if position in seals.redacted:
                report.redacted += 1
            elif length != len(payload) or commitment(salt, payload) != leaf[leafLen - 32 :]:
                report.problem(f"{what}: its payload does not match its sealed commitment (payload or salt altered)")
            if direction in (0, 1):
                offsets[direction] = offset + length  # resync: one removal is one problem
        h = sha(b"\x00" + leaf).digest()
        tree.appendHash(h)
        last = h
        report.bytes += len(payload)
        sealed = bySize.get(tree.size)
        if sealed:
            root = tree.root().hex()
            for n, kind, want in sealed:
                if want != root:
                    report.problem(f"{where}: frames 0..{tree.size - 1} do not match the root sealed in "
                                   f"log leaf {n} ({kind}): a frame in that range was altered")
    report.frames += tree.size
    for n, kind, size, _root in seals.seals:
        if not isinstance(size, int) or size > tree.size:
            report.problem(f"{where}: log leaf {n} ({kind}) seals {size} frames but only {tree.size} are "
                           "stored (frames removed or the session truncated)")
    sealedMax = max((size for _, _, size, _ in seals.seals if isinstance(size, int)), default=0)
    if tree.size > sealedMax:
        if seals.close is not None:
            report.problem(f"{where}: {tree.size - sealedMax} frames are stored after its CLOSE "
                           f"(log leaf {seals.closeLeaf}) sealed {sealedMax} (frames added later)")
        else:
            report.warnings.append(f"{where}: the last {tree.size - sealedMax} frames are not sealed yet "
                                   "(session open)")
    for seq in seals.redacted:
        if not 0 <= seq < tree.size:
            report.problem(f"{where}: a redaction names frame {seq}, which is not stored")
    return tree.size, tree.root()


def verifyStore(reader, verifier: Verifier, sessionId: str | None = None, witnessed=()) -> Report:
    """See L{_verifyStore}; everything is read as of one commit."""
    with reader.snapshot():
        return _verifyStore(reader, verifier, sessionId, witnessed)


def _verifyStore(reader, verifier: Verifier, sessionId, witnessed) -> Report:
    """
    Check everything in the store (or one session and the whole log), naming each broken piece.

    @param witnessed: checkpoint notes kept outside the store (by an auditor,
        a witness); the stored log must extend each of them, which catches
        a log cut back together with its later checkpoints.
    """
    report = Report()
    origin = reader.origin
    if verifier.name != origin:
        report.problem(f"the key is for {verifier.name!r} but the store's origin is {origin!r}")
    checkpoints: dict = {}
    notes = [(size, note, "checkpoint at log size") for size, _t, note in reader.checkpoints()]
    notes += [(None, note, "the witnessed checkpoint") for note in witnessed]
    for size, note, what in notes:
        try:
            cp = openCheckpoint(note, verifier, origin)
        except NoteError as e:
            report.problem(f"{what} {size if size is not None else ''}: {e}".replace("  ", " "))
            continue
        if size is not None and cp.size != size:
            report.problem(f"checkpoint stored at size {size} says size {cp.size} (its row was altered)")
        if checkpoints.get(cp.size, cp.root) != cp.root:
            report.problem(f"two validly signed checkpoints disagree about the log at size {cp.size}: "
                           "the log was rewritten (a split view)")
        checkpoints[cp.size] = cp.root
    if not checkpoints:
        report.problem("no valid signed checkpoint in the store")
    report.checkpoint = max(checkpoints, default=0)

    tree = CompactTree()
    last = fmt.NO_PREV
    seals: dict = {}
    sha = hashlib.sha256
    expected = 0
    shift = 0
    mismatched = []
    for n, session, kind, leaf in reader.logLeaves():
        position = tree.size
        if n != expected:
            report.problem(f"log leaves {expected}..{n - 1} are missing (removed from the log)")
        expected = n + 1
        try:
            body = fmt.parseLogLeaf(leaf)
        except fmt.FormatError as e:
            report.problem(f"log leaf {position}: {e} (altered)")
            body = None
        if body is not None:
            if body["n"] - position != shift:
                shift = body["n"] - position
                if shift:
                    report.problem(f"log leaf at position {position} says it is leaf {body['n']} "
                                   "(log leaves removed or reordered)")
            elif body["prev"] != last.hex():
                report.problem(f"log leaf {position - 1} was altered or removed "
                               f"(log leaf {position} records a different hash before it)")
            elif body.get("session") != session or body["type"] != kind:
                report.problem(f"log leaf {position}: its index columns (session, type) were altered")
            noteSessionLeaf(seals, position, body)
        h = sha(b"\x00" + bytes(leaf)).digest()
        tree.appendHash(h)
        last = h
        want = checkpoints.get(tree.size)
        if want is not None and want != tree.root():
            mismatched.append(tree.size)
    if mismatched:
        later = f" (and the {len(mismatched) - 1} later ones)" if len(mismatched) > 1 else ""
        report.problem(f"the log does not match the signed checkpoint at size {mismatched[0]}{later}: "
                       "a log leaf before it was altered, removed or reordered")
    report.logSize = tree.size
    if report.checkpoint > tree.size:
        report.problem(f"the log is truncated: a signed checkpoint covers {report.checkpoint} leaves but "
                       f"only {tree.size} are stored")
    if tree.size > report.checkpoint:
        report.warnings.append(f"log leaves {report.checkpoint}..{tree.size - 1} are not covered by a "
                               "signed checkpoint yet")

    rows = {r["id"]: r for r in reader.sessions()}
    if sessionId is not None:
        if sessionId not in seals:
            report.problem(f"session {sessionId} is not in the log" +
                           (" (its log leaves were removed)" if sessionId in rows else ""))
            return report
        wanted = [sessionId]
    else:
        wanted = list(seals)
        for sid in rows:
            if sid not in seals:
                report.problem(f"session {sid} is in the session table but not in the log (its log leaves "
                               "were removed or the row was forged)")
    for sid in wanted:
        s = seals[sid]
        report.sessions += 1
        if s.openLeaf is None:
            report.problem(f"session {sid}: its OPEN leaf is missing from the log")
        size, root = verifyFrames(report, s, reader.records(sid))
        row = rows.get(sid)
        if row is None:
            report.problem(f"session {sid} is in the log but its session table row was removed")
        elif s.close is not None and (row["root"] != s.close.get("root") or row["size"] != s.close.get("size")):
            report.problem(f"session {sid}: the session table's root or size differs from its sealed "
                           f"CLOSE (log leaf {s.closeLeaf}); the row was altered")
    return report
