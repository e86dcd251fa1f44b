"""Audit-event masking: the fast walk gives exactly what the plain recursive walk gave, field for field and object for object."""

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.masking import Masker, MaskingFailed, maskEvent
from sealgate.masking._audit import _MAX_DEPTH, STRUCTURAL

CARD = "4111 1111 1111 1111"
MAIL = "jane.doe@example.com"
MASKERS = [
    Masker(),
    Masker(columns=["card", "password"]),
    Masker(["credit_card", "email"]),
    Masker(["credit_card", "email"], columns=["ssn", "kind"], jsonFields=["*token"]),
]

# -- the walk as it was (the reference) ---------------------------------------------------

def referenceMaskEvent(masker, fields: dict[str, Any]) -> dict[str, Any]:
    """
    An audit event's fields with what a client typed masked: detector hits
    in every string (statement text, parameters, shell lines, startup
    fields such as C{application_name}, request fields and bodies), and
    the values of fields named by C{columns}/C{json_fields} redacted,
    at any depth.  A string holding a JSON document is masked as JSON
    (named fields inside it redacted).  Returns C{fields} itself when
    nothing changed; never raises (what cannot be parsed is masked as text).
    """
    out = _refWalk(masker, fields, 0, top=True)
    return fields if out is fields else out


def _refWalk(masker, value: Any, depth: int, top: bool = False) -> Any:
    if isinstance(value, str):
        return _refText(masker, value)
    if isinstance(value, (bytes, bytearray)):
        masked = masker.maskBytes(bytes(value))
        return value if masked == value else masked
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A parameter bound as a number can be a card number too.
        text = repr(value)
        masked = masker.maskText(text)
        return value if masked == text else masked
    if depth >= _MAX_DEPTH:
        return _refText(masker, repr(value)) if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        out = {}
        changed = False
        for k, v in value.items():
            key = _refText(masker, k) if isinstance(k, str) else k
            if (isinstance(k, str) and v is not None and not (top and k in STRUCTURAL)
                    and masker.columnMasked(k)):
                new: Any = masker.maskValue(k, "")
            else:
                new = _refWalk(masker, v, depth + 1)
            changed |= new is not v or key is not k
            out[key] = new
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [_refWalk(masker, v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _refText(masker, text: str) -> str:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[") and masker.names:
        try:
            return masker.maskJsonText(text)
        except MaskingFailed:
            pass
    masked = masker.maskText(text)
    return text if masked == text else masked


# -- the comparison ----------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal, of the same types, at every depth."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


_NAMES = st.sampled_from(["card", "password", "ssn", "kind", "api_token", "text", "x", f"k{CARD}",
                          "{\"a\": 1}", " [1]"])
_LEAVES = st.one_of(
    st.text(max_size=12), st.integers(), st.floats(), st.none(), st.booleans(),
    st.binary(max_size=12),
    st.sampled_from([CARD, MAIL, f"x{CARD}y", 4111111111111111, json.dumps({"password": "p", "n": CARD}),
                     "  [\"" + MAIL + "\"]", "\u3000{\"ssn\": 1}", "{not json", ""]))
_TREES = st.recursive(_LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.lists(kids, max_size=3).map(tuple),
    st.dictionaries(st.one_of(_NAMES, st.sampled_from(sorted(STRUCTURAL)), st.integers(0, 3)),
                    kids, max_size=4)), max_leaves=25)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(MASKERS))),
       st.dictionaries(st.one_of(_NAMES, st.sampled_from(sorted(STRUCTURAL))), _TREES, max_size=6))
def test_the_fast_walk_masks_exactly_as_the_reference_walk(which, event):
    m = MASKERS[which]
    want = referenceMaskEvent(m, event)
    for _ in range(2):  # the second time from the per-masker name cache
        got = maskEvent(m, event)
        assert _same(got, want)
        assert (got is event) == (want is event)


def test_deeper_than_the_limit_is_masked_as_text_in_both():
    deep: Any = [CARD]
    for _ in range(_MAX_DEPTH + 2):
        deep = {"x": deep}
    m = MASKERS[2]
    assert _same(maskEvent(m, {"d": deep}), referenceMaskEvent(m, {"d": deep}))
    assert CARD not in repr(maskEvent(m, {"d": deep}))


def test_an_event_a_statement_makes_keeps_its_identity_when_nothing_is_masked():
    event = {"text": "select abalance from pgbench_accounts where aid = 7", "rows": 1,
             "duration": 0.0001, "statements": ["SELECT"], "relations": ["pgbench_accounts"]}
    for m in MASKERS:
        assert maskEvent(m, event) is event


def test_the_caches_stay_bounded_and_right_under_unique_texts():
    from sealgate.masking._audit import _CACHE_MAX, _caches

    m = Masker(["credit_card", "email"], columns=["card"])
    for i in range(_CACHE_MAX + 50):
        event = {"text": f"select {i}", f"k{i}": "allow", "mail": MAIL}
        out = maskEvent(m, event)
        assert out["text"] == f"select {i}" and MAIL not in out["mail"]
    names, texts, memo = _caches(m)
    assert len(names) <= _CACHE_MAX and len(texts) <= _CACHE_MAX and len(memo) <= _CACHE_MAX
    assert maskEvent(m, {"card": "x", "statements": ["SELECT"]}) == {"card": "********",
                                                                      "statements": ["SELECT"]}


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.integers(), st.floats(), st.integers(-10**8, 10**8),
                 st.floats(0, 10).map(lambda f: round(f, 6)), st.floats(0, 1).map(lambda f: round(f * 1e6) / 1e6),
                 st.floats(-1e-3, 1e-3),
                 # The shortest values: 13-digit cards, as ints and floats, and an SSN's 9 digits.
                 st.sampled_from([4222222222222, -4222222222222, 4222222222222.0, 378282246310005,
                                  4111111111111111, 123456789, 12345678.9, 0.1234567])))
def test_a_number_too_short_for_any_detector_passes_unmasked_by_every_detector(n):
    # The walk's shortcut for numbers whose text has fewer than 8 digits and no "+".
    from sealgate.masking._detectors import DETECTORS

    text = repr(n)
    every = Masker(list(DETECTORS))
    if sum(c.isdigit() for c in text) < 8 and "+" not in text:
        assert every.maskText(text) == text
    assert _same(maskEvent(every, {"n": n}), referenceMaskEvent(every, {"n": n}))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="0123456789.-einaf", max_size=24))
def test_a_text_of_number_characters_with_fewer_than_8_digits_holds_no_value_of_any_detector(text):
    # The lemma under the shortcut: not only reprs, any text of these characters.
    from sealgate.masking._detectors import DETECTORS

    if sum(c.isdigit() for c in text) < 8:
        assert Masker(list(DETECTORS)).maskText(text) == text
