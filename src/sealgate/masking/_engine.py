"""The masking engine: detectors over text and bytes, redacted names, JSON documents."""

import fnmatch
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool

from sealgate.masking._body import UNKNOWN_CONTENT, maskEncodedBody
from sealgate.masking._detectors import DETECTORS, MIN_VALUE, Detector, Probe, Span
from sealgate.masking._detectors import suspect as _suspect
from sealgate.masking._errors import MaskingFailed
from sealgate.masking._scanning import applySpans
from sealgate.masking._stream import StreamMasker

#: Bodies up to this size are masked inline by L{Masker.maskBodyAsync}.
INLINE = 64 * 1024

#: What a redacted column or JSON field's value becomes (its length is not kept).
REDACTED = "********"

#: What C{[masking] record_input} may say.
RECORD_INPUT = ("raw", "masked")


class Masker:
    """
    Masks what a session sends to its client: values found by detectors in
    any text, and whole values under redacted column or field names.

    One is built per gateway from C{[masking]} (L{buildMasker}) and shared
    by every session it applies to; it holds no per-session state (stream
    state lives in L{streamMasker}'s objects).

    @ivar detectors: the L{Detector}s in use, in a fixed order.
    @ivar names: the glob patterns of redacted column / JSON field names
        (C{columns} and C{json_fields} together: a name redacted in one
        place is redacted everywhere).
    """

    def __init__(self, detectors: Iterable[str] = (), columns: Iterable[str] = (),
                 jsonFields: Iterable[str] = (), unknownContent: str | None = None,
                 recordInput: str = "raw"):
        detectors = tuple(detectors)
        if recordInput not in RECORD_INPUT:
            raise ValueError(f"record_input must be one of {', '.join(RECORD_INPUT)}")
        #: How client input is recorded in the session tree: "raw" (as sent,
        #: the evidence) or "masked" (by the detectors, docs/masking.md).
        self.recordInput = recordInput
        if unknownContent is not None and unknownContent not in UNKNOWN_CONTENT:
            raise ValueError(f"unknown_content must be one of {', '.join(UNKNOWN_CONTENT)}")
        #: What a body that is not text gets: None means "refuse" with
        #: detectors, else "pass" (L{sealgate.masking._body.unknownPolicy}).
        self.unknownContent = unknownContent
        self.detectors: tuple[Detector, ...] = tuple(DETECTORS[n] for n in DETECTORS
                                                     if n in set(detectors))
        unknown = set(detectors) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(sorted(unknown))}")
        self.names: tuple[str, ...] = tuple(dict.fromkeys(list(columns) + list(jsonFields)))
        self._namesRe = (re.compile("|".join(fnmatch.translate(p.lower()) for p in self.names))
                         if self.names else None)
        self._nameCache: dict[str, bool] = {}
        # A key matches a name's glob only if it holds the glob's longest
        # literal run, so a document holding none of them has no redacted
        # field and skips the per-key walk.  Bracket globs get no hint.
        hints: list[str] = []
        hintable = True
        for p in self.names:
            runs = [r for r in re.split(r"[*?]", p.lower()) if r]
            if "[" in p or not runs:
                hintable = False
                break
            hints.append(max(runs, key=len))
        self._nameHints: tuple[str, ...] | None = tuple(hints) if hintable else None
        # Keys under a redacted name, found directly in an escape-free
        # document ("name" then a colon; a glob's * never crosses a quote),
        # so only those keys cost a Python step, not every string.
        self._keyRe = (re.compile('"(%s)"\\s*:' % "|".join(_globRegex(p) for p in self.names), re.I)
                       if self.names and hintable else None)

    @classmethod
    def fromConfig(cls, config) -> "Masker":
        """From a L{sealgate.config.MaskingConfig}."""
        return cls(config.detectors, config.columns, config.json_fields,
                   getattr(config, "unknown_content", None),
                   getattr(config, "record_input", "raw"))

    # -- text -----------------------------------------------------------------

    def spans(self, text: str, pos: int = 0, raw: bytes | None = None) -> list[Span]:
        """Every detector's spans in C{text} from C{pos} (unsorted)."""
        out: list[Span] = []
        # Column values are mostly short: one cheap look before eight prefilters.
        if len(text) - pos < 256 and (len(text) - pos < MIN_VALUE
                                      or not _suspect(text, pos)):
            return out
        probe = Probe(text, raw)
        for d in self.detectors:
            if d.prefilter(probe):
                out.extend(d.scan(text, pos, probe))
        return out

    def findings(self, text: str) -> list[tuple[int, int, str]]:
        """Each detected value in C{text} as C{(start, end, detector name)}, in order."""
        probe = Probe(text, None)
        out = [(start, end, d.name) for d in self.detectors if d.prefilter(probe)
               for start, end, _ in d.scan(text, 0, probe)]
        return sorted(out)

    def maskText(self, text: str) -> str:
        """C{text} with every detected value masked, same length."""
        if not self.detectors:
            return text
        return applySpans(text, self.spans(text))

    def maskBytes(self, data: bytes) -> bytes:
        """
        L{maskText} over UTF-8.  Bytes that are not UTF-8 pass through
        unchanged and byte for byte (they are never part of a value); only
        ASCII bytes are ever replaced, so the length stays the same.
        """
        if not self.detectors or not data:
            return data
        text = data.decode("utf-8", "surrogateescape")
        spans = self.spans(text, 0, data)
        if not spans:
            return data
        return applySpans(text, spans).encode("utf-8", "surrogateescape")

    # -- named values -----------------------------------------------------------

    def columnMasked(self, name: str) -> bool:
        """Whether a column or field of this name is redacted whole (globs, any case)."""
        if self._namesRe is None:
            return False
        hit = self._nameCache.get(name)
        if hit is None:
            hit = self._namesRe.match(name.lower()) is not None
            if len(self._nameCache) < 10000:
                self._nameCache[name] = hit
        return hit

    def maskValue(self, column: str | None, value: str) -> str:
        """One value of a column (or field): L{REDACTED} if the name is, else L{maskText}."""
        if column is not None and self.columnMasked(column):
            return REDACTED
        return self.maskText(value)

    # -- JSON -----------------------------------------------------------------

    def maskJson(self, obj: Any) -> Any:
        """
        A JSON-like object (dicts, lists, str, numbers...) with values under
        redacted names replaced by L{REDACTED} (null stays null), detectors
        applied to every string, key and number (a number holding a value
        becomes its masked string).
        """
        if isinstance(obj, str):
            return self.maskText(obj)
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                key = self.maskText(k) if isinstance(k, str) else k
                if isinstance(k, str) and v is not None and self.columnMasked(k):
                    out[key] = REDACTED
                else:
                    out[key] = self.maskJson(v)
            return out
        if isinstance(obj, (list, tuple)):
            return [self.maskJson(v) for v in obj]
        if isinstance(obj, (int, float)) and not isinstance(obj, bool):
            text = repr(obj)
            masked = self.maskText(text)
            return obj if masked == text else masked
        return obj

    def maskJsonBytes(self, data: bytes, encoding: str = "utf-8") -> bytes:
        """
        A JSON document, masked as L{maskJson} does, keeping its layout,
        key order and numbers exactly (only strings and numbers holding a
        value are rewritten).

        @raise MaskingFailed: not valid JSON in C{encoding}.
        """
        try:
            if encoding.lower() in ("utf-8", "utf8"):
                # utf-8-sig is a Python-level codec: strip the BOM, decode in C.
                text = (data[3:] if data.startswith(b"\xef\xbb\xbf") else data).decode("utf-8")
            else:
                text = data.decode(encoding)
        except (UnicodeDecodeError, LookupError) as e:
            raise MaskingFailed(f"JSON body is not valid {encoding}: {type(e).__name__}") from None
        masked = self.maskJsonText(text)
        if masked is text:
            return data
        return masked.encode(encoding)

    def maskJsonText(self, text: str) -> str:
        """L{maskJsonBytes} on a str; returns C{text} itself when nothing changed."""
        _checkJson(text)
        # Detectors run once over the whole document: masks only ever put
        # '*' over value characters, never over quotes or punctuation, and a
        # key next to its value is seen too ("aws_secret_access_key": "...").
        spans = self.spans(text) if self.detectors else []
        masked = applySpans(text, spans) if spans else text
        if "\\" not in text:
            # Without escapes every key is a plain "..." before a colon; the
            # token-by-token walk is only needed when escapes can hide one.
            fast = self._redactPlain(text, masked, spans)
            if fast is not None:
                return fast
        return _JsonRewriter(self, text, masked).run()

    def _redactPlain(self, text: str, masked: str, spans=None) -> str | None:
        """Redact named values in an escape-free document; None if a number got masked."""
        out: list[str] = []
        last = 0
        hints = self._nameHints
        if self._namesRe is not None and (hints is None or any(
                h in lowered for lowered in (text.lower(),) for h in hints)):
            decode = _DECODER.raw_decode
            for m in self._namedKeys(text):
                if m.start() < last or not self.columnMasked(m.group(1)):
                    continue
                space = _SPACE.match(text, m.end())
                assert space is not None  # \s* matches even the empty string
                value = space.end()
                _obj, end = decode(text, value)
                if text.startswith("null", value):
                    continue
                out.append(masked[last:value])
                out.append(f'"{REDACTED}"')
                last = end
        if not out:
            if masked is text:
                return text
            result = masked
        else:
            out.append(masked[last:])
            result = "".join(out)
        if masked is not text and not (spans and _insideStrings(text, spans)):
            try:
                _checkJson(result)
            except MaskingFailed:
                return None     # a number was masked: it must become a string
        return result

    def _namedKeys(self, text: str) -> Iterator[re.Match[str]]:
        """The keys of an escape-free document that a redacted name may match, in order."""
        if self._keyRe is None:
            for key in _PLAIN_STRING.finditer(text):
                if key.group(2):
                    yield key
            return
        search = self._keyRe.search
        count = text.count
        quotes = 0
        at = 0
        m: re.Match[str] | None = search(text)
        while m is not None:
            s = m.start()
            quotes += count('"', at, s)
            at = s
            if quotes % 2 == 0:
                # An opening quote (quotes pair up without escapes): a real key.
                yield m
                m = search(text, m.end())
            else:
                m = search(text, s + 1)

    # -- streams and bodies --------------------------------------------------------

    def streamMasker(self, maxHold: int | None = None) -> StreamMasker:
        """A new L{sealgate.masking.StreamMasker} for one output stream."""
        return StreamMasker(self) if maxHold is None else StreamMasker(self, maxHold)

    def maskEncodedBody(self, body: bytes, content_encoding: str | None,
                        content_type: str | None, reencode: bool = True) -> tuple[bytes, str]:
        """See L{sealgate.masking._body.maskEncodedBody}."""
        return maskEncodedBody(self, body, content_encoding, content_type, reencode)

    def maskBodyAsync(self, body: bytes, content_encoding: str | None, content_type: str | None,
                      reencode: bool = True, *, reactor=None, threadpool=None,
                      inline: int = INLINE) -> Deferred[tuple[bytes, str]]:
        """
        L{maskEncodedBody} off the reactor thread: a body over C{inline}
        bytes is decoded, masked and re-encoded in C{threadpool} (the
        reactor's by default), so one big response never stalls the other
        sessions; a small one is done at once (a thread hop costs more).
        The Deferred fails with L{MaskingFailed} where the call would raise.
        """
        if len(body) <= inline:
            try:
                return succeed(self.maskEncodedBody(body, content_encoding, content_type, reencode))
            except Exception:
                return fail()
        if reactor is None:
            from twisted.internet import reactor as default  # resolved late: never at import time

            reactor = default
        if threadpool is None:
            threadpool = reactor.getThreadPool()
        return deferToThreadPool(reactor, threadpool, self.maskEncodedBody, body, content_encoding,
                                 content_type, reencode)


