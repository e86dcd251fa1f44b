"""Bodies by media type: the shared text-type list, charsets and BOMs, sniffing, multipart,
the bounded streaming decoder, BodyStream and masking off the reactor thread."""

import codecs
import gzip
import zlib

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from sealgate.masking import (
    BodyStream,
    ContentDecoder,
    ContentTooLarge,
    Masker,
    MaskingFailed,
    isTextType,
    knownDetectors,
    mediaType,
    sniffText,
)

ALL = sorted(knownDetectors())
MASKER = Masker(ALL, jsonFields=["password"])
CARD = "4111111111111111"
MASKED = "************1111"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("ctype, kind", [
    ("application/json", "json"), ("application/vnd.api+json; charset=utf-8", "json"),
    ("application/problem+json", "json"), ("text/json", "json"),
    ("text/plain", "text"), ("text/csv", "text"), ("text/x-sql", "text"),
    ("application/xml", "text"), ("application/atom+xml", "text"), ("application/yaml", "text"),
    ("application/x-yaml", "text"), ("application/foo+yaml", "text"), ("application/csv", "text"),
    ("application/sql", "text"), ("application/x-ndjson", "text"), ("application/jsonl", "text"),
    ("application/json-seq", "text"), ("application/x-www-form-urlencoded", "text"),
    ("application/javascript", "text"), ("APPLICATION/GraphQL", "text"),
    ("multipart/form-data; boundary=xyz", "multipart"), ("multipart/mixed", "other"),
    ("image/png", "other"), ("application/octet-stream", "other"), ("", "none"), (None, "none"),
])
def test_one_list_of_text_types(ctype, kind):
    assert mediaType(ctype).kind == kind
    assert isTextType(ctype) == (kind in ("json", "text"))


@given(st.lists(st.sampled_from(["text/plain", "TEXT/PLAIN; charset=UTF-16", b"application/json",
                                  "multipart/form-data; boundary=a", "image/png", b"text/csv;charset=latin-1",
                                  "", None, "x" * 300 + "/json"]), max_size=20))
def test_a_content_type_seen_before_parses_as_it_did_the_first_time(values):
    from sealgate.masking import _content

    for v in values:
        _content._mediaTypes.clear()
        first = mediaType(v)
        assert mediaType(v) == first == _content._parseMediaType(v)
        assert mediaType(v.decode() if isinstance(v, bytes) else v) == first


