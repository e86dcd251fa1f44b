"""Every file of a store, truncated or with one byte flipped, makes `sealgate verify` name it, never crash."""

import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.recording import _format
from sealgate.recording._engine import Engine, SessionState, dbPath, keyPath, segmentPath
from sealgate.recording.pin import pinPath
from tests.test_store import cli

ORIGIN = "sealgate/files"


def _write(e, t0=1000.0):
    """Two closed sessions and one open one, written by the real engine in several commits."""
    t = t0
    for sid in ("aaa", "bbb", "ccc"):
        s = SessionState(sid)
        items = [("open", s, {"identity": "alice", "protocol": "postgres", "connection": "app"},
                  None, None, False)]
        items += [(s, t + i, 0, i % 2, f"{sid} frame {i} ".encode() * (i + 3)) for i in range(12)]
        items.append(("event", s, "command", {"command": f"SELECT {sid}", "verdict": "allow"}, None, False))
        if sid != "ccc":
            items.append(("close", s, "closed", {}, None, False))
        e.apply(items[:6], now=t)
        e.apply([], now=t + 1.5)
        e.apply(items[6:], now=t + 2)
        e.apply([], now=t + 3.5)
        t += 100


def _written(d):
    """An engine left open on a store holding L{_write}'s sessions."""
    e = Engine(d, ORIGIN)
    e.open()
    _write(e)
    return e


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    _written(d).close()
    return d


@pytest.fixture(scope="module")
def withWal(tmp_path_factory):
    """A copy taken while the writer had the store open: its commits are still in the WAL."""
    e = _written(tmp_path_factory.mktemp("live"))
    copy = tmp_path_factory.mktemp("walcopy") / "store"
    shutil.copytree(e.stateDir, copy, ignore=shutil.ignore_patterns("store.lock"))
    e.close()
    assert (copy / "recordings.sqlite-wal").stat().st_size > 0
    return copy


@pytest.fixture
def store(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "store"))


@pytest.fixture
def walStore(withWal, tmp_path):
    return Path(shutil.copytree(withWal, tmp_path / "walstore"))


def _verify(d, *extra):
    code, out = cli("verify", "--state-dir", str(d), "--checkpoint-dir", "none", *extra)
    assert "Traceback" not in out
    return code, out


def _failed(d, *expected, extra=()):
    code, out = _verify(d, *extra)
    assert code == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("FAILED: ")]
    for text in expected:
        assert any(text in ln for ln in lines), out
    return out


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x20
    path.write_bytes(bytes(data))


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _recordAt(d, sid, frame):
    """The segment file and byte offset of one frame's record header."""
    db = sqlite3.connect(dbPath(d))
    for first, count, seg, offset, length in db.execute(
            "SELECT first, count, segment, offset, length FROM chunks WHERE session = ? ORDER BY first", (sid,)):
        if first <= frame < first + count:
            buf = segmentPath(d, seg).read_bytes()[offset : offset + length]
            at = 0
            for _ in range(frame - first):
                ll, sl, pl = _format.RECORD.unpack_from(buf, at)
                at += _format.RECORD.size + ll + sl + pl
            return segmentPath(d, seg), offset + at
    raise AssertionError(f"no frame {frame} of {sid}")


def test_the_untouched_stores_verify(store, walStore):
    assert _verify(store)[0] == 0
    code, out = _verify(walStore)
    assert code == 0, out


def test_a_truncated_segment_names_the_file_and_the_first_missing_frame(store):
    seg, at = _recordAt(store, "bbb", 7)
    _truncate(seg, at + 3)
    _failed(store, f"session bbb: segment file {seg} is cut short at byte {at + 3}: frame 7 and later are missing",
            f"segment file {seg} is cut short: {at + 3} of its")


def test_a_flipped_byte_in_a_segment_record_header_names_the_file_and_frame(store):
    seg, at = _recordAt(store, "aaa", 4)
    _flip(seg, at + 3)  # the payload length: every later record of the chunk is misread
    _failed(store, f"session aaa: segment file {seg}: frame 4 does not parse")


def test_a_flipped_byte_in_a_payload_names_the_frame(store):
    seg, at = _recordAt(store, "ccc", 2)
    ll, sl, _pl = _format.RECORD.unpack_from(seg.read_bytes(), at)
    _flip(seg, at + _format.RECORD.size + ll + sl + 1)
    _failed(store, "session ccc frame 2: its payload does not match its sealed commitment")


def test_a_missing_segment_is_named(store):
    seg, _at = _recordAt(store, "aaa", 0)
    seg.unlink()
    _failed(store, f"segment file {seg} is missing")


