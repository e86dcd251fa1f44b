"""Full verification of a store: frame commitments, session trees, log leaves, checkpoints."""

import hashlib
import json
import sqlite3

import attrs

from sealgate.recording import _format as fmt
from sealgate.recording._engine import StoreError, dbPath, keyPath, lockPath, segmentPath
from sealgate.recording.checkpoint import NoteError, Verifier, isFingerprint, openCheckpoint
from sealgate.recording.merkle import CompactTree
from sealgate.recording.pin import pinPath
from sealgate.recording.walcheck import inUse, walDamage


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
    #: Which key the checkpoints were checked against, for the summary line.
    key: str = ""

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
    open: dict | None = None


def noteSessionLeaf(seals: dict, n: int, body: dict) -> None:
    """File a parsed log leaf under its session."""
    sid = body.get("session")
    if sid is None:
        return
    s = seals.setdefault(sid, SessionSeals(sid))
    kind = body["type"]
    if kind == "open":
        s.openLeaf, s.open = n, body
    elif kind in ("progress", "close"):
        s.seals.append((n, kind, body.get("size"), body.get("root")))
        if kind == "close":
            s.closeLeaf, s.close = n, body
    elif body.get("event") == "redaction":
        frame = (body.get("fields") or {}).get("frame")
        if isinstance(frame, int):
            s.redacted[frame] = n


@attrs.frozen
class Recomputed:
    """A session's tree and stream offsets as recomputed from its stored frames."""

    tree: CompactTree
    last: bytes
    offsets: tuple


def verifyFrames(report: Report, seals: SessionSeals, records) -> Recomputed:
    """
    Check one session's frame records against what the log sealed.

    @param records: iterable of C{(position, leaf, salt, payload)}.
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
    return Recomputed(tree, last, tuple(offsets))


class _Readable:
    """A session's stored records, ending early (a problem naming file and frame) where they do not parse."""

    def __init__(self, report: Report, sessionId: str, records):
        self.report, self.sessionId, self.records = report, sessionId, records
        self.broken = False

    def __iter__(self):
        try:
            yield from self.records
        except fmt.FormatError as e:
            self.broken = True
            self.report.problem(f"session {self.sessionId}: {e}")


def trustedKey(report: Report, reader, given: str | None = None) -> Verifier | None:
    """
    The key to check the store's checkpoints with, noting in C{report} where it came from.

    Without C{given}, the key pinned at the store's first start: a signing
    key that differs from it fails the verification, loudly.  C{given} is a
    verifier key or a fingerprint an auditor holds; the store's key must
    match it.

    @raise NoteError: C{given} is neither a fingerprint nor a verifier key.
    """
    own = pinned = None
    try:
        own = reader.verifier()
    except StoreError as e:
        report.problem(str(e))
    try:
        pinned = reader.pinnedVerifier()
    except StoreError as e:
        report.problem(str(e))
    key, pin = keyPath(reader.stateDir), pinPath(reader.stateDir)
    if given and isFingerprint(given):
        fp = given.strip()
        chosen = next((v for v in (own, pinned) if v is not None and v.fingerprint == fp), None)
        if chosen is None:
            report.problem(f"THE SIGNING KEY IS NOT THE ONE YOU HOLD: the store's key {key} is "
                           f"{own.fingerprint if own else 'unreadable'}, not {fp}; the checkpoints are checked "
                           "against the store's key only to name further damage")
            chosen = own
        elif own is not None and own != chosen:
            report.problem(f"THE SIGNING KEY CHANGED: {key} is {own.fingerprint}, but {fp} (which you hold) "
                           f"was pinned at the first start ({pin})")
        report.key = f"{fp} (the fingerprint you passed)"
        return chosen
    if given:
        chosen = Verifier.fromVkey(given)
        if own is not None and own != chosen:
            report.problem(f"THE SIGNING KEY IS NOT THE ONE YOU HOLD: the store's key {key} is "
                           f"{own.fingerprint}, the key you passed is {chosen.fingerprint}")
        report.key = f"{chosen.fingerprint} (the key you passed)"
        return chosen
    if pinned is None:
        if own is not None:
            report.warnings.append(f"no key is pinned in {pin} (a store from before pinning; the gateway pins "
                                   "it at its next start): the checkpoints are checked against the store's "
                                   "own key, which proves only that they agree; pass --key with a "
                                   "fingerprint you hold")
            report.key = f"{own.fingerprint} (the store's own, not pinned)"
        return own
    if own is not None and own != pinned:
        report.problem(f"THE SIGNING KEY CHANGED: {key} is {own.fingerprint}, but {pinned.fingerprint} was "
                       f"pinned at the first start ({pin}); the checkpoints are checked against the pinned key. "
                       "If the key was replaced on purpose, verify with --key and the new key's fingerprint "
                       "from a source you trust")
    report.key = f"{pinned.fingerprint} (pinned at the first start)"
    return pinned


