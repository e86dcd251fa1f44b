"""Masking what a client typed before it is sealed in the log (audit event fields)."""

import weakref
from itertools import islice
from typing import Any

import orjson

from sealgate.masking._errors import MaskingFailed

#: Event fields the gateway itself fills in (verdicts, rules, tickets, ids,
#: counts): never redacted by a column or field name, though detectors
#: still read them.
STRUCTURAL = frozenset({
    "kind", "verdict", "rule", "reason", "ticket", "session", "session_id", "approver",
    "approvers", "decided_by", "expires", "statements", "rows", "status", "code", "sqlstate",
    "duration", "channel", "connection", "protocol", "identity", "groups", "method",
})

#: How deep nested fields are walked (deeper containers are masked as text).
_MAX_DEPTH = 16


def maskEvent(masker, fields: dict[str, Any]) -> dict[str, Any]:
    """
    An audit event's fields with what a client typed masked: detector hits
    in every string (statement text, parameters, shell lines, startup
    fields such as C{application_name}, request fields and bodies), and
    the values of fields named by C{columns}/C{json_fields} redacted,
    at any depth.  A string holding a JSON document is masked as JSON
    (named fields inside it redacted).  Returns C{fields} itself when
    nothing changed; never raises (what cannot be parsed is masked as text).
    """
    if not masker.detectors and not masker.names:
        return fields  # nothing could change
    caches = _caches(masker)
    # What _walk does with a dict at the top, without its dispatch.
    if type(fields) is not dict:
        out = _walk(masker, fields, 0, caches, top=True)
    elif "duration" in fields:  # a statement's event: new each time, never memoised
        out = _dict(masker, fields, 0, caches, True)
    else:
        out = _memoDict(masker, fields, 0, caches, True)
    return fields if out is fields else out


#: Per masker, three caches: what each field name it has seen comes to (the
#: key masked, or None when unchanged; whether its value is redacted whole),
#: what each short text comes to (masked, or None when unchanged), and what
#: each small dict of short texts comes to (the memo, see L{_memoDict}).
#: Event fields are mostly the same few names and words on every statement
#: (verdicts, statement kinds, effects, relations, SQLSTATEs), so most of a
#: walk becomes dict reads.  Maskers are immutable and deterministic.
_CACHES: "weakref.WeakKeyDictionary[Any, tuple[dict, dict, dict]]" = weakref.WeakKeyDictionary()
_CACHE_MAX = 4096
#: Texts longer than this (statement texts: a new literal each time) are not kept.
_SHORT = 64


def _caches(masker) -> tuple[dict, dict, dict]:
    global _LAST
    last = _LAST  # one read: another thread may rebind it meanwhile
    if last[0] is masker:
        return last[1]
    try:
        cache = _CACHES.get(masker)
        if cache is None:
            cache = _CACHES[masker] = ({}, {}, {})
    except TypeError:
        return {}, {}, {}  # a masker that cannot be weakly referenced: nothing kept
    _LAST = (masker, cache)
    return cache


#: The masker seen last and its caches (a gateway has one masker): no weak lookup per event.
_LAST: tuple[Any, tuple[dict, dict, dict]] = (None, ({}, {}, {}))


def _key(masker, cache: tuple[dict, dict, dict], k: str) -> tuple[str | None, bool, bool]:
    """What a field name comes to: its masked key (None: unchanged), whether its value is redacted below the top, and at the top."""
    masked = _text(masker, k)
    redacted = masker.columnMasked(k)
    info = (None if masked is k else masked, redacted, redacted and k not in STRUCTURAL)
    names = cache[0]
    if len(names) >= _CACHE_MAX:
        names.clear()  # bounded; what recurs is learnt again at once
    names[k] = info
    return info


def _shortText(masker, cache: tuple[dict, dict, dict], text: str) -> str:
    texts = cache[1]
    hit = texts.get(text, _MISSING)
    if hit is _MISSING:
        masked = _text(masker, text)
        hit = None if masked is text else masked
        if type(text) is str:
            if len(texts) >= _CACHE_MAX:
                texts.clear()  # unique statement texts fill it; the recurring words come back
            texts[text] = hit
    return text if hit is None else hit


_MISSING = object()


