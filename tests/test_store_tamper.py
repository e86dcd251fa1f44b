"""Tampering with each stored piece makes `sealgate verify` fail and name the piece."""

import shutil
import sqlite3

import pytest
import pytest_twisted

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


#: Each fact the sessions table holds (what `sessions list/show`, the console
#: and the admin API print), edited, and the leaf verify says it contradicts.
_ROW_EDITS = {
    "opened": ("opened = opened + 1", "opened", "OPEN"),
    "identity": ("""info = json_set(info, '$.identity', 'mallory')""", "info (identity, connection)", "OPEN"),
    "connection": ("""info = json_set(info, '$.connection', 'other')""", "info (identity, connection)", "OPEN"),
    "protocol": ("protocol = 'ssh'", "protocol", "OPEN"),
    "open_leaf": ("open_leaf = open_leaf + 1", "open_leaf", "OPEN"),
    "closed": ("closed = closed - 50", "closed", "CLOSE"),
    "state open": ("closed = NULL", "closed", "CLOSE"),
    "state cut off": ("cutoff = 1", "cutoff", "CLOSE"),
    "reason": ("reason = 'gateway shutdown'", "reason", "CLOSE"),
    "close_leaf": ("close_leaf = close_leaf - 1", "close_leaf", "CLOSE"),
    "frames": ("size = size - 1", "size", "CLOSE"),
    "bytes to client": ("bytes_to_client = bytes_to_client - 100", "bytes_to_client", "CLOSE"),
    "bytes from client": ("bytes_from_client = 0", "bytes_from_client", "CLOSE"),
}


@pytest.mark.parametrize("edit", list(_ROW_EDITS.values()), ids=list(_ROW_EDITS))
def test_an_edited_sessions_row_is_named_with_the_leaf_it_contradicts(store, edit):
    sql, column, leaf = edit
    _db(store).execute(f"UPDATE sessions SET {sql} WHERE id = 'bbb'")
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1, out
    assert f"FAILED: session bbb: {column} in the sessions table differs from its sealed {leaf} leaf" in out, out
    assert "session aaa" not in out and "session ccc" not in out


@pytest.fixture
def openStore(tmp_path):
    """A store with a session still open: its row is checked against the frames stored so far."""
    e = Engine(tmp_path / "open", ORIGIN)
    e.open()
    s = SessionState("live")
    e.apply([("open", s, {"identity": "alice"}, None, None, False)]
            + [(s, 10.0 + i, 0, i % 2, b"x" * (i + 1)) for i in range(8)], now=10.0)
    e.apply([(s, 20.0, 0, 1, b"unsealed yet")], now=10.5)
    e.close()
    assert cli("verify", "--state-dir", str(tmp_path / "open"))[0] == 0
    return tmp_path / "open"


@pytest.mark.parametrize("sql, column", [
    ("bytes_to_client = bytes_to_client + 1", "bytes_to_client in the sessions table differs from its stored frames"),
    ("size = 3", "size in the sessions table differs from its stored frames"),
    ("closed = opened + 1", "closed in the sessions table differs from its log, which seals no CLOSE"),
    ("edge = x''", "edge or last"),
])
def test_an_edited_row_of_an_open_session_is_named(openStore, sql, column):
    _db(openStore).execute(f"UPDATE sessions SET {sql} WHERE id = 'live'")
    code, out = cli("verify", "--state-dir", str(openStore))
    assert code == 1 and f"FAILED: session live: {column}" in out, out


def test_a_forged_or_removed_redaction_row_is_named(store):
    db = _db(store)
    db.execute("INSERT INTO redactions VALUES ('aaa', 3, 1.0, 'hidden', 2)")
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1 and "session aaa frame 3: the redactions table marks it redacted, but no sealed" in out, out
    db.execute("DELETE FROM redactions")
    assert cli("redact", "bbb", "--frame", "2", "--reason", "typed a password", "--state-dir", str(store))[0] == 0
    assert cli("verify", "--state-dir", str(store))[0] == 0
    db.execute("DELETE FROM redactions")
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1 and "session bbb frame 2: its sealed redaction (log leaf" in out, out


def test_an_edited_log_state_in_the_meta_table_is_named(store):
    _db(store).execute("UPDATE meta SET value = value - 1 WHERE key = 'log_size'")
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1 and "the meta table's log state (log_size, log_edge, log_last) differs" in out, out


# -- the signing key's pin -----------------------------------------------------------