def checkFiles(report: Report, reader) -> None:
    """The database file and its WAL as files: damage SQLite reports, and damage it skips."""
    path = dbPath(reader.stateDir)
    for row in reader.integrityProblems():
        report.problem(f"the database {path} fails SQLite's integrity check: {row}")
    definite, possible = walDamage(path.with_name(path.name + "-wal"))
    if inUse(lockPath(reader.stateDir)):
        report.warnings.extend(possible)  # a running writer may be appending as we read
    else:
        definite = definite + possible
    for text in definite:
        report.problem(text)


def verifyStore(reader, verifier: Verifier | None, sessionId: str | None = None, witnessed=(),
                report: Report | None = None) -> Report:
    """
    Check everything in the store (or one session and the whole log),
    naming each broken piece; everything is read as of one commit.

    @param verifier: the key to check checkpoints with (see L{trustedKey});
        None when no key could be read, which fails the verification.
    @param witnessed: checkpoint notes kept outside the store (by an auditor,
        a witness), as text or C{(label, text)}; the stored log must extend
        each, which catches a log cut back together with its later checkpoints.
    """
    report = Report() if report is None else report
    try:
        if getattr(reader, "embedded", True):  # a fleet database has no files of its own to check
            checkFiles(report, reader)
        with reader.snapshot():
            _verifyStore(report, reader, verifier, sessionId, witnessed)
    except sqlite3.DatabaseError as e:
        report.problem(f"the database {dbPath(reader.stateDir)} cannot be read: {e} (truncated or corrupted)")
    except StoreError as e:
        report.problem(str(e))
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        # An altered table can hold any value of any type: a verifier names
        # that as damage and stops there, it does not crash on it.
        report.problem(f"the database {dbPath(reader.stateDir)} holds a value verify cannot read "
                       f"({type(e).__name__}: {e}): a table was altered; checking stopped here")
    return report


def _verifyStore(report: Report, reader, verifier, sessionId, witnessed) -> None:
    origin = reader.origin
    if verifier is None:
        report.problem("no signing key to check the checkpoints with; pass --key with one you hold")
        verifier = Verifier(origin, b"\0" * 32)  # verifies nothing: every checkpoint is then named
    elif verifier.name != origin:
        report.problem(f"the key is for {verifier.name!r} but the store's origin is {origin!r}")
    checkpoints: dict = {}
    notes = [(size, note, f"checkpoint at log size {size}") for size, _t, note in reader.checkpoints()]
    for w in witnessed:
        label, note = w if isinstance(w, tuple) else ("the witnessed checkpoint", w)
        notes.append((None, note, label))
    for size, note, what in notes:
        try:
            cp = openCheckpoint(note, verifier, origin)
        except NoteError as e:
            report.problem(f"{what}: {e}")
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

    checkLogState(report, reader.meta(), tree, last)
    rows = reader.rawSessions()
    if sessionId is not None:
        if sessionId not in seals:
            report.problem(f"session {sessionId} is not in the log" +
                           (" (its log leaves were removed)" if sessionId in rows else ""))
            return
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
        stored = _Readable(report, sid, reader.records(sid))
        got = verifyFrames(report, s, stored)
        row = rows.get(sid)
        if row is None:
            report.problem(f"session {sid} is in the log but its session table row was removed")
        else:
            checkSessionRow(report, row, s, None if stored.broken else got)
    checkRedactionRows(report, reader.allRedactions(), seals, wanted)
    checkSegments(report, reader)