def _globRegex(pattern: str) -> str:
    """A name glob (no brackets) as a regex that matches inside one JSON string."""
    return "".join('[^"]*' if c == "*" else '[^"]' if c == "?" else re.escape(c) for c in pattern)


def _checkJson(text: str) -> None:
    """
    @raise MaskingFailed: C{text} is not a JSON document.  orjson checks a
    valid one in a fraction of json's time; what it refuses (NaN, huge
    numbers, lone surrogates...) gets the standard library's verdict.
    """
    try:
        orjson.loads(text)
        return
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MaskingFailed(f"JSON body does not parse: {type(e).__name__} at "
                            f"position {getattr(e, 'pos', '?')}") from None


def _insideStrings(text: str, spans) -> bool:
    """
    Whether every span lies inside a string of an escape-free, valid JSON
    document (quotes pair up there: an odd count before a position means
    inside).  Masking only there keeps the document valid, unparsed.
    """
    count = text.count
    # Quotes are counted once, from one span's start to the next (sorted),
    # so the check is linear in the document, not in documents x spans.
    quotes = 0
    at = 0
    for s, e, _r in sorted(spans):
        quotes += count('"', at, s)
        at = s
        if quotes % 2 == 0 or count('"', s, e):
            return False
    return True


# JSON tokens in a document already known to be valid: strings, punctuation,
# and bare words (numbers, true, false, null).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^\s{}\[\],:"]+', re.S)


