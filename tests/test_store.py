"""The sealed store end to end: recording through the interface, reading, checkpoints, locking, CLI."""

import io
import json
import os
import sqlite3
import stat
from contextlib import redirect_stdout

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from sealgate.interfaces import IRecordingStore, ISessionRecording
from sealgate.recording import Frame, _format
from sealgate.recording._engine import Engine, SessionState, StoreError, StoreLocked
from sealgate.recording.checkpoint import Verifier, openCheckpoint
from sealgate.recording.merkle import leafHash, verifyInclusion
from sealgate.recording.reader import StoreReader
from sealgate.recording.store import SQLiteStore
from sealgate.recording.verify import verifyStore
from sealgate.session import FROM_CLIENT, TO_CLIENT

ORIGIN = "sealgate/test-node"


def cli(*argv):
    from sealgate.cli.main import main

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    with redirect_stdout(out):
        code = main(list(argv))
    out.flush()
    return code, raw.getvalue().decode()


@pytest_twisted.ensureDeferred
async def test_recorded_session_reads_back_split_sealed_and_signed(tmp_path):
    from twisted.internet import reactor

    store = SQLiteStore(tmp_path / "state", ORIGIN, reactor)
    assert store.healthy() is not None  # not started yet: refuse sessions
    await store.start()
    assert verifyObject(IRecordingStore, store)
    assert store.healthy() is None
    rec = store.openSession("s1", {"identity": "alice", "protocol": "postgres", "client": "127.0.0.1:5000",
                                   "password": "hunter2", "policy_hash": "abc"})
    assert verifyObject(ISessionRecording, rec)
    big = os.urandom(40_000)
    rec.frame(FROM_CLIENT, b"SELECT 1;")
    rec.frame(TO_CLIENT, big, channel=3)
    rec.frame(TO_CLIENT, bytearray(b"tail"))
    rec.event("command", {"command": "SELECT 1", "verdict": "allow"})
    store.auditEvent({"kind": "login-failed", "identity": "mallory", "token": "eyJsecret"})
    await rec.close("client closed", {"bytes_from_client": 9})

    # The close Deferred fired: a separate reader sees the CLOSE under a signed checkpoint.
    with StoreReader(tmp_path / "state") as r:
        frames = list(r.frames("s1"))
        assert [(f.seq, f.direction, f.channel, f.offset, len(f.data)) for f in frames] == [
            (0, 0, 0, 0, 9), (1, 1, 3, 0, 16384), (2, 1, 3, 16384, 16384), (3, 1, 3, 32768, 7232),
            (4, 1, 0, 40000, 4)]
        assert b"".join(f.data for f in frames[1:4]) == big
        assert all(isinstance(f, Frame) for f in frames)
        log = r.events("s1")
        assert [e["type"] for e in log] == ["open", "event", "close"]
        close = log[-1]
        size, _, note = r.latestCheckpoint()
        cp = openCheckpoint(note, r.verifier(), ORIGIN)
        assert cp.size == size > close["n"]
        assert close["size"] == 5 and close["reason"] == "client closed"
        assert r.session("s1")["root"] == close["root"]
        node = r.events(None)
        assert node[0]["fields"] == {"identity": "mallory", "token": "[removed]"}
        raw = b"".join(bytes(leaf) for _, _, _, leaf in r.logLeaves())
        assert b"hunter2" not in raw and b"eyJsecret" not in raw
        assert verifyStore(r, r.verifier()).ok
    await store.stop()
    assert store.healthy() is not None


@pytest_twisted.ensureDeferred
async def test_second_store_on_the_same_state_dir_is_refused_naming_the_lock(tmp_path):
    from twisted.internet import reactor

    first = SQLiteStore(tmp_path, ORIGIN, reactor)
    await first.start()
    second = SQLiteStore(tmp_path, ORIGIN, reactor)
    with pytest.raises(StoreLocked, match=str(tmp_path / "store.lock")) as e:
        await second.start()
    assert f"process {os.getpid()}" in str(e.value)
    await first.stop()
    third = SQLiteStore(tmp_path, ORIGIN, reactor)
    await third.start()
    await third.stop()


