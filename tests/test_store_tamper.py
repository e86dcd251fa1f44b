"""Tampering with each stored piece makes `sealgate verify` fail and name the piece."""

import shutil
import sqlite3

import pytest

from sealgate.recording import _format
from sealgate.recording._engine import Engine, SessionState, dbPath, segmentPath
from tests.test_store import cli

ORIGIN = "sealgate/tamper"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three closed sessions with frames and audit events, written by the real engine."""
    d = tmp_path_factory.mktemp("pristine")
    e = Engine(d, ORIGIN)
    e.open()
    t = 1000.0
    for sid in ("aaa", "bbb", "ccc"):
        s = SessionState(sid)
        items = [("open", s, {"identity": "alice", "protocol": "postgres"}, None, None, False)]
        for i in range(20):
            items.append((s, t + i, 0, i % 2, f"{sid} frame {i} ".encode() * (i + 1)))
        items.append(("event", s, "command", {"command": f"SELECT {sid}", "verdict": "allow"}, None, False))
        items.append(("close", s, "closed", {}, None, False))
        e.apply(items[:10], now=t)
        e.apply([], now=t + 1.5)  # a PROGRESS leaf seals the first chunk
        e.apply(items[10:], now=t + 2)
        t += 100
    e.close()
    code, out = cli("verify", "--state-dir", str(d))
    assert code == 0, out
    return d


@pytest.fixture
def store(pristine, tmp_path):
    d = tmp_path / "store"
    shutil.copytree(pristine, d)
    return d


def _db(d):
    return sqlite3.connect(dbPath(d), isolation_level=None)


def _records(d, sid):
    """File positions of each frame record of a session: (segment, leaf, salt, payload) offsets."""
    out = []
    for _first, _count, seg, offset, length in _db(d).execute(
        "SELECT first, count, segment, offset, length FROM chunks WHERE session = ? ORDER BY first", (sid,)
    ):
        buf = segmentPath(d, seg).read_bytes()[offset : offset + length]
        at = 0
        while at < len(buf):
            ll, sl, pl = _format.RECORD.unpack_from(buf, at)
            leaf = offset + at + _format.RECORD.size
            out.append((seg, leaf, leaf + ll, leaf + ll + sl, bytes(buf[at : at + _format.RECORD.size + ll + sl + pl])))
            at += _format.RECORD.size + ll + sl + pl
    return out


def _flipFile(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def _rewriteFrames(d, sid, change):
    """Replace a session's frame records with C{change(records)}, as one new chunk."""
    recs = [r[4] for r in _records(d, sid)]
    data = b"".join(change(recs))
    path = segmentPath(d, 1)
    offset = path.stat().st_size
    with open(path, "ab") as f:
        f.write(data)
    db = _db(d)
    db.execute("DELETE FROM chunks WHERE session = ?", (sid,))
    db.execute("INSERT INTO chunks VALUES (?, 0, ?, 1, ?, ?)", (sid, len(recs), offset, len(data)))
    db.execute("UPDATE segments SET length = ? WHERE id = 1", (offset + len(data),))


def _logLeaf(d, predicate):
    rows = _db(d).execute("SELECT n, leaf FROM log ORDER BY n").fetchall()
    return next((n, bytes(leaf)) for n, leaf in rows if predicate(_format.parseLogLeaf(leaf)))


def tamperPayload(d):
    seg, _leaf, _salt, payload, _ = _records(d, "aaa")[5]
    _flipFile(segmentPath(d, seg), payload + 2)
    return "session aaa frame 5: its payload does not match its sealed commitment"


def tamperSalt(d):
    seg, _leaf, salt, _payload, _ = _records(d, "aaa")[7]
    _flipFile(segmentPath(d, seg), salt)
    return "session aaa frame 7: its payload does not match its sealed commitment (payload or salt altered)"


def tamperLeaf(d):
    seg, leaf, *_ = _records(d, "aaa")[5]
    _flipFile(segmentPath(d, seg), leaf + _format.PREFIX.size + 3 + 12)  # a bit of the frame's time
    return "session aaa frame 5: its leaf was altered"


def tamperLastLeaf(d):
    seg, leaf, *_ = _records(d, "ccc")[19]
    _flipFile(segmentPath(d, seg), leaf + _format.PREFIX.size + 3 + 12)
    return "session ccc: frames 0..19 do not match the root sealed in log leaf"


def tamperSessionRoot(d):
    _db(d).execute("UPDATE sessions SET root = zeroblob(32) WHERE id = 'bbb'")
    return "session bbb: root in the sessions table differs from its sealed CLOSE leaf"


def tamperLogLeaf(d):
    n, leaf = _logLeaf(d, lambda b: b["type"] == "event" and b["session"] == "aaa")
    _db(d).execute("UPDATE log SET leaf = ? WHERE n = ?", (leaf.replace(b"SELECT aaa", b"SELECT bbb"), n))
    return f"log leaf {n} was altered or removed"


def tamperCheckpoint(d):
    db = _db(d)
    size, note = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
    lines = note.split("\n")
    lines[2] = ("B" if lines[2][0] != "B" else "C") + lines[2][1:]
    db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", ("\n".join(lines), size))
    return f"checkpoint at log size {size}: the signature by {ORIGIN} does not verify"


def tamperSignature(d):
    db = _db(d)
    size, note = db.execute("SELECT size, note FROM checkpoints ORDER BY size LIMIT 1 OFFSET 1").fetchone()
    i = len(note) - 10
    note = note[:i] + ("A" if note[i] != "A" else "B") + note[i + 1 :]
    db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note, size))
    return f"checkpoint at log size {size}: the signature by {ORIGIN} does not verify"


