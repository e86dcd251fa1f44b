"""Byte formats of the sealed store: frame leaves, log leaves, segment records (no I/O)."""

import hashlib
import json
import math
import re
import struct

import attrs
import orjson

VERSION = 1
KIND_FRAME = 1
KIND_LOG = 2
MAX_FRAME = 16 * 1024
SALT_SIZE = 16
COMMIT_TAG = b"sealgate/frame-payload/v1\x00"
NO_PREV = b"\x00" * 32

#: version, kind, session id length (then the id itself).
PREFIX = struct.Struct(">BBB")
#: seq, time, channel, direction, stream offset, payload length.
FRAME_FIELDS = struct.Struct(">QdIBQI")
#: leaf length, salt length, payload length of one segment record.
RECORD = struct.Struct(">HBI")

LOG_TYPES = ("open", "progress", "event", "close")
_SECRET_KEY = re.compile(
    r"(^|[_.-])(pass|password|passwd|secret|token|api_?key|authorization|credentials?|cookie)($|[_.-])",
    re.I)


class FormatError(ValueError):
    """Stored bytes do not parse as what they should be."""


def framePrefix(sessionId: str) -> bytes:
    sid = sessionId.encode()
    if not 0 < len(sid) < 256:
        raise ValueError(f"session id {sessionId!r} must be 1 to 255 bytes")
    return PREFIX.pack(VERSION, KIND_FRAME, len(sid)) + sid


def commitment(salt, payload) -> bytes:
    """SHA-256 over a domain tag, the per-frame salt and the payload."""
    h = hashlib.sha256(COMMIT_TAG)
    h.update(salt)
    h.update(payload)
    return h.digest()


@attrs.frozen
class FrameLeaf:
    """The fields of one frame leaf (what the session tree commits to)."""

    sessionId: str
    seq: int
    time: float
    channel: int
    direction: int
    offset: int
    length: int
    prev: bytes
    commitment: bytes


def parseFrameLeaf(leaf) -> FrameLeaf:
    leaf = bytes(leaf)
    if len(leaf) < PREFIX.size:
        raise FormatError("frame leaf is too short")
    version, kind, n = PREFIX.unpack_from(leaf)
    if version != VERSION or kind != KIND_FRAME:
        raise FormatError(f"frame leaf has version {version} kind {kind}")
    if len(leaf) != PREFIX.size + n + FRAME_FIELDS.size + 64:
        raise FormatError("frame leaf has the wrong length")
    try:
        sid = leaf[PREFIX.size : PREFIX.size + n].decode()
    except UnicodeDecodeError:
        raise FormatError("frame leaf's session id is not UTF-8")
    at = PREFIX.size + n
    seq, t, channel, direction, offset, length = FRAME_FIELDS.unpack_from(leaf, at)
    at += FRAME_FIELDS.size
    return FrameLeaf(sid, seq, t, channel, direction, offset, length, leaf[at : at + 32], leaf[at + 32 :])


def iterRecords(buf, start: int = 0, end: int | None = None):
    """
    Yield C{(leaf, salt, payload)} memoryviews from concatenated segment records.

    @raise FormatError: when a record runs past C{end}.
    """
    mv = memoryview(buf)
    at = start
    end = len(mv) if end is None else end
    unpack = RECORD.unpack_from
    while at < end:
        if at + RECORD.size > end:
            raise FormatError(f"record header cut off at byte {at}")
        ll, sl, pl = unpack(mv, at)
        at += RECORD.size
        nxt = at + ll + sl + pl
        if nxt > end:
            raise FormatError(f"record cut off at byte {at}")
        yield mv[at : at + ll], mv[at + ll : at + ll + sl], mv[at + ll + sl : nxt]
        at = nxt


def secretSpans(buf):
    """Yield C{(offset, size)} of each record's salt-and-payload bytes (what redaction erases)."""
    at = 0
    while at + RECORD.size <= len(buf):
        ll, sl, pl = RECORD.unpack_from(buf, at)
        yield at + RECORD.size + ll, sl + pl
        at += RECORD.size + ll + sl + pl