def test_signing_key_is_private_and_key_show_prints_the_verifier(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    e.close()
    key = tmp_path / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    code, out = cli("key", "show", "--state-dir", str(tmp_path))
    assert code == 0
    v = Verifier.fromVkey(out.strip())
    assert v.name == ORIGIN
    with StoreReader(tmp_path) as r:
        assert openCheckpoint(r.latestCheckpoint()[2], v, ORIGIN).size == 0
    os.chmod(key, 0o644)
    with pytest.raises(StoreError, match="chmod 600"):
        Engine(tmp_path, ORIGIN).open()


def test_another_origin_is_refused(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    e.close()
    with pytest.raises(StoreError, match="created for origin 'sealgate/test-node'"):
        Engine(tmp_path, "sealgate/other").open()


def _frame(s, t, data, direction=0):
    return (s, t, 0, direction, data)


def test_progress_and_checkpoint_at_least_every_interval_while_frames_arrive(tmp_path):
    e = Engine(tmp_path, ORIGIN, checkpointInterval=1.0)
    e.open()
    s = SessionState("s")
    e.apply([("open", s, {}, None, None, False), _frame(s, 100.0, b"a")], now=100.0)
    e.apply([_frame(s, 100.5, b"b")], now=100.5)
    with StoreReader(tmp_path) as r:
        assert [x["type"] for x in r.events("s")] == ["open"]
        assert r.latestCheckpoint()[0] == 1  # the first growth after a second: signed at once
    e.apply([], now=101.2)  # no new frames, but two are unsealed for over a second
    with StoreReader(tmp_path) as r:
        progress = r.events("s")[-1]
        assert (progress["type"], progress["size"]) == ("progress", 2)
        assert r.latestCheckpoint()[0] == 2
    e.apply([], now=105.0)  # nothing new: no new leaves, no new checkpoint
    with StoreReader(tmp_path) as r:
        assert r.logSize() == 2 and len(r.checkpoints()) == 3
    e.close()


def test_a_failed_batch_keeps_nothing_and_is_retried_whole(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    s = SessionState("s")
    e.apply([("open", s, {}, None, None, False), _frame(s, 1.0, b"first")], now=1.0)
    batch = [_frame(s, 2.0, b"second"), ("event", s, "command", {"command": "x"}, None, False)]
    e.db.execute("CREATE TRIGGER fail BEFORE INSERT ON log BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.Error):
        e.apply(batch, now=2.0)
    e.db.execute("DROP TRIGGER fail")
    e.apply(batch + [("close", s, "done", {}, "token", False)], now=3.0)
    e.close()
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("s")] == [b"first", b"second"]
        assert verifyStore(r, r.verifier()).ok


def _bulkBatch(a, b, t):
    """Over two bulk runs of session a (written beside the sealing) interleaved with b's small frames."""
    items, expectA, expectB = [], [], []
    for i in range(200):
        big = bytes([i % 251]) * 16384
        items.append(_frame(a, t, big, 1))
        expectA.append(big)
        if i % 50 == 0:
            small = f"b{t}-{i}".encode()
            items.append(_frame(b, t, small))
            expectB.append(small)
    return items, expectA, expectB


def test_bulk_runs_are_written_beside_the_sealing_and_read_back_in_order(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    a, b = SessionState("a"), SessionState("b")
    e.apply([("open", a, {}, None, None, False), ("open", b, {}, None, None, False)], now=1.0)
    first, a1, b1 = _bulkBatch(a, b, 2.0)
    second, a2, b2 = _bulkBatch(a, b, 3.0)
    e.apply(first, now=2.0)
    e.apply(second + [("close", a, "done", {}, 1, False), ("close", b, "done", {}, 2, False)], now=3.0)
    e.close()
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("a")] == a1 + a2
        assert [f.data for f in r.frames("b")] == b1 + b2
        assert len(r.chunks("a")) > 2  # runs of a each batch, not one chunk per batch
        assert verifyStore(r, r.verifier()).ok


def test_a_failed_bulk_run_write_keeps_nothing_and_is_retried_whole(tmp_path):
    import resource
    import signal

    e = Engine(tmp_path, ORIGIN)
    e.open()
    a, b = SessionState("a"), SessionState("b")
    e.apply([("open", a, {}, None, None, False), ("open", b, {}, None, None, False),
             _frame(b, 1.0, b"before")], now=1.0)
    batch, expectA, expectB = _bulkBatch(a, b, 2.0)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (e.segmentLength + (1 << 20), limit[1]))
    try:
        with pytest.raises(OSError):
            e.apply(batch, now=2.0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, old)
    e.apply(batch + [("close", a, "done", {}, 1, False), ("close", b, "done", {}, 2, False)], now=3.0)
    e.close()
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("a")] == expectA
        assert [f.data for f in r.frames("b")] == [b"before"] + expectB
        assert verifyStore(r, r.verifier()).ok


def test_a_write_that_fails_on_the_helper_thread_fails_the_batch(tmp_path):
    from sealgate.recording._segments import SegmentFile

    (tmp_path / "segments").mkdir()
    seg = SegmentFile(tmp_path, 1, 0)
    seg.submit([b"fine"], seg.reserve(4), 4)
    seg.submit([b"x", None], seg.reserve(2), 2)  # pwritev refuses it on the helper thread
    with pytest.raises(TypeError):
        seg.finish()
    seg.rollback(1, 0)
    seg.write([b"again"], seg.reserve(5), 5)
    seg.finish()  # the failure was reported once, not carried into the next batch
    seg.close()
    assert (tmp_path / "segments" / "00000001.seg").read_bytes() == b"again"


def test_reused_session_id_never_mixes_two_sessions(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    a, b = SessionState("dup"), SessionState("dup")
    e.apply([("open", a, {}, None, None, False), _frame(a, 1.0, b"a"), ("close", a, "x", {}, 1, False)])
    assert e.apply([("open", b, {}, None, None, False), _frame(b, 2.0, b"b"),
                    ("close", b, "x", {}, 2, False)]) == [2]
    e.close()
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("dup")] == [b"a"]
        assert r.events(None)[0]["event"] == "session-id-reused"
        assert verifyStore(r, r.verifier()).ok


@pytest_twisted.ensureDeferred
async def test_cli_lists_shows_redacts_and_replays(tmp_path):
    from twisted.internet import reactor

    store = SQLiteStore(tmp_path, ORIGIN, reactor)
    await store.start()
    rec = store.openSession("s1", {"identity": "alice", "protocol": "none-such", "connection": "db"})
    rec.frame(FROM_CLIENT, b"login: AKIASECRET\n")
    rec.frame(TO_CLIENT, b"\x00\x01binary")
    await rec.close("closed", {})
    n = await store.redact("s1", 0, "a leaked key", "bob")
    with pytest.raises(StoreError, match="no frame 9"):
        await store.redact("s1", 9, "nope")
    await store.stop()
    d = str(tmp_path)

    code, out = cli("sessions", "list", "--json", "--state-dir", d)
    rows = json.loads(out)
    assert code == 0 and [(x["id"], x["state"], x["frames"]) for x in rows] == [("s1", "closed", 2)]
    code, out = cli("sessions", "show", "s1", "--state-dir", d)
    assert code == 0 and "a leaked key" in out and f"{n:>8}" in out
    code, out = cli("verify", "--state-dir", d)
    assert code == 0 and "1 redacted" in out, out
    assert b"AKIASECRET" not in (tmp_path / "segments" / "00000001.seg").read_bytes()
    code, out = cli("replay", "s1", "--no-wait", "--state-dir", d)
    assert code == 0 and "#0 client> ch0 redacted" in out and "00 01 62 69" in out, out
    code, out = cli("redact", "s1", "--frame", "1", "--reason", "r", "--state-dir", d)
    assert code == 0 and "sealed as log leaf" in out
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("s1")] == [None, None]
    code, out = cli("verify", "--session", "s1", "--state-dir", d)
    assert code == 0 and "2 redacted" in out