def _walk(masker, value: Any, depth: int, keys: tuple[dict, dict, dict], top: bool = False) -> Any:
    t = type(value)
    if t is str:
        return _shortText(masker, keys, value) if len(value) <= _SHORT else _text(masker, value)
    if t is dict:
        if depth >= _MAX_DEPTH:
            return _text(masker, repr(value))
        return _memoDict(masker, value, depth, keys, top)
    if t is list or t is tuple:
        if depth >= _MAX_DEPTH:
            return _text(masker, repr(value))
        return _seq(masker, value, depth, keys)
    if t is int or t is float:
        return _number(masker, value, keys) if masker.detectors else value
    if value is None or t is bool:
        return value
    return _other(masker, value, depth, keys, top)


def _dict(masker, value: dict, depth: int, keys: tuple[dict, dict, dict], top: bool) -> Any:
    names, texts = keys[0], keys[1]
    out = None  # a copy only once a field changes: most events come back as they are
    i = 0
    for k, v in value.items():
        if type(k) is str:
            info = names.get(k)
            if info is None:
                info = _key(masker, keys, k)
            key = k if info[0] is None else info[0]
            if (info[2] if top else info[1]) and v is not None:
                new: Any = masker.maskValue(k, "")
            elif type(v) is str:
                hit = texts.get(v, _MISSING)
                if hit is None:
                    new = v  # a short text already known to mask to itself (most fields)
                elif hit is _MISSING:
                    new = _walk(masker, v, depth + 1, keys)
                else:
                    new = hit
            elif type(v) is list and depth + 1 < _MAX_DEPTH:
                new = _seq(masker, v, depth + 1, keys)  # what _walk would call
            elif type(v) is int or type(v) is float:
                new = _number(masker, v, keys) if masker.detectors else v
            else:
                new = _walk(masker, v, depth + 1, keys)
        elif isinstance(k, str):
            info = _key(masker, keys, k)  # a str subclass: never read from the cache
            key = k if info[0] is None else info[0]
            if (info[2] if top else info[1]) and v is not None:
                new = masker.maskValue(k, "")
            else:
                new = _walk(masker, v, depth + 1, keys)
        else:
            key = k
            new = _walk(masker, v, depth + 1, keys)
        if out is None:
            if new is v and key is k:
                i += 1
                continue
            out = dict(islice(value.items(), i))
        out[key] = new
    return value if out is None else out


#: The memo's bounds: a dict of at most this many fields whose JSON is at
#: most _MEMO_BYTES long, and at most _MEMO_MAX of them per masker.
_MEMO_FIELDS = 16
_MEMO_BYTES = 1024
_MEMO_MAX = 1024
#: orjson refuses subclasses of str, int, float, dict and list, dataclasses,
#: datetimes, bytes, non-str keys, surrogates, ints past 64 bits and anything
#: else JSON does not hold, except enums, UUIDs, Fragments and tuples: a hit
#: must also equal the copy kept (no UUID, plain enum, Fragment, NaN, or
#: list for a tuple does) and have the same exact type at every leaf but
#: the texts (no int or float enum either; a str enum masks as its text does).
_JSON_KEY = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _memoDict(masker, value: dict, depth: int, keys: tuple[dict, dict, dict], top: bool) -> Any:
    """
    L{_dict} through the per-masker memo of small dicts (an HTTP request's
    headers and details, the whole event of a request a client repeats).
    Keyed on the exact content, never on identity: the dict's JSON, with
    C{depth} (the walk's depth limit depends on it), checked as said at
    C{_JSON_KEY}.  What it keeps and gives out are copies of their own: a
    caller that changes a dict it got or gave changes no later answer.
    (L{maskEvent} sends a statement's event, new each time, around it.)
    """
    if len(value) > _MEMO_FIELDS:
        return _dict(masker, value, depth, keys, top)
    try:
        key = orjson.dumps(value, option=_JSON_KEY)
    except TypeError:  # orjson.JSONEncodeError: not plain JSON data
        return _dict(masker, value, depth, keys, top)
    memo = keys[2]
    hit = memo.get((depth, key))
    if hit is not None and value == hit[0] and _sameLeaves(value, hit[1]):
        return value if hit[2] is None else _fresh(hit[2])
    out = _dict(masker, value, depth, keys, top)
    if len(key) <= _MEMO_BYTES:
        if len(memo) >= _MEMO_MAX:
            memo.clear()  # bounded; what recurs is learnt again at once
        kept = _private(value)
        memo[(depth, key)] = (kept, tuple(_leafTypes(kept, ())), None if out is value else _fresh(out))
    return out