def _rekey(d, pin: bool):
    """What an intruder with the state directory but not the old key can do: a new key, every note re-signed."""
    from sealgate.recording.checkpoint import Checkpoint, Signer, signCheckpoint
    from sealgate.recording.pin import pinKey, pinPath

    new = Signer.generate(ORIGIN)
    (d / "signing.key").write_text(new.skey() + "\n")
    db = _db(d)
    for size, note in db.execute("SELECT size, note FROM checkpoints").fetchall():
        cp = Checkpoint.parse(note.rpartition("\n\n")[0] + "\n")
        db.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (signCheckpoint(new, cp), size))
    if pin:
        pinPath(d).unlink()
        pinKey(d, new)
    return new.verifier


def _fingerprint(d):
    code, out = cli("key", "show", "--fingerprint", "--state-dir", str(d))
    assert code == 0 and out.startswith("SHA256:"), out
    return out.strip()


def test_the_first_start_pins_the_key_and_key_show_prints_its_fingerprint(store, capsys):
    from sealgate.recording.checkpoint import Verifier
    from sealgate.recording.pin import readPin

    code, vkey = cli("key", "show", "--state-dir", str(store))
    assert code == 0
    v = Verifier.fromVkey(vkey.strip())
    assert readPin(store) == v
    assert "pinned at the store's first start: this is the pinned key" in capsys.readouterr().err
    assert _fingerprint(store) == v.fingerprint
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 0 and f"by key {v.fingerprint} (pinned at the first start)" in out, out


def test_a_replaced_signing_key_fails_verify_loudly_against_the_pin(store, capsys):
    old = _fingerprint(store)
    new = _rekey(store, pin=False)
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 1, out
    assert f"FAILED: THE SIGNING KEY CHANGED: {store / 'signing.key'} is {new.fingerprint}, but {old} was " \
           "pinned at the first start" in out, out
    assert "does not verify" in out or "carries no signature by the key" in out
    assert cli("key", "show", "--state-dir", str(store))[0] == 1
    assert "THE SIGNING KEY CHANGED" in capsys.readouterr().err
    # An auditor who accepts the new key says so with its fingerprint.
    code, out = cli("verify", "--key", new.fingerprint, "--state-dir", str(store))
    assert code == 0, out
    code, out = cli("verify", "--key", old, "--state-dir", str(store))
    assert code == 1 and "THE SIGNING KEY CHANGED" in out, out


def test_a_replaced_key_and_pin_are_caught_only_by_a_key_the_auditor_holds(store):
    old = _fingerprint(store)
    code, vkey = cli("key", "show", "--state-dir", str(store))
    new = _rekey(store, pin=True)
    code, out = cli("verify", "--checkpoint-dir", "none", "--state-dir", str(store))
    assert code == 0, out  # what docs/audit.md says a pin in the state directory cannot catch
    for held in (old, vkey.strip()):
        code, out = cli("verify", "--key", held, "--state-dir", str(store))
        assert code == 1, out
        assert f"THE SIGNING KEY IS NOT THE ONE YOU HOLD: the store's key {store / 'signing.key'} is " \
               f"{new.fingerprint}" in out, out


def test_a_key_that_is_neither_a_fingerprint_nor_a_verifier_key_is_a_usage_error(store, capsys):
    code, _out = cli("verify", "--key", "nonsense", "--state-dir", str(store))
    assert code == 2
    assert "--key: a verifier key has the form NAME+HASH+BASE64KEY" in capsys.readouterr().err


def test_a_store_from_before_pinning_is_pinned_at_the_next_start_and_warned_meanwhile(store, capsys):
    from sealgate.recording.pin import pinPath

    pinPath(store).unlink()
    code, out = cli("verify", "--state-dir", str(store))
    assert code == 0 and "(the store's own, not pinned)" in out
    assert "no key is pinned in" in capsys.readouterr().err
    e = Engine(store, ORIGIN)
    e.open()
    assert e.pinnedNow
    e.close()
    assert "(pinned at the first start)" in cli("verify", "--state-dir", str(store))[1]


@pytest_twisted.ensureDeferred
async def test_the_gateway_logs_the_pinned_fingerprint_at_every_start_and_a_changed_key_critically(
        tmp_path, logs):
    from twisted.internet import reactor

    from sealgate.recording.store import SQLiteStore

    d = tmp_path / "state"
    store = SQLiteStore(d, ORIGIN, reactor)
    await store.start()
    await store.stop()
    fp = _fingerprint(d)
    assert any(f"Checkpoints are signed by key {fp} (pinned now in {d / 'signing.key.pin'})" in line
               for line in logs), logs
    new = _rekey(d, pin=False)
    store = SQLiteStore(d, ORIGIN, reactor)
    await store.start()
    await store.stop()
    assert any(f"The checkpoint signing key changed: it is {new.fingerprint}, but {fp} was pinned" in line
               for line in logs), logs
