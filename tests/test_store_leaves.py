"""The writer's fast frame and log paths seal exactly the leaves the format spells out (an independent rebuild)."""

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.recording import _format as fmt
from sealgate.recording._engine import Engine, SessionState
from sealgate.recording.merkle import leafHash, rootOf
from sealgate.recording.reader import StoreReader
from sealgate.recording.verify import verifyStore

#: Sizes either side of the one-call commitment (2048) and of the frame split (16 KiB).
sizes = st.one_of(st.integers(1, 64), st.sampled_from([2047, 2048, 2049, fmt.MAX_FRAME, fmt.MAX_FRAME + 1]),
                  st.integers(1, 3 * fmt.MAX_FRAME + 5))
items = st.lists(st.one_of(
    st.tuples(st.just("frame"), st.integers(0, 2), st.integers(0, 1), sizes),
    st.tuples(st.just("event"), st.integers(0, 2), st.dictionaries(
        st.sampled_from(["command", "db_password", "rows", "note", "Token"]),
        st.none() | st.integers() | st.text(max_size=8)
        | st.dictionaries(st.sampled_from(["api_key", "table"]), st.text(max_size=4), max_size=2),
        max_size=4))), max_size=40)


def _scrubbed(value):
    """What the log keeps of an event's fields: values under secret-looking keys replaced."""
    if isinstance(value, dict):
        return {k: "[removed]" if fmt._SECRET_KEY.search(k) else _scrubbed(v) for k, v in value.items()}
    return value


def _expected(sid: str, frames: list) -> tuple[list, bytes]:
    """Each frame's leaf, from the format's own definition, and the session tree's root."""
    prev, offsets, leaves = fmt.NO_PREV, [0, 0], []
    for t, direction, salt, payload in frames:
        leaf = (fmt.framePrefix(sid)
                + fmt.FRAME_FIELDS.pack(len(leaves), t, 0, direction, offsets[direction], len(payload))
                + prev + fmt.commitment(salt, payload))
        prev = leafHash(leaf)
        offsets[direction] += len(payload)
        leaves.append(leaf)
    return leaves, rootOf(leafHash(x) for x in leaves)


@settings(max_examples=40, deadline=None)
@given(items, st.integers(1, 6))
def test_frames_and_events_seal_the_leaves_the_format_defines(plan, batches):
    base = Path(tempfile.mkdtemp(prefix="sealgate-leaves-"))
    try:
        engine = Engine(base, "leaves.example/log")
        engine.open()
        states = [SessionState(f"s{i}") for i in range(3)]
        engine.apply([("open", s, {"protocol": "test"}, None, None, False) for s in states], now=1.0)
        work = []
        for i, (kind, who, a, *rest) in enumerate(plan):
            if kind == "frame":
                work.append((states[who], 2.0 + i, 0, a, bytes([i % 251]) * rest[0]))
            else:
                work.append(("event", states[who], "command", a, None, False, 2.0 + i))
        step = max(1, len(work) // batches)
        for at in range(0, len(work), step):
            engine.apply(work[at : at + step], now=100.0)
        engine.apply([("close", s, "done", {}, None, False) for s in states], now=200.0)
        engine.close()
        with StoreReader(base) as r:
            for s in states:
                stored = list(r.records(s.id))
                frames = [(fmt.parseFrameLeaf(leaf).time, fmt.parseFrameLeaf(leaf).direction, bytes(salt),
                           bytes(payload)) for _, leaf, salt, payload in stored]
                # The payloads as sent, split at MAX_FRAME, in order.
                sent = [(d, data) for who, t, c, d, data in (w for w in work if len(w) == 5) if who is s]
                pieces = [(d, data[at : at + fmt.MAX_FRAME]) for d, data in sent
                          for at in range(0, len(data), fmt.MAX_FRAME)]
                assert [(d, p) for _, d, _, p in frames] == pieces
                leaves, root = _expected(s.id, frames)
                assert [bytes(leaf) for _, leaf, _, _ in stored] == leaves
                close = r.events(s.id)[-1]
                assert close["type"] == "close" and close["root"] == root.hex() and close["size"] == len(leaves)
            rows = list(r.logLeaves())
            prev = fmt.NO_PREV
            for n, _sid, kind, leaf in rows:
                body = json.loads(bytes(leaf)[2:])
                assert bytes(leaf) == fmt.LOG_HEAD + fmt.canonicalJson(body)
                assert body["n"] == n and body["prev"] == prev.hex() and body["type"] == kind
                prev = hashlib.sha256(b"\x00" + bytes(leaf)).digest()
            events = [json.loads(bytes(leaf)[2:])["fields"] for _, _, kind, leaf in rows if kind == "event"]
            assert events == [_scrubbed(w[3]) for w in work if len(w) != 5]
            assert rootOf(leafHash(bytes(x[3])) for x in rows) == engine.log.root()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_batch_of_many_events_stores_every_log_row_in_order(tmp_path):
    from sealgate.recording._engine import LOG_ROWS

    engine = Engine(tmp_path, "leaves.example/log")
    engine.open()
    s = SessionState("many")
    count = 2 * LOG_ROWS + 7  # two full multi-row statements and a remainder
    engine.apply([("open", s, {}, None, None, False)]
                 + [("event", s, "command", {"i": i}, None, False, 1.0 + i) for i in range(count)], now=1.0)
    root = engine.log.root()
    engine.close()
    with StoreReader(tmp_path) as r:
        rows = list(r.logLeaves())
        assert [json.loads(bytes(leaf)[2:]).get("fields") for _, _, kind, leaf in rows if kind == "event"] == [
            {"i": i} for i in range(count)]
        assert [n for n, *_ in rows] == list(range(len(rows)))
        assert rootOf(leafHash(bytes(x[3])) for x in rows) == root
        assert verifyStore(r, r.verifier(), "many").ok


def _reference(value):
    """scrub spelled out plainly: secret-looking keys' values replaced, anything unknown as its text."""
    if isinstance(value, dict):
        return {str(k): "[removed]" if fmt._SECRET_KEY.search(str(k)) else _reference(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reference(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)


keys = st.sampled_from(["a", "rows", "duration", "db_password", "Cookie", "x-api-key", "token_id", "note"]) | st.text(
    max_size=6)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12)


@given(st.dictionaries(keys, values, max_size=5))
def test_scrub_keeps_what_the_plain_rule_keeps_on_the_first_and_the_cached_pass(fields):
    expected = fmt.canonicalJson(_reference(fields))
    assert fmt.canonicalJson(fmt.scrub(fields)) == expected  # keys seen for the first time
    assert fmt.canonicalJson(fmt.scrub(fields)) == expected  # then known: the C-level checks