def _private(value: Any) -> Any:
    """A copy of a dict the memo keeps: its dicts, lists and tuples new, its leaves (immutable: what orjson takes) shared."""
    t = type(value)
    if t is dict:
        return {k: _private(v) for k, v in value.items()}
    if t is list or t is tuple:
        return t(_private(v) for v in value)
    return value


def _leafTypes(value: Any, path: tuple) -> Any:
    """Where the leaves that are not texts or None are, and their exact types."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            yield from _leafTypes(v, (*path, k))
    elif t is list or t is tuple:
        for i, v in enumerate(value):
            yield from _leafTypes(v, (*path, i))
    elif t is not str and value is not None:
        yield path, t


def _sameLeaves(value: Any, numbers: tuple) -> bool:
    """Whether C{value} (equal to what was kept) has a leaf of exactly that type at each place."""
    for path, t in numbers:
        v = value
        for step in path:
            v = v[step]
        if type(v) is not t:
            return False
    return True


def _fresh(value: dict) -> dict:
    """A copy of a dict, its nested dicts and lists copied too (the memo holds nothing anyone else has)."""
    out = dict(value)
    for k, v in out.items():
        t = type(v)
        if t is dict:
            out[k] = _fresh(v)
        elif t is list:
            out[k] = _freshList(v)
    return out


def _freshList(value: list) -> list:
    return [_fresh(v) if type(v) is dict else _freshList(v) if type(v) is list else v for v in value]


def _seq(masker, value, depth: int, keys: tuple[dict, dict, dict]) -> Any:
    texts = keys[1]
    for v in value:
        if type(v) is not str or texts.get(v, _MISSING) is not None:
            break
    else:
        return value  # only short texts already known to mask to themselves
    items = [_walk(masker, v, depth + 1, keys) for v in value]
    for a, b in zip(items, value, strict=True):
        if a is not b:
            return type(value)(items) if isinstance(value, tuple) else items
    return value


def _number(masker, value: int | float, keys: tuple[dict, dict, dict]) -> Any:
    """A number as text masks (a parameter bound as a number can be a card number too)."""
    text = repr(value)
    n = len(text)
    if n < 8 and "+" not in text:
        return value
    hit = keys[1].get(text, _MISSING)
    if hit is None:
        return value  # known to mask to itself
    if (hit is _MISSING and n < 16 and "+" not in text
            and n - text.count(".") - text.count("-") - text.count("e") < 8):
        # Only digits, ".", "-" and lower-case letters ("e", "inf", "nan"):
        # every detector's value in those has 8 digits or more (a card 13,
        # a phone 8, an SSN 9), or needs a "+".  A statement's duration
        # (0.000123) has 7.
        return value
    masked = _shortText(masker, keys, text) if len(text) <= _SHORT else _text(masker, text)
    return value if masked is text else masked


def _other(masker, value: Any, depth: int, keys: tuple[dict, dict, dict], top: bool) -> Any:
    """Subclasses and the rarer types, as the general rules have them."""
    if isinstance(value, str):
        return _text(masker, value)
    if isinstance(value, (bytes, bytearray)):
        masked = masker.maskBytes(bytes(value))
        return value if masked == value else masked
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(value)
        masked = masker.maskText(text)
        return value if masked == text else masked
    if depth >= _MAX_DEPTH:
        return _text(masker, repr(value)) if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        return _dict(masker, value, depth, keys, top)
    if isinstance(value, (list, tuple)):
        return _seq(masker, value, depth, keys)
    return value


def _text(masker, text: str) -> str:
    first = text[:1]
    if masker.names and (first == "{" or first == "[" or first.isspace()):
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                return masker.maskJsonText(text)
            except MaskingFailed:
                pass
    if not masker.detectors:
        return text
    masked = masker.maskText(text)
    return text if masked == text else masked