def _textCodecAsBefore(data: bytes, charset):
    """L{textCodec} as it was before its caches: every BOM tried, every label looked up."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
                       (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                       (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return bom, codec
    name = (charset or "utf-8").strip().lower()
    try:
        info = codecs.lookup({"utf-16": "utf-16-le", "utf-32": "utf-32-le"}.get(name, name))
    except LookupError:
        return MaskingFailed
    return b"", info.name


_BOM_PIECES = st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE,
                               codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, b"\xff", b"\xef\xbb", b"\x00\x00",
                               b"\x00", b"{"])


@given(st.lists(st.tuples(st.lists(_BOM_PIECES, max_size=3).map(b"".join),
                          st.sampled_from([None, "utf-8", " UTF-8 ", "utf-16", "UTF-32", "latin-1", "koi8-r",
                                           "no-such-charset", "", "x" * 80])), max_size=12))
def test_a_text_codec_seen_before_is_the_one_found_the_first_time(asks):
    from sealgate.masking import textCodec

    for data, charset in asks:
        expected = _textCodecAsBefore(data, charset)
        if expected is MaskingFailed:
            with pytest.raises(MaskingFailed):
                textCodec(data, charset)
        else:
            assert textCodec(data, charset) == expected


@pytest.mark.parametrize("codec, bom", [
    ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32-le", codecs.BOM_UTF32_LE), ("utf-32-be", codecs.BOM_UTF32_BE),
    ("utf-8", codecs.BOM_UTF8),
])
@pytest.mark.parametrize("ctype", ["text/plain", "application/json", None])
def test_bom_bodies_masked_in_their_own_encoding(codec, bom, ctype):
    doc = f'{{"card": "{CARD}", "name": "Zoë"}}'
    body = bom + doc.encode(codec)
    out, _ = MASKER.maskEncodedBody(body, None, ctype)
    assert out == bom + doc.replace(CARD, MASKED).encode(codec)


@pytest.mark.parametrize("label, codec", [("utf-16", "utf-16-le"), ("UTF-16BE", "utf-16-be"),
                                          ("utf-32", "utf-32-le"), ("shift_jis", "shift_jis"),
                                          ("windows-1252", "cp1252")])
def test_charset_label_without_bom(label, codec):
    word = "日本" if codec == "shift_jis" else "café"
    body = f"card {CARD} {word}".encode(codec)
    out, _ = MASKER.maskEncodedBody(body, None, f"text/plain; charset={label}")
    assert out == f"card {MASKED} {word}".encode(codec)


def test_invalid_utf16_text_fails_closed():
    with pytest.raises(MaskingFailed, match="not valid"):
        MASKER.maskEncodedBody(b"\x00\xd8\x41", None, "text/plain; charset=utf-16le")


def test_untyped_and_unknown_bodies_are_sniffed():
    assert sniffText(b"plain words") == (b"", "utf-8")
    assert sniffText(b"\x89PNG\x00\x00") is None
    assert sniffText(b"caf\xc3", final=False) == (b"", "utf-8")   # cut inside a character
    assert sniffText(b"caf\xc3") is None
    assert MASKER.maskEncodedBody(f"x {CARD}".encode(), None, "application/octet-stream")[0] == \
        f"x {MASKED}".encode()


BOUNDARY = "----b0und"


def _multipart(*parts, preamble=b"", epilogue=b"") -> bytes:
    out = preamble
    for head, body in parts:
        out += b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n\r\n" + body + b"\r\n"
    return out + b"--" + BOUNDARY.encode() + b"--\r\n" + epilogue


def test_multipart_parts_masked_by_their_own_types():
    body = _multipart(
        (b"Content-Disposition: form-data; name=\"a\"; filename=\"jane@example.com.txt\"\r\n"
         b"Content-Type: text/plain", f"card {CARD}".encode()),
        (b"Content-Type: application/json", b'{"password": "hunter2", "n": 1}'),
        (b"Content-Type: text/plain; charset=utf-16", f"card {CARD}".encode("utf-16-le")),
        (b"Content-Disposition: form-data; name=\"untyped\"", f"{CARD}".encode()),
        preamble=f"pre {CARD}\r\n".encode(), epilogue=f"post {CARD}".encode())
    out, _ = MASKER.maskEncodedBody(body, None, f"multipart/form-data; boundary={BOUNDARY}")
    assert CARD.encode() not in out and CARD.encode("utf-16-le") not in out
    assert b"****@example.com.txt" in out
    assert b'{"password": "********", "n": 1}' in out
    assert f"card {MASKED}".encode("utf-16-le") in out
    assert len(out) == len(body) - len("hunter2") + len("********")


def test_multipart_binary_part_goes_by_unknown_content():
    body = _multipart((b"Content-Type: image/png", b"\x89PNG\x00" + CARD.encode()))
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    with pytest.raises(MaskingFailed, match="unknown_content"):
        MASKER.maskEncodedBody(body, None, ctype)
    assert Masker(ALL, unknownContent="pass").maskEncodedBody(body, None, ctype)[0] == body


@pytest.mark.parametrize("body", [
    b"no boundary here",
    b"--" + BOUNDARY.encode() + b"\r\nContent-Type: text/plain\r\n\r\nnever closed",
    b"--" + BOUNDARY.encode() + b"\r\nContent-Transfer-Encoding: base64\r\n\r\nNDExMQ==\r\n--"
    + BOUNDARY.encode() + b"--",
], ids=["no-boundary", "unclosed", "base64-part"])
def test_malformed_multipart_fails_closed(body):
    with pytest.raises(MaskingFailed):
        MASKER.maskEncodedBody(body, None, f"multipart/mixed; boundary={BOUNDARY}")


# -- the bounded decoder --------------------------------------------------------------------


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CODECS = {"gzip": lambda b: gzip.compress(b, mtime=0), "deflate": zlib.compress,
          "raw-deflate": _deflate, "br": brotli.compress}


@SETTINGS
@given(st.binary(max_size=3000), st.sampled_from(sorted(CODECS)), st.lists(st.integers(0, 10**6),
                                                                             max_size=8))
def test_decoder_is_exact_for_any_chunking(data, name, cuts):
    coding = "deflate" if name == "raw-deflate" else name
    d = ContentDecoder(coding, limit=len(data))
    out = b"".join(d.decode(p) for p in _pieces(CODECS[name](data), cuts))
    d.finish()
    assert out == data


@SETTINGS
@given(st.sampled_from(sorted(CODECS)), st.lists(st.integers(0, 10**6), max_size=8))
def test_bomb_fails_closed_for_any_chunking_without_inflating(name, cuts):
    coding = "deflate" if name == "raw-deflate" else name
    bomb = CODECS[name](b"\0" * 2_000_000)
    d = ContentDecoder(coding, limit=100_000)
    with pytest.raises(ContentTooLarge):
        for p in _pieces(bomb, cuts):
            assert len(d.decode(p)) <= 100_000
        d.finish()


def test_stacked_codings_are_undone_in_reverse_and_bounded():
    body = brotli.compress(gzip.compress(b"a" * 50_000, mtime=0))
    d = ContentDecoder("gzip, br", limit=50_000)
    assert d.decode(body) == b"a" * 50_000
    d.finish()
    with pytest.raises(ContentTooLarge):
        ContentDecoder("gzip, br", limit=49_999).decode(body)


@pytest.mark.parametrize("coding, body", [
    ("gzip", gzip.compress(b"abc", mtime=0)[:-4]), ("br", brotli.compress(b"abc" * 99)[:-2]),
    ("gzip", gzip.compress(b"abc", mtime=0) + b"x"), ("deflate", b"x"),
], ids=["truncated-gzip", "truncated-br", "trailing-bytes", "one-byte-deflate"])
def test_truncated_or_trailing_streams_refused(coding, body):
    d = ContentDecoder(coding)
    with pytest.raises(MaskingFailed):
        d.decode(body)
        d.finish()


def test_zstd_is_refused_by_name():
    with pytest.raises(MaskingFailed, match="zstd"):
        ContentDecoder("zstd")


# -- BodyStream ------------------------------------------------------------------------------


def _stream(masker, ctype, coding, body, cuts, limit=10**7) -> bytes:
    s = BodyStream(masker, ctype, coding, limit)
    return b"".join(s.feed(p) for p in _pieces(body, cuts)) + s.finish()


DOCS = st.sampled_from([
    ("text/plain", f"card {CARD}\nmail jane@example.com\n".encode() * 40),
    ("application/json", f'{{"card": "{CARD}", "password": "x"}}'.encode()),
    ("text/plain; charset=utf-16", codecs.BOM_UTF16_BE + f"card {CARD}".encode("utf-16-be")),
    (None, f"untyped {CARD} " .encode() * 100),
    (f"multipart/form-data; boundary={BOUNDARY}",
     _multipart((b"Content-Type: text/csv", f"a,{CARD}".encode()))),
])


@SETTINGS
@given(DOCS, st.sampled_from(["", "gzip", "br"]), st.lists(st.integers(0, 10**6), max_size=6))
def test_stream_equals_whole_body_masking(doc, coding, cuts):
    ctype, plain = doc
    body = CODECS[coding](plain) if coding else plain
    whole, _ = MASKER.maskEncodedBody(body, coding, ctype, reencode=False)
    assert _stream(MASKER, ctype, coding, body, cuts) == (whole or plain)
    assert CARD.encode() not in whole


def test_stream_of_binary_passes_masks_or_refuses_by_setting():
    blob = b"\x89PNG\x00" + CARD.encode() + b"\x00" * 5000
    with pytest.raises(MaskingFailed, match="unknown_content"):
        _stream(MASKER, "image/png", "", blob, [10, 2000])
    passing = BodyStream(Masker(ALL, unknownContent="pass"), "image/png", None)
    first = passing.feed(blob[:SNIFF_AND_MORE])
    assert first == blob[:SNIFF_AND_MORE] and passing.state == "pass"
    assert _stream(Masker(ALL, unknownContent="mask"), "image/png", "", blob, [7]) == \
        blob.replace(CARD.encode(), MASKED.encode())


SNIFF_AND_MORE = 1500


def test_stream_holds_no_more_than_the_sniff_window_of_text():
    s = BodyStream(MASKER, None, None)
    assert s.feed(b"a" * 1000) == b""
    assert s.feed(b"b" * 99 + b"\n") == b"a" * 1000 + b"b" * 99 + b"\n"
    assert s.state == "stream"


def test_stream_whole_bodies_are_bounded():
    s = BodyStream(MASKER, "application/json", None, limit=1000)
    with pytest.raises(ContentTooLarge):
        s.feed(b" " * 600)
        s.feed(b" " * 600)


# -- off the reactor thread ----------------------------------------------------------------


class _Pool:
    """A threadpool double: work is queued, run only when the test says."""

    def __init__(self):
        self.work = []

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.work.append((onResult, f, args, kwargs))

    def runAll(self):
        for onResult, f, args, kwargs in self.work:
            try:
                onResult(True, f(*args, **kwargs))
            except BaseException as e:
                onResult(False, e)


class _Reactor(MemoryReactorClock):
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_big_bodies_are_masked_in_the_threadpool_not_on_the_reactor():
    pool, reactor = _Pool(), _Reactor()
    big = (f'{{"card": "{CARD}"}}\n' * 10_000).encode()
    d = MASKER.maskBodyAsync(big, None, "text/plain", reactor=reactor, threadpool=pool)
    results = []
    d.addBoth(results.append)
    assert results == [] and len(pool.work) == 1     # the reactor thread did no masking
    pool.runAll()
    assert results[0][0] == big.replace(CARD.encode(), MASKED.encode())


def test_async_failures_and_small_bodies():
    pool, reactor = _Pool(), _Reactor()
    results = []
    MASKER.maskBodyAsync(b"{broken" * 20_000, None, "application/json", reactor=reactor,
                         threadpool=pool).addErrback(lambda f: results.append(f.type))
    pool.runAll()
    assert results == [MaskingFailed]
    small = MASKER.maskBodyAsync(CARD.encode(), None, "text/plain", reactor=reactor, threadpool=pool)
    small.addCallback(results.append)
    assert results[-1] == (MASKED.encode(), "") and len(pool.work) == 1


# -- headers, reason phrases, WebSocket messages -------------------------------------------


def test_header_values_masked_but_framing_headers_kept():
    from sealgate.masking import maskHeaders, maskReason

    headers = [(b"Content-Length", b"4111111111111111"), (b"Set-Cookie", b"u=jane@example.com; Path=/"),
               (b"Location", b"/cards/4111111111111111"), (b"X-Owner", b"jane@example.com"),
               (b"Content-Disposition", b'attachment; filename="4111111111111111.pdf"')]
    out = maskHeaders(MASKER, headers)
    assert out[0] == headers[0]
    assert out[1] == (b"Set-Cookie", b"u=****@example.com; Path=/")
    assert out[2] == (b"Location", b"/cards/" + MASKED.encode())
    assert b"4111111111111111" not in b"".join(v for _n, v in out[1:])
    clean = [(b"Server", b"x")]
    assert maskHeaders(MASKER, clean) is clean
    assert maskReason(MASKER, b"card 4111111111111111 not found") == b"card " + MASKED.encode() + \
        b" not found"


def test_websocket_messages_and_close_reasons():
    from sealgate.masking import maskWebSocket

    text = f"card {CARD} für".encode()
    out = maskWebSocket(MASKER, 1, text)
    assert out == f"card {MASKED} für".encode() and out.decode("utf-8")
    close = b"\x03\xe8" + f"bye {CARD}".encode()
    assert maskWebSocket(MASKER, 8, close) == b"\x03\xe8" + f"bye {MASKED}".encode()
    assert maskWebSocket(MASKER, 2, CARD.encode()) == MASKED.encode()
    with pytest.raises(MaskingFailed, match="unknown_content"):
        maskWebSocket(MASKER, 2, b"\x00\x01" + CARD.encode())
    assert maskWebSocket(MASKER, 9, b"ping " + CARD.encode()) == b"ping " + MASKED.encode()
