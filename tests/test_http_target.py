"""The request-target normalizer, sans-IO: RFC 3986 section 5.4's examples, refusals, and Hypothesis on its normal form."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealgate.protocols.http._target import (
    TargetRefused,
    hostName,
    normalizeTarget,
    removeDotSegments,
)

#: RFC 3986 section 5.4.1 and 5.4.2 against the base "http://a/b/c/d;p?q":
#: the relative references that are paths (with an optional query), and
#: what they resolve to.  Fragments are left out: a request never has one.
_BASE_DIR = "/b/c/"
_RFC3986_EXAMPLES = [
    ("g", "/b/c/g"), ("./g", "/b/c/g"), ("g/", "/b/c/g/"), ("g?y", "/b/c/g?y"),
    (";x", "/b/c/;x"), ("g;x", "/b/c/g;x"), ("g;x?y", "/b/c/g;x?y"), (".", "/b/c/"),
    ("./", "/b/c/"), ("..", "/b/"), ("../", "/b/"), ("../g", "/b/g"), ("../..", "/"),
    ("../../", "/"), ("../../g", "/g"),
    # 5.4.2, abnormal examples
    ("../../../g", "/g"), ("../../../../g", "/g"), ("g.", "/b/c/g."), (".g", "/b/c/.g"),
    ("g..", "/b/c/g.."), ("..g", "/b/c/..g"), ("./../g", "/b/g"), ("./g/.", "/b/c/g/"),
    ("g/./h", "/b/c/g/h"), ("g/../h", "/b/c/h"), ("g;x=1/./y", "/b/c/g;x=1/y"),
    ("g;x=1/../y", "/b/c/y"), ("g?y/./x", "/b/c/g?y/./x"), ("g?y/../x", "/b/c/g?y/../x"),
]


@pytest.mark.parametrize("reference, resolved", _RFC3986_EXAMPLES)
def test_rfc3986_section_5_4_examples(reference, resolved):
    # RFC 3986 5.2.3 merges a relative path onto the base's directory; the
    # dot segments are then left for 5.2.4, which is the normalizer's job.
    merged = (_BASE_DIR + reference).encode()
    assert normalizeTarget(merged, b"GET").originForm == resolved.encode()
    assert normalizeTarget(b"http://a" + merged, b"GET").originForm == resolved.encode()


@pytest.mark.parametrize("path, removed", [
    # RFC 3986 5.2.4's own two walk-throughs.
    (b"/a/b/c/./../../g", b"/a/g"), (b"mid/content=5/../6", b"mid/6"),
])
def test_remove_dot_segments_as_the_rfc_walks_it(path, removed):
    assert removeDotSegments(path) == removed


@pytest.mark.parametrize("raw, normal", [
    (b"/%7Euser/%61%62c", b"/~user/abc"), (b"/a%7cb", b"/a%7Cb"), (b"/a|b", b"/a%7Cb"),
    (b"/caf\xc3\xa9", b"/caf%C3%A9"), (b"/x?q=%2f&r=%41", b"/x?q=%2F&r=A"), (b"//a///b", b"/a/b"),
    (b"http://gw", b"/"), (b"HTTP://gw?x", b"/?x"), (b"/a?", b"/a?"),
])
def test_percent_encoding_is_put_in_one_form(raw, normal):
    assert normalizeTarget(raw, b"GET").originForm == normal


@pytest.mark.parametrize("raw", [
    b"/a%2Fb", b"/a%2fb", b"/%2e%2e/x", b"/%2E", b"/a%5Cb", b"/a\\b", b"/a%00", b"/a%0d%0a",
    b"/a\x01", b"/a%", b"/a%g1", b"/a#f", b"a/b", b"ftp://gw/x", b"http://user@gw/x",
    b"http://gw:99999/x", b"*",
])
def test_what_could_change_meaning_downstream_is_refused(raw):
    with pytest.raises(TargetRefused):
        normalizeTarget(raw, b"GET")


def test_lenient_keeps_encoded_separators_and_backslashes_as_they_are():
    assert normalizeTarget(b"/a%2fb\\c%00", b"GET", lenient=True).originForm == b"/a%2Fb\\c%00"
    # Still no dot segments: an encoded dot is a dot there.
    assert normalizeTarget(b"/a/%2e%2e/b", b"GET", lenient=True).path == b"/b"


def test_asterisk_is_only_for_options_and_the_authority_wins():
    assert normalizeTarget(b"*", b"OPTIONS").path == b"*"
    assert normalizeTarget(b"https://Admin.Internal:8443/x", b"GET").authority == b"Admin.Internal:8443"
    assert hostName(b"Admin.Internal.:8443") == b"admin.internal"
    assert hostName(b"[::1]:80") == b"[::1]"
    for bad in (b"", b"a b", b"gw/x", b"gw:port", b"gw:123456"):
        with pytest.raises(TargetRefused):
            hostName(bad)


_PCHARS = st.sampled_from([*"abcXYZ019-._~!$&'()*+,;=:@/?", "..", "../", "./", "//", "%41", "%7e",
                           "%2F", "%2e", "%5C", "%00", "%zz", "%", "\\", "|", "\x7f", "\xe9", " "])


@given(st.lists(_PCHARS, max_size=30).map(lambda parts: ("/" + "".join(parts)).encode("utf-8")))
def test_every_normalized_target_is_its_own_normal_form(raw):
    try:
        target = normalizeTarget(raw, b"GET")
    except TargetRefused:
        return
    path = target.path
    assert path.startswith(b"/") and b"//" not in path
    assert not any(seg in (b".", b"..") for seg in path.split(b"/"))
    assert b"%2F" not in path and b"%2E" not in path.upper() and b"\\" not in path
    assert all(0x21 <= b < 0x7F for b in target.originForm)
    # Normalizing again changes nothing: routing, rules and the backend agree.
    assert normalizeTarget(target.originForm, b"GET") == target


def test_a_request_has_one_host_and_an_absolute_target_routes_by_its_authority():
    from sealgate.protocols.http._request import parseRequest

    r = parseRequest(b"GET http://admin.internal/a/../b?x=%41 HTTP/1.1\r\nHost: gw")
    assert (r.host, r.target, r.path, r.query, r.sent) == (
        b"admin.internal", b"/b?x=A", b"/b", b"x=A", b"http://admin.internal/a/../b?x=%41")
    for head in (b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", b"GET / HTTP/1.1\r\nHost: a b"):
        with pytest.raises(TargetRefused):
            parseRequest(head)
    # Refused strictly, taken leniently only when some connection allows it.
    with pytest.raises(TargetRefused):
        parseRequest(b"GET /a%2Fb HTTP/1.1\r\nHost: gw")
    assert parseRequest(b"GET /a%2Fb HTTP/1.1\r\nHost: gw", lenientToo=True).lenient


@given(st.lists(st.lists(_PCHARS, max_size=12).map(lambda parts: ("/" + "".join(parts)).encode("utf-8"))
                | st.sampled_from([b"*", b"http://gw/x", b"ftp://gw/", b"/a#b", b"/%2f", b"x"]),
                min_size=1, max_size=8),
       st.sampled_from([b"GET", b"OPTIONS"]), st.booleans())
def test_a_target_seen_before_normalizes_or_is_refused_as_the_first_time(targets, method, lenient):
    from sealgate.protocols.http import _target

    def outcome(raw):
        try:
            return _target.normalizeTarget(raw, method, lenient)
        except TargetRefused as e:
            return str(e)

    first = [outcome(raw) for raw in targets]
    assert [outcome(raw) for raw in targets] == first
    for raw, was in zip(targets, first, strict=True):
        try:
            fresh = _target._normalize(raw, method, lenient)
        except TargetRefused as e:
            fresh = str(e)
        assert fresh == was