def deleteFrame(d):
    _rewriteFrames(d, "aaa", lambda recs: recs[:5] + recs[6:])
    return "session aaa frame 5: the leaf says it is frame 6 (frames removed, inserted or reordered)"


def reorderFrames(d):
    _rewriteFrames(d, "bbb", lambda recs: recs[:3] + [recs[4], recs[3]] + recs[5:])
    return "session bbb frame 3: the leaf says it is frame 4"


def truncateSession(d):
    _rewriteFrames(d, "ccc", lambda recs: recs[:15])
    return "session ccc: log leaf"  # ...seals 20 frames but only 15 are stored


def deleteSessionFrames(d):
    db = _db(d)
    db.execute("DELETE FROM chunks WHERE session = 'bbb'")
    db.execute("DELETE FROM sessions WHERE id = 'bbb'")
    return "session bbb is in the log but its session table row was removed"


def deleteWholeSession(d):
    db = _db(d)
    db.execute("DELETE FROM chunks WHERE session = 'bbb'")
    db.execute("DELETE FROM sessions WHERE id = 'bbb'")
    first = db.execute("SELECT min(n) FROM log WHERE session = 'bbb'").fetchone()[0]
    db.execute("DELETE FROM log WHERE session = 'bbb'")
    return f"log leaves {first}.."


def truncateLog(d):
    db = _db(d)
    size = db.execute("SELECT count(*) FROM log").fetchone()[0]
    db.execute("DELETE FROM log WHERE n >= ?", (size - 2,))
    return f"the log is truncated: a signed checkpoint covers {size} leaves but only {size - 2} are stored"


def reorderLog(d):
    db = _db(d)
    a, b = db.execute("SELECT leaf FROM log WHERE n IN (3, 4) ORDER BY n").fetchall()
    db.execute("UPDATE log SET leaf = ? WHERE n = 3", b)
    db.execute("UPDATE log SET leaf = ? WHERE n = 4", a)
    return "log leaf at position 3 says it is leaf 4 (log leaves removed or reordered)"


def appendAfterClose(d):
    _rewriteFrames(d, "aaa", lambda recs: recs + [recs[-1]])
    return "session aaa frame 20: the leaf says it is frame 19"


@pytest.mark.parametrize("tamper", [
    tamperPayload, tamperSalt, tamperLeaf, tamperLastLeaf, tamperSessionRoot, tamperLogLeaf,
    tamperCheckpoint, tamperSignature, deleteFrame, reorderFrames, truncateSession,
    deleteSessionFrames, deleteWholeSession, truncateLog, reorderLog, appendAfterClose,
], ids=lambda f: f.__name__)
def test_verify_fails_and_names_the_tampered_piece(store, tamper):
    expected = tamper(store)
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1, out
    assert expected in out, out
    assert "verification FAILED" in out


def test_verify_of_one_session_checks_the_whole_log_too(store):
    tamperLogLeaf(store)
    code, out = cli("verify", "--session", "ccc", "--state-dir", str(store))
    assert code == 1 and "was altered or removed" in out, out
    code, out = cli("verify", "--session", "nope", "--state-dir", str(store))
    assert code == 1 and "session nope is not in the log" in out


def test_a_key_other_than_the_nodes_is_not_accepted(store):
    from sealgate.recording.checkpoint import Signer

    other = Signer.generate(ORIGIN).verifier.vkey()
    code, out = cli("verify", "--key", other, "--state-dir", str(store))
    assert code == 1 and "carries no signature by the key" in out


def _cutBack(d):
    """Cut the log back to the CLOSE of bbb with every trace fixed up: consistent on its own."""
    import hashlib

    from sealgate.recording.merkle import CompactTree

    db = _db(d)
    keep = db.execute("SELECT max(n) + 1 FROM log WHERE session = 'bbb'").fetchone()[0]
    db.execute("DELETE FROM log WHERE n >= ?", (keep,))
    db.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
    db.execute("DELETE FROM chunks WHERE session = 'ccc'")
    db.execute("DELETE FROM sessions WHERE id = 'ccc'")
    tree, last = CompactTree(), _format.NO_PREV
    for (leaf,) in db.execute("SELECT leaf FROM log ORDER BY n"):
        last = hashlib.sha256(b"\x00" + leaf).digest()
        tree.appendHash(last)
    db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                   [(tree.size, "log_size"), (tree.pack(), "log_edge"), (last, "log_last")])
    return keep


def test_a_checkpoint_the_auditor_kept_catches_a_log_cut_back_with_its_checkpoints(store, tmp_path):
    code, note = cli("checkpoint", "--state-dir", str(store))
    size = int(note.split("\n")[1])
    saved = tmp_path / "checkpoint.txt"
    saved.write_text(note)
    keep = _cutBack(store)
    code, out = cli("verify", "--checkpoint-dir", "none", "--state-dir", str(store))
    assert code == 0, out  # why an auditor keeps checkpoints
    code, out = cli("verify", "--checkpoint", str(saved), "--state-dir", str(store))
    assert code == 1 and f"a signed checkpoint covers {size} leaves but only {keep} are stored" in out, out


def test_verify_keeps_the_newest_checkpoint_and_catches_a_later_cut_back(store, tmp_path):
    kept = tmp_path / "kept"
    code, out = cli("verify", "--checkpoint-dir", str(kept), "--state-dir", str(store))
    assert code == 0, out
    (saved,) = kept.iterdir()
    size = int(saved.read_text().split("\n")[1])
    keep = _cutBack(store)
    code, out = cli("verify", "--checkpoint-dir", str(kept), "--state-dir", str(store))
    assert code == 1, out
    assert f"a signed checkpoint covers {size} leaves but only {keep} are stored" in out, out
    assert int(saved.read_text().split("\n")[1]) == size  # a failed run does not replace it
