"""Masking what a client typed before it is sealed in the log (audit event fields)."""

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
    out = _walk(masker, fields, 0, top=True)
    return fields if out is fields else out


def _walk(masker, value: Any, depth: int, top: bool = False) -> Any:
    if isinstance(value, str):
        return _text(masker, value)
    if isinstance(value, (bytes, bytearray)):
        masked = masker.maskBytes(bytes(value))
        return value if masked == value else masked
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A parameter bound as a number can be a card number too.
        text = repr(value)
        masked = masker.maskText(text)
        return value if masked == text else masked
    if depth >= _MAX_DEPTH:
        return _text(masker, repr(value)) if isinstance(value, (dict, list, tuple)) else value
    if isinstance(value, dict):
        out = {}
        changed = False
        for k, v in value.items():
            key = _text(masker, k) if isinstance(k, str) else k
            if (isinstance(k, str) and v is not None and not (top and k in STRUCTURAL)
                    and masker.columnMasked(k)):
                new: Any = masker.maskValue(k, "")
            else:
                new = _walk(masker, v, depth + 1)
            changed |= new is not v or key is not k
            out[key] = new
        return out if changed else value
    if isinstance(value, (list, tuple)):
        items = [_walk(masker, v, depth + 1) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if isinstance(value, tuple) else items
    return value


def _text(masker, text: str) -> str:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[") and masker.names:
        try:
            return masker.maskJsonText(text)
        except MaskingFailed:
            pass
    masked = masker.maskText(text)
    return text if masked == text else masked