def checkLogState(report: Report, meta: dict, tree: CompactTree, last: bytes) -> None:
    """The meta table's cached log state, from which the writer appends, must be the stored log's."""
    if (meta.get("log_size", 0), meta.get("log_edge", b""), meta.get("log_last", fmt.NO_PREV)) != (
            tree.size, tree.pack(), last) and (tree.size or "log_size" in meta):
        report.problem("the meta table's log state (log_size, log_edge, log_last) differs from the stored "
                       "log: the table was altered, and the next start would append to another tree")


def _differs(report: Report, sid: str, column: str, what: str) -> None:
    report.problem(f"session {sid}: {column} in the sessions table differs from {what}: the row was altered")


def checkSessionRow(report: Report, row: dict, s: SessionSeals, got: Recomputed | None) -> None:
    """
    Every fact the sessions table holds about a session (what C{sessions
    list/show}, the console and the admin API print) against its sealed
    leaves, or against its stored frames where no leaf seals it yet
    (C{got}: None when they could not all be read, a problem already named).
    """
    sid = s.sessionId
    if s.open is not None:
        leaf = f"its sealed OPEN leaf (log leaf {s.openLeaf})"
        info = s.open.get("info") or {}
        try:
            stored = json.loads(row["info"] or "{}")
        except ValueError:
            stored = None
        for column, want in (("opened", s.open.get("time")), ("open_leaf", s.openLeaf),
                             ("protocol", fmt.sqlText(str(info.get("protocol", "")))),
                             ("info (identity, connection)", info)):
            have = stored if column.startswith("info") else row[column]
            if have != want:
                _differs(report, sid, column, leaf)
    if s.close is None:
        if row["closed"] is not None or row["close_leaf"] is not None or row["cutoff"]:
            _differs(report, sid, "closed", "its log, which seals no CLOSE for it (the session is open)")
        for column, want in () if got is None else (
                ("size", got.tree.size), ("bytes_from_client", got.offsets[0]), ("bytes_to_client", got.offsets[1])):
            if row[column] != want:
                _differs(report, sid, column, f"its stored frames ({want})")
    else:
        c = s.close
        leaf = f"its sealed CLOSE leaf (log leaf {s.closeLeaf})"
        sealedBytes = c.get("bytes") or {}
        for column, want in (("closed", c.get("time")), ("close_leaf", s.closeLeaf),
                             ("reason", fmt.sqlText(str(c.get("reason")))), ("cutoff", int(bool(c.get("cutoff")))),
                             ("size", c.get("size")), ("bytes_from_client", sealedBytes.get("from_client")),
                             ("bytes_to_client", sealedBytes.get("to_client"))):
            if row[column] != want:
                _differs(report, sid, column, leaf)
        root = row["root"]
        if (bytes(root).hex() if isinstance(root, (bytes, memoryview)) and root else root or None) != c.get("root"):
            _differs(report, sid, "root", leaf)
    if got is not None and (row["edge"], row["last"] or fmt.NO_PREV) != (got.tree.pack(), got.last):
        _differs(report, sid, "edge or last (the tree the writer appends to)", "its stored frames")


def checkRedactionRows(report: Report, rows, seals: dict, wanted) -> None:
    """A frame shown as redacted must be named by a sealed redaction event, and the other way round."""
    wanted = set(wanted)
    seen = set()
    for sid, seq, n in rows:
        if sid not in wanted:
            continue
        seen.add((sid, seq))
        s = seals.get(sid)
        if s is None or s.redacted.get(seq) != n:
            report.problem(f"session {sid} frame {seq}: the redactions table marks it redacted, but no sealed "
                           "redaction event names it (the row was forged or altered)")
    for sid in wanted:
        for seq, n in seals[sid].redacted.items():
            if (sid, seq) not in seen:
                report.problem(f"session {sid} frame {seq}: its sealed redaction (log leaf {n}) has no row in "
                               "the redactions table (the row was removed)")


def checkSegments(report: Report, reader) -> None:
    """Every segment holds at least its committed bytes (more is a batch in flight, cut at the next start)."""
    for seg, length in reader.segmentLengths():
        path = segmentPath(reader.stateDir, seg)
        try:
            size = path.stat().st_size
        except OSError:
            size = None
        if size is None and length:
            report.problem(f"segment file {path} is missing ({length} bytes were committed to it)")
        elif size is not None and size < length:
            report.problem(f"segment file {path} is cut short: {size} of its {length} committed bytes remain")