def test_replay_falls_back_to_a_transcript():
    from sealgate.export import transcript

    out, slept = io.BytesIO(), []
    frames = [Frame(0, 10.0, 0, 0, 0, b"SELECT 1;\n"), Frame(1, 12.0, 0, 1, 0, b"\x00\xff"),
              Frame(2, 12.5, 0, 1, 2, None)]
    transcript(frames, out, 2.0, sleep=slept.append)
    text = out.getvalue().decode()
    assert "client> ch0 10 bytes\nSELECT 1;\n" in text
    assert "00 ff" in text and "#2 <server ch0 redacted" in text
    assert slept == [1.0, 0.25]


def test_inclusion_of_a_close_leaf_in_the_checkpoint(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    s = SessionState("s")
    e.apply([("open", s, {}, None, None, False), _frame(s, 1.0, b"x"), ("close", s, "x", {}, 1, False)])
    e.close()
    with StoreReader(tmp_path) as r:
        leaves = [bytes(x[3]) for x in r.logLeaves()]
        size, _, note = r.latestCheckpoint()
        cp = openCheckpoint(note, r.verifier(), ORIGIN)
        from sealgate.recording.merkle import inclusionProof

        hashes = [leafHash(x) for x in leaves]
        close = r.session("s")["close_leaf"]
        verifyInclusion(close, cp.size, hashes[close], inclusionProof(hashes, close), cp.root)
        assert _format.parseLogLeaf(leaves[close])["type"] == "close"


@pytest_twisted.ensureDeferred
async def test_close_after_stop_fails_instead_of_hanging(tmp_path):
    from twisted.internet import reactor

    store = SQLiteStore(tmp_path, ORIGIN, reactor)
    await store.start()
    rec = store.openSession("late", {})
    rec.frame(FROM_CLIENT, b"x")
    await store.stop()
    with pytest.raises(StoreError, match="stopped before session late closed"):
        await rec.close("closed", {})
    with StoreReader(tmp_path) as r:
        assert r.session("late")["state"] == "cut off"
        assert verifyStore(r, r.verifier()).ok


@pytest_twisted.ensureDeferred
async def test_bad_input_is_refused_at_the_call_and_never_stalls_the_writer(tmp_path):
    from twisted.internet import reactor

    store = SQLiteStore(tmp_path, ORIGIN, reactor)
    await store.start()
    rec = store.openSession("s", {"client": object(), "ratio": float("nan"), 3: "int key"})
    with pytest.raises(ValueError):
        rec.frame(2, b"x")
    with pytest.raises(ValueError):
        rec.frame(0, b"x", channel=-1)
    rec.event("command", {"weird": {1, 2}, "inf": float("inf")})
    rec.frame(0, memoryview(b"ok"))
    await rec.close("done", {})
    assert store.healthy() is None
    await store.stop()
    with StoreReader(tmp_path) as r:
        assert [f.data for f in r.frames("s")] == [b"ok"]
        info = r.session("s")["info"]
        assert info["ratio"] == "nan" and info["3"] == "int key"
        assert r.events("s")[1]["fields"]["inf"] == "inf"


@pytest_twisted.ensureDeferred
async def test_the_writer_process_inherits_no_secret_from_the_environment(tmp_path, monkeypatch):
    from twisted.internet import reactor

    monkeypatch.setenv("SEALGATE_TEST_BACKEND_PASSWORD", "hunter2-backend")
    store = SQLiteStore(tmp_path, ORIGIN, reactor)
    await store.start()
    try:
        environ = open(f"/proc/{store.writerPid}/environ", "rb").read()
    finally:
        await store.stop()
    assert b"hunter2-backend" not in environ and b"PYTHONPATH=" in environ


@pytest_twisted.ensureDeferred
async def test_event_fields_the_pipe_cannot_carry_are_stored_as_text(tmp_path):
    import datetime

    from twisted.internet import reactor

    store = SQLiteStore(tmp_path, ORIGIN, reactor)
    await store.start()
    when = datetime.datetime(2026, 11, 26, 12, 0)
    rec = store.openSession("s", {"identity": "alice"})
    rec.event("note", {"when": when, "nested": {"set": {1}}, "token": "abc"})
    await rec.close("closed", {})
    await store.stop()
    with StoreReader(tmp_path) as r:
        [note] = [e for e in r.events("s") if e.get("event") == "note"]
        assert note["fields"] == {"when": str(when), "nested": {"set": "{1}"}, "token": "[removed]"}


def test_an_event_with_bytes_that_were_not_utf8_is_sealed_not_stuck(tmp_path):
    # A client's statement that is not UTF-8 reaches the audit event as lone
    # surrogates (surrogateescape); it must neither stall the writer nor be lost.
    e = Engine(tmp_path, ORIGIN)
    e.open()
    s = SessionState("s")
    text = b"SELECT '\xff\xfe'".decode("utf-8", "surrogateescape")
    e.apply([("open", s, {"client": text}, None, None, False),
             ("event", s, "command", {"command": text, "big": 2**70}, None, False),
             ("close", s, f"backend said {text}", {}, 1, False)])
    e.close()
    with StoreReader(tmp_path) as r:
        assert r.session("s")["reason"] == "backend said SELECT '\\udcff\\udcfe'"
        [command] = [x for x in r.events("s") if x.get("event") == "command"]
        assert command["fields"] == {"command": text, "big": 2**70}
        assert verifyStore(r, r.verifier()).ok
