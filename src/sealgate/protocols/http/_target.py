"""Sans-IO request-target and Host normalization (RFC 3986 sections 5.2.4 and 6, RFC 9112 section 3.2): the one form routing, rules and the backend see."""

import re

import attrs

#: RFC 3986 section 2.3: decoded wherever they appear percent-encoded.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: What a path or query may hold unencoded (pchar, "/" and "?", RFC 3986 section 3.3-3.4).
_ALLOWED = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/?")
_HEX = frozenset(b"0123456789abcdefABCDEF")
#: Encoded bytes that could make a path mean something else after a backend
#: decodes it: ".", "/", "\" and controls.  Refused unless a connection is lenient.
_RISKY_ENCODED = frozenset({0x2E, 0x2F, 0x5C, 0x7F, *range(0x20)})
#: Anything a path or query part may not hold as it is (the complement of _ALLOWED).
_NEEDS_WORK = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@/?]")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.S)
#: uri-host [":" port] (RFC 3986 section 3.2.2): a reg-name or an IP literal.
_AUTHORITY = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")


class TargetRefused(Exception):
    """A request target or Host the gateway will not route; C{str(exc)} is safe to show."""


@attrs.frozen
class Target:
    """
    A normalized request target: C{path} has no dot segments, no repeated
    slashes and no needlessly encoded octets; C{authority} is the host of an
    absolute-form target, which wins over the Host header (RFC 9112 3.2.2).
    """

    path: bytes
    query: bytes | None = None
    authority: bytes | None = None

    @property
    def originForm(self) -> bytes:
        """What the backend gets on its request line."""
        return self.path if self.query is None else self.path + b"?" + self.query


def normalizeTarget(raw: bytes, method: bytes, lenient: bool = False) -> Target:
    """
    The one normal form of a request target.

    @param lenient: keep encoded C{/}, C{\\} and controls (encoded) and
        raw backslashes, for a backend that needs them; never the default.
    @raise TargetRefused: the target cannot be normalized safely.
    """
    key = (raw, method, lenient)
    found = _normalized.get(key)
    if found is None:
        found = _normalize(raw, method, lenient)
        if len(raw) <= 256:
            if len(_normalized) >= 4096:
                _normalized.clear()
            _normalized[key] = found
    return found


#: Targets normalized before (a client asks for the same few paths): a
#: refused one raises each time and is never kept.
_normalized: dict[tuple[bytes, bytes, bool], Target] = {}


def _normalize(raw: bytes, method: bytes, lenient: bool) -> Target:
    if raw == b"*":
        if method != b"OPTIONS":
            raise TargetRefused("the asterisk target is only for OPTIONS")
        return Target(b"*")
    authority = None
    if not raw.startswith(b"/"):
        m = _ABSOLUTE.fullmatch(raw)
        if m is None or m.group(1).lower() not in (b"http", b"https"):
            raise TargetRefused("the request target is neither a path nor an http(s) URL")
        authority, raw = m.group(2), m.group(3) or b"/"
        if b"@" in authority:
            raise TargetRefused("the request target carries user information")
        hostName(authority)
        if raw.startswith(b"?"):
            raw = b"/" + raw
    if b"#" in raw:
        raise TargetRefused("the request target carries a fragment")
    path, sep, query = raw.partition(b"?")
    path = _percent(path, lenient, True)
    while b"//" in path:
        path = path.replace(b"//", b"/")
    path = removeDotSegments(path) or b"/"
    return Target(path, _percent(query, lenient, False) if sep else None, authority)


def _percent(part: bytes, lenient: bool, inPath: bool) -> bytes:
    """Decode unreserved octets, upper-case other escapes, encode what may not appear raw."""
    if _NEEDS_WORK.search(part) is None:
        return part     # the usual case: nothing encoded, nothing to encode
    out = bytearray()
    i, n = 0, len(part)
    while i < n:
        b = part[i]
        if b == 0x25:   # "%"
            if i + 2 >= n or part[i + 1] not in _HEX or part[i + 2] not in _HEX:
                raise TargetRefused("a percent sign in the target is not followed by two hex digits")
            v = int(part[i + 1:i + 3], 16)
            i += 3
            if v in _UNRESERVED and v != 0x2E:
                out.append(v)
            elif v == 0x2E and lenient:
                out.append(v)
            elif inPath and v in _RISKY_ENCODED and not lenient:
                raise TargetRefused(f"the path holds an encoded {_name(v)} (%{v:02X})")
            else:
                out += b"%%%02X" % v
            continue
        i += 1
        if b in _ALLOWED:
            out.append(b)
        elif b == 0x5C:     # "\"
            if not lenient:
                raise TargetRefused("the target holds a backslash")
            out.append(b)
        elif (b < 0x21 or b == 0x7F) and not lenient:
            raise TargetRefused("the target holds a control character")
        else:
            # Not allowed raw by RFC 3986 (", <, >, {, |, non-ASCII...): its encoded twin.
            out += b"%%%02X" % b
    return bytes(out)


def _name(v: int) -> str:
    return {0x2E: "dot", 0x2F: "slash", 0x5C: "backslash"}.get(v, "control character")


def removeDotSegments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, as written there."""
    if b"/." not in path and not path.startswith(b"."):
        return path
    inp, out = path, []  # type: bytes, list[bytes]
    while inp:
        if inp.startswith(b"../"):
            inp = inp[3:]
        elif inp.startswith(b"./"):
            inp = inp[2:]
        elif inp.startswith(b"/./"):
            inp = inp[2:]
        elif inp == b"/.":
            inp = b"/"
        elif inp.startswith(b"/../"):
            inp = inp[3:]
            if out:
                out.pop()
        elif inp == b"/..":
            inp = b"/"
            if out:
                out.pop()
        elif inp in (b".", b".."):
            inp = b""
        else:
            end = inp.find(b"/", 1)
            if end < 0:
                end = len(inp)
            out.append(inp[:end])
            inp = inp[end:]
    return b"".join(out)


def hostName(authority: bytes) -> bytes:
    """
    The lower-cased host of a Host value or URL authority, without port or
    trailing dot.

    @raise TargetRefused: it is not uri-host [":" port].
    """
    m = _AUTHORITY.fullmatch(authority)
    if m is None or not m.group(1):
        raise TargetRefused("the Host is not a host name with an optional port")
    if m.group(2) is not None and m.group(2) and int(m.group(2)) > 65535:
        raise TargetRefused("the Host names a port above 65535")
    return m.group(1).lower().rstrip(b".")