# Without escapes a string holds no quote, so quotes pair up and matching
# every string in order tells keys (followed by a colon) from values exactly.
_PLAIN_STRING = re.compile(r'"([^"]*)"(\s*:)?')
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


class _JsonRewriter:
    """
    One pass over a valid JSON text rewriting only what must change:
    redacted names' values, strings and numbers the document-wide masking
    changed, escaped strings (masked after decoding).
    """

    def __init__(self, masker: Masker, text: str, masked: str):
        self.masker = masker
        self.text = text
        self.masked = masked

    def run(self) -> str:
        masker, text = self.masker, self.text
        out: list[str] = []
        last = 0
        stack: list[str] = []
        expectKey = False
        redactNext = False
        skipFrom = -1     # start of a redacted container
        skipDepth = 0
        for m in _TOKEN.finditer(text):
            tok = m.group()
            c = tok[0]
            if skipFrom >= 0:
                if c in "{[":
                    skipDepth += 1
                elif c in "}]":
                    skipDepth -= 1
                    if skipDepth == 0:
                        out.append(text[last:skipFrom])
                        out.append(f'"{REDACTED}"')
                        last = m.end()
                        skipFrom = -1
                continue
            if c == "{":
                if redactNext:
                    skipFrom, skipDepth, redactNext = m.start(), 1, False
                    continue
                stack.append("{")
                expectKey = True
            elif c == "[":
                if redactNext:
                    skipFrom, skipDepth, redactNext = m.start(), 1, False
                    continue
                stack.append("[")
            elif c in "}]":
                stack.pop()
                expectKey = False
            elif c == ",":
                expectKey = bool(stack) and stack[-1] == "{"
            elif c == ":":
                pass
            elif c == '"':
                if expectKey:
                    expectKey = False
                    key = json.loads(tok) if "\\" in tok else tok[1:-1]
                    redactNext = masker.columnMasked(key)
                    new = self._string(tok, key, m)
                elif redactNext:
                    redactNext = False
                    new = f'"{REDACTED}"'
                else:
                    new = self._string(tok, None, m)
                if new is not None:
                    out.append(text[last:m.start()])
                    out.append(new)
                    last = m.end()
            else:
                if redactNext:
                    redactNext = False
                    if tok != "null":
                        out.append(text[last:m.start()])
                        out.append(f'"{REDACTED}"')
                        last = m.end()
                elif masker.detectors:
                    masked = self.masked[m.start():m.end()]
                    if masked != tok:
                        out.append(text[last:m.start()])
                        out.append(json.dumps(masked))
                        last = m.end()
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _string(self, tok: str, decoded: str | None, m: re.Match) -> str | None:
        masker = self.masker
        if not masker.detectors:
            return None
        if "\\" not in tok:
            # No escapes: the document-wide masking of the token stands.
            masked = self.masked[m.start():m.end()]
            return None if masked == tok else masked
        value = json.loads(tok) if decoded is None else decoded
        masked = masker.maskText(value)
        # ensure_ascii: an escaped lone surrogate must stay escaped.
        return None if masked == value else json.dumps(masked)