def test_a_truncated_database_is_named(store):
    db = dbPath(store)
    _truncate(db, db.stat().st_size // 2)
    _failed(store, str(db))


def test_a_flipped_byte_in_the_database_header_is_named(store):
    db = dbPath(store)
    _flip(db, 3)  # "SQLite format 3"
    _failed(store, f"the database {db} cannot be read: file is not a database")


def test_a_flipped_byte_in_a_stored_log_leaf_is_named(store):
    db = dbPath(store)
    data = db.read_bytes()
    at = data.index(b'"command":"SELECT bbb"')
    _flip(db, at + 15)
    _failed(store, "was altered or removed")


def test_a_flipped_byte_in_a_page_of_the_database_fails_its_integrity_check(store):
    db = dbPath(store)
    with sqlite3.connect(db) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        root = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'log_session'").fetchone()[0]
    _flip(db, (root - 1) * page)  # the index page's type byte
    _failed(store, str(db))


def test_a_wal_cut_short_in_a_frame_is_named(walStore):
    wal = walStore / "recordings.sqlite-wal"
    _truncate(wal, wal.stat().st_size - 100)
    _failed(walStore, f"the WAL file {wal} is cut short in frame")


def test_a_flipped_byte_in_an_early_wal_frame_is_named(walStore):
    wal = walStore / "recordings.sqlite-wal"
    page = int.from_bytes(wal.read_bytes()[8:12], "big")
    _flip(wal, 32 + 24 + page + 24 + 100)  # inside frame 1's page
    _failed(walStore, f"the WAL file {wal}: frame 1 fails its checksum, yet a later commit")


def test_a_flipped_byte_in_the_wal_header_is_named(walStore):
    wal = walStore / "recordings.sqlite-wal"
    _flip(wal, 17)  # salt-1
    _failed(walStore, f"the WAL file {wal}: its header fails its checksum")


def test_a_wal_cut_back_at_a_frame_boundary_is_caught_by_a_checkpoint_the_verifier_kept(walStore, tmp_path):
    kept = tmp_path / "kept"
    code, out = cli("verify", "--state-dir", str(walStore), "--checkpoint-dir", str(kept))
    assert code == 0, out
    wal = walStore / "recordings.sqlite-wal"
    page = int.from_bytes(wal.read_bytes()[8:12], "big")
    frames = (wal.stat().st_size - 32) // (24 + page)
    _truncate(wal, 32 + (frames // 2) * (24 + page))  # no trace in the WAL itself
    code, out = cli("verify", "--state-dir", str(walStore), "--checkpoint-dir", str(kept))
    assert code == 1 and "the log is truncated: a signed checkpoint covers" in out, out


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_signing_key_is_named(store, damage):
    key = keyPath(store)
    _truncate(key, 20) if damage == "truncate" else _flip(key, len(key.read_bytes()) - 10)
    _failed(store, f"the signing key file {key} is malformed")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_key_pin_is_named(store, damage):
    pin = pinPath(store)
    text = pin.read_bytes()
    _truncate(pin, len(text) - 20) if damage == "truncate" else _flip(pin, len(text) - 5)
    _failed(store, f"the pinned key file {pin} is malformed")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_the_auditor_holds_is_named(store, tmp_path, damage):
    code, note = cli("checkpoint", "--state-dir", str(store))
    saved = tmp_path / "kept.txt"
    saved.write_text(note[: len(note) // 2] if damage == "truncate" else note.replace("\n", "\nx", 1))
    _failed(store, f"the checkpoint in {saved}: ", extra=("--checkpoint", str(saved)))


def _storeFiles(d):
    return sorted(p for p in d.rglob("*") if p.is_file() and p.name != "store.lock")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_flipped_or_cut_anywhere_gives_a_verdict_never_a_crash(pristine, withWal, tmp_path, data):
    d = tmp_path / f"fuzz{data.draw(st.integers(0, 10**9))}"
    shutil.copytree(data.draw(st.sampled_from([pristine, withWal]), label="store"), d)
    path = data.draw(st.sampled_from(_storeFiles(d)), label="file")
    size = path.stat().st_size
    at = data.draw(st.integers(0, max(size - 1, 0)), label="at")
    cut = data.draw(st.booleans(), label="truncate")
    _truncate(path, at) if cut else _flip(path, at)
    code, out = _verify(d)
    assert code in (0, 1), out
    assert out.startswith(("OK: ", "FAILED: ")), out
    if path.suffix == ".seg":
        # Every committed byte of a segment is a record header, a leaf, a salt or a payload.
        assert code == 1 and "FAILED: session" in out, out
    shutil.rmtree(d)


def test_a_wal_cut_short_while_a_writer_holds_the_store_is_a_warning(walStore, capsys):
    import fcntl
    import os

    wal = walStore / "recordings.sqlite-wal"
    _truncate(wal, wal.stat().st_size - 100)  # what an append in flight looks like to a reader
    fd = os.open(walStore / "store.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the writer process does
    try:
        code, out = _verify(walStore)
    finally:
        os.close(fd)
    assert "WAL" not in out, out
    assert f"warning: the WAL file {wal} is cut short in frame" in capsys.readouterr().err
