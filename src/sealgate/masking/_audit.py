"""Masking what a client typed before it is sealed in the log (audit event fields)."""

import weakref
from typing import Any

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
    try:
        memo = _memo.get(masker)
        if memo is None:
            memo = _memo[masker] = {}
    except TypeError:  # a masker that cannot be weakly referenced
        memo = {}
    out = _walk(masker, fields, 0, memo, top=True)
    return fields if out is fields else out


def _walk(masker, value: Any, depth: int, memo: dict, top: bool = False) -> Any:
    if isinstance(value, str):
        return _text(masker, value, memo)
    if isinstance(value, (bytes, bytearray)):
        masked = masker.maskBytes(bytes(value))
        return value if masked == value else masked
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A parameter bound as a number can be a card number too.
        text = repr(value)
        masked = _text(masker, text, memo)
        return value if masked == text else masked
    if depth >= _MAX_DEPTH:
        return _text(masker, repr(value), memo) if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        out = {}
        changed = False
        for k, v in value.items():
            key = _text(masker, k, memo) if isinstance(k, str) else k
            if (isinstance(k, str) and v is not None and not (top and k in STRUCTURAL)
                    and masker.columnMasked(k)):
                new: Any = masker.maskValue(k, "")
            else:
                new = _walk(masker, v, depth + 1, memo)
            changed |= new is not v or key is not k
            out[key] = new
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [_walk(masker, v, depth + 1, memo) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    return value


#: Masked short strings by masker: an HTTP request's audit event is mostly
#: the same header values, path and method as the one before, and a
#: masker is a pure function of its text (it holds no session state).
_memo: "weakref.WeakKeyDictionary[Any, dict[str, str]]" = weakref.WeakKeyDictionary()
_MEMO_LENGTH = 256
_MEMO_ENTRIES = 4096


def _text(masker, text: str, memo: dict) -> str:
    if len(text) > _MEMO_LENGTH:
        return _maskedText(masker, text)
    found = memo.get(text)
    if found is None:
        found = _maskedText(masker, text)
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()
        memo[text] = found
    return found


def _maskedText(masker, text: str) -> str:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[") and masker.names:
        try:
            return masker.maskJsonText(text)
        except MaskingFailed:
            pass
    masked = masker.maskText(text)
    return text if masked == text else masked
