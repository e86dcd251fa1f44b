"""Audit-event masking: the memo of small dicts answers exactly what the reference walk gives, whatever came before."""

import copy
import enum
import json
import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker, maskEvent
from sealgate.masking._audit import _MAX_DEPTH, _MEMO_MAX, _caches
from tests.test_masking_audit_walk import CARD, MAIL, MASKERS, _same, referenceMaskEvent

# Few values, so events repeat and the memo answers; hits, near misses and named fields among them.
_WORDS = st.sampled_from(["GET", "/json", "", "wrk", "127.0.0.1:8080", CARD, MAIL, f"x{CARD}y",
                          "4111 1111 1111 1112", json.dumps({"password": "p"}), "{not json", "allow"])
_NUMBERS = st.sampled_from([0, 1, 7, 4111111111111111, -1, 1.5, 0.0, -0.0, float("nan"), float("inf"),
                            True, False, None, 2 ** 70])
_NAMES = st.sampled_from(["method", "path", "headers", "card", "password", "ssn", "kind", "api_token",
                          "verdict", "body_size", "command"])
_LEAVES = st.one_of(_WORDS, _NUMBERS)
_TREES = st.recursive(_LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.lists(kids, max_size=2).map(tuple),
    st.dictionaries(_NAMES, kids, max_size=4)), max_leaves=12)
_EVENTS = st.dictionaries(_NAMES, _TREES, max_size=5)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in an event a value sits, through dicts and lists."""
    out = [path] if path else []
    if type(value) is dict:
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif type(value) is list:
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _put(event: Any, path: tuple, new: Any) -> None:
    for step in path[:-1]:
        event = event[step]
    event[path[-1]] = new


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(MASKERS))), st.lists(_EVENTS, min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), _TREES, st.booleans()), max_size=8))
def test_the_memo_answers_what_the_reference_walk_gives_for_any_sequence(which, pool, steps):
    # Events from a small pool, again and again, changed in place between two
    # maskings (the same dict object with new content), and the answers
    # themselves changed by the caller: every answer is the reference's.
    m = MASKERS[which]
    events = [copy.deepcopy(e) for e in pool]
    for e in events:
        assert _same(maskEvent(m, e), referenceMaskEvent(m, e))
    for pick, where, new, spoil in steps:
        event = events[pick % len(events)]
        paths = _paths(event)
        if paths:
            _put(event, paths[where % len(paths)], new)
        want = referenceMaskEvent(m, copy.deepcopy(event))
        got = maskEvent(m, event)
        assert _same(got, want)
        assert (got is event) == _same(want, event) or not _same(event, event)  # NaN is never equal to itself
        if spoil and got is not event:
            # What the answer shares with the event (parts left as they were)
            # the caller changes in both, as with the reference walk.
            _spoil(got)
            want = referenceMaskEvent(m, copy.deepcopy(event))
        again = maskEvent(m, event)
        assert _same(again, want)
        if m.detectors:
            assert CARD not in repr(again)


def _spoil(value: Any) -> None:
    """What a careless caller could do to the event it got back: change every dict and list in it."""
    if type(value) is dict:
        for k in list(value):
            _spoil(value[k])
            value[k] = CARD
        value["spoiled"] = CARD
    elif type(value) is list:
        value.append(CARD)


class _Int(enum.IntEnum):
    CARDLIKE = 4111111111111111
    ONE = 1


class _Str(enum.StrEnum):
    CARD = CARD


class _Plain(enum.Enum):
    CARD = CARD


class _Float(float, enum.Enum):
    HALF = 1.5


_TWINS = [  # (a value, another with the same JSON that is not the same content)
    ((4111111111111111,), [4111111111111111]),
    ([CARD], (CARD,)),
    (None, float("nan")),
    (None, float("inf")),
    (4111111111111111, _Int.CARDLIKE),
    (1, _Int.ONE),
    (1.5, _Float.HALF),
    (CARD, _Str.CARD),
    (CARD, _Plain.CARD),
    ("12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (CARD, orjson.Fragment(orjson.dumps(CARD))),
]


@given(st.sampled_from(range(len(MASKERS))), st.sampled_from(_TWINS), st.booleans(), st.booleans(),
       st.sampled_from(["card", "x", "kind"]))
def test_values_of_the_same_json_never_answer_for_each_other(which, twins, swap, nested, name):
    m = MASKERS[which]
    first, second = twins[::-1] if swap else twins
    for value in (first, second, first):
        event = {"details": {name: value, "n": 0}} if nested else {name: value, "verdict": "allow"}
        assert _same(maskEvent(m, event), referenceMaskEvent(m, event))


def test_a_repeated_request_event_is_answered_from_the_memo_and_stays_masked():
    m = MASKERS[3]
    names, texts, memo = _caches(m)
    event = {"kind": "http", "command": "GET /json", "verdict": "allow",
             "details": {"method": "GET", "path": "/json", "query": f"mail={MAIL}",
                         "headers": {"host": "h", "x-card": CARD}, "body_size": 0}}
    first = maskEvent(m, event)
    assert CARD not in repr(first) and MAIL not in repr(first)
    texts.clear()  # the memo alone answers now
    second = maskEvent(m, event)
    assert second == first and second is not first and second["details"] is not first["details"]
    assert not texts
    assert _same(second, referenceMaskEvent(m, event))


def test_the_memo_stays_bounded_under_unique_events_and_keeps_no_long_text():
    m = Masker(["credit_card", "email"], columns=["card"])
    names, texts, memo = _caches(m)
    for i in range(_MEMO_MAX + 50):
        event = {"kind": "http", "command": f"GET /{i}", "details": {"headers": {"host": f"h{i}"}}}
        assert maskEvent(m, event) is event
        assert len(memo) <= _MEMO_MAX
    memo.clear()
    long = {"command": "x" * 2000, "card": "1"}
    assert maskEvent(m, long) == {"command": "x" * 2000, "card": "********"}
    assert not memo


def test_a_statement_event_with_a_duration_never_fills_the_memo():
    m = Masker(["credit_card", "email"])
    names, texts, memo = _caches(m)
    memo.clear()
    for i in range(20):
        maskEvent(m, {"text": f"select {i}", "duration": i / 1e6, "rows": 1, "statements": ["SELECT"]})
    assert not memo


def test_the_same_dict_at_another_depth_is_walked_for_that_depth():
    # Past the depth limit containers are masked as text: the same dict
    # answers otherwise at depth 0 and near the limit.
    m = MASKERS[2]
    inner = {"x": {"y": [CARD, 1]}, "kind": "allow"}
    for depth in [0, *range(_MAX_DEPTH - 4, _MAX_DEPTH + 1), 0]:
        event: Any = copy.deepcopy(inner)
        for _ in range(depth):
            event = {"z": event}
        assert _same(maskEvent(m, event), referenceMaskEvent(m, event))