_secretKeys: dict = {}
#: Keys (exactly str) known to be no secret: a dict with only these is checked in C.
_safeKeys: set = set()


def _secretKey(key: str) -> bool:
    hit = _secretKeys.get(key)
    if hit is None:
        hit = _SECRET_KEY.search(key) is not None
        if len(_secretKeys) < 4096:
            _secretKeys[key] = hit
            if not hit and type(key) is str:
                _safeKeys.add(key)
    return hit


_PLAIN = frozenset({str, int, bool, type(None)})


def scrub(fields):
    """
    C{fields} with values under secret-looking keys replaced, so a
    credential is never stored.  Dicts and lists are copied only where
    something changes: the caller owns what it passes and never mutates it.
    """
    # Called for every audit event by the writer: key checks are cached,
    # a dict of known keys and plain values is checked without a Python
    # loop, and plain values are not recursed into.
    kind = type(fields)
    if kind is dict and _safeKeys.issuperset(fields):
        if _PLAIN.issuperset(map(type, fields.values())):
            return fields
        changed = None
        for k, v in fields.items():
            if type(v) not in _PLAIN and not (type(v) is float and v - v == 0.0):  # a finite float is kept
                value = scrub(v)
                if value is not v:
                    if changed is None:
                        changed = dict(fields)
                    changed[k] = value
        return fields if changed is None else changed
    if kind is dict or isinstance(fields, dict):
        out = None
        for k, v in fields.items():
            key = k if type(k) is str else str(k)
            if _secretKey(key):
                value = "[removed]"
            elif type(v) in _PLAIN:
                value = v
            else:
                value = scrub(v)
            if key is k and value is v:
                continue
            if out is None:
                out = dict(fields)
            if key is not k:
                del out[k]
            out[key] = value
        if out is not None:
            return out
        return fields if kind is dict else dict(fields)
    if kind in _PLAIN:
        return fields
    if isinstance(fields, (list, tuple)):
        if _PLAIN.issuperset(map(type, fields)):
            return fields  # plain items only: JSON writes a tuple as a list anyway
        for v in fields:
            if type(v) not in _PLAIN:
                return [v if type(v) in _PLAIN else scrub(v) for v in fields]
        return fields  # plain items only: JSON writes a tuple as a list anyway
    if isinstance(fields, (str, int, bool)):
        return fields
    if isinstance(fields, float) and math.isfinite(fields):
        return fields
    return str(fields)


#: Built once: json.dumps with options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonicalJson(obj) -> bytes:
    """
    Sorted keys, no spaces, UTF-8, numbers in their shortest round-trip
    form.  orjson writes it (an eighth of json's time: one per audit
    event); what it refuses (integers past 64 bits, lone surrogates from
    bytes that were not UTF-8) goes to json, surrogates as \\u escapes,
    so no event can stall the writer.  Leaves are hashed as stored and
    never re-encoded, so the two encoders need not agree on every float.
    """
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return _CANONICAL.encode(obj).encode("utf-8", "backslashreplace")


def sqlText(text: str) -> str:
    """C{text} as SQLite can store it: lone surrogates (bytes that were not UTF-8) as escapes."""
    if text.isascii():
        return text
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


LOG_HEAD = bytes([VERSION, KIND_LOG])


def logLeaf(body: dict) -> bytes:
    """A log leaf: version and kind bytes, then canonical JSON."""
    return LOG_HEAD + canonicalJson(body)


def parseLogLeaf(leaf) -> dict:
    leaf = bytes(leaf)
    if len(leaf) < 2 or leaf[0] != VERSION or leaf[1] != KIND_LOG:
        raise FormatError("log leaf has the wrong version or kind bytes")
    try:
        body = json.loads(leaf[2:])
    except ValueError:
        raise FormatError("log leaf is not JSON")
    if not isinstance(body, dict) or body.get("type") not in LOG_TYPES:
        raise FormatError("log leaf has no known type")
    if not isinstance(body.get("n"), int) or not isinstance(body.get("prev"), str):
        raise FormatError("log leaf lacks its index or previous hash")
    return body
