"""Sans-IO HTTP/1.1 pieces: header rules, credentials, a recorded-stream reader, WebSocket frames."""

import base64
import binascii
import json
import re
import struct

import attrs

#: Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})

#: Headers whose values are credentials: never recorded in clear.
SECRET_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"})

REDACTED = b"[redacted]"

PROBLEM = b"application/problem+json"

#: Request headers never forwarded besides the hop-by-hop ones: the user's
#: credential (replaced by the backend's), Expect (the gateway answers it),
#: the length (the gateway sets it for the body it forwards) and Host (the
#: gateway sends the one it routed by).
DROP_REQUEST = frozenset({b"authorization", b"proxy-authorization", b"expect", b"content-length",
                          b"host"})


_hopCache: dict = {}


def hopByHop(connectionValues: list[bytes] | None) -> frozenset:
    """The hop-by-hop header names for one message, including those C{Connection} lists."""
    if not connectionValues:
        return HOP_BY_HOP
    key = tuple(connectionValues)
    found = _hopCache.get(key)
    if found is None:
        found = _hopByHop(connectionValues)
        if len(_hopCache) < 256:
            _hopCache[key] = found
    return found


def _hopByHop(connectionValues: list[bytes]) -> frozenset:
    extra = set()
    for value in connectionValues or ():
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                extra.add(token)
    return HOP_BY_HOP | extra


def credentialFrom(authorization: bytes | None) -> str | None:
    """
    The credential in an C{Authorization} value: the bearer token, or the
    password of basic auth (tools that only do basic send the key there).
    None when absent or malformed.
    """
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    rest = rest.strip()
    if not rest:
        return None
    if scheme == b"bearer":
        try:
            return rest.decode("ascii")
        except UnicodeDecodeError:
            return None
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def problem(status: int, title: str, detail: str, **extra) -> bytes:
    """An RFC 9457 problem+json body."""
    body = {"type": f"https://sealgate.dev/problems/{status}", "title": title,
            "status": status, "detail": detail}
    body.update(extra)
    return json.dumps(body).encode()


def redactHead(head: bytes, secret: frozenset) -> bytes:
    """A message head with the values of secret headers replaced by C{[redacted]}."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        name, sep, _ = line.partition(b":")
        if sep and name.strip().lower() in secret:
            line = name + b": " + REDACTED
        out.append(line)
    return b"\r\n".join(out)


def serializeHead(first: bytes, headers) -> bytes:
    """C{first} line and (name, value) pairs as an HTTP/1.1 head, ending with the blank line."""
    parts = [first]
    for name, value in headers:
        parts.append(name + b": " + value)
    return b"\r\n".join(parts) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# -- reading a recorded stream back (HAR export, replay) ----------------------


class ProtocolError(Exception):
    """
    Bytes that are not HTTP/1.1 as sealgate takes it; C{str(exc)} is safe
    to show the peer.

    @ivar status: the response status a client gets for it.
    """

    status = 400


class NotImplementedCoding(ProtocolError):
    """A transfer coding the relay does not implement (RFC 9112 section 6.1: 501)."""

    status = 501


#: RFC 9110 section 5.5: no control character in a field value but HTAB
#: (CR and LF are caught line by line); section 5.1: names are tokens.
_BAD_OCTET = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: The same octets, for bytes.translate: deleting them is a quarter of the regex's time.
_BAD_OCTETS = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_goodNames: set = set()
#: Header lines a strict parse accepted, split: a relay sees the same
#: lines (Host, User-Agent, Server, Content-Type...) in every message.
_strictLines: dict[bytes, tuple[bytes, bytes, bytes]] = {}
_NO_LINES: dict = {}
_LINE_CACHED = 256


NEED_DATA = object()


@attrs.frozen
class Head:
    """A request or response head; C{status} is 0 for requests."""

    first: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    method: bytes = b""
    target: bytes = b""
    status: int = 0
    reason: bytes = b""
    version: bytes = b"HTTP/1.1"

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


@attrs.frozen
class Body:
    data: bytes


@attrs.frozen
class End:
    """End of one message."""


@attrs.frozen
class Raw:
    """Bytes after a protocol switch (101), passed as they come."""

    data: bytes


class MessageReader:
    """
    Reads one direction of an HTTP/1.1 connection: C{receive_data(bytes)},
    then C{next_event()} until L{NEED_DATA}.  A response reader needs the
    request methods (C{expect(method)}) to know which responses have no body.
    """

    MAX_HEAD = 1 << 20

    def __init__(self, responses: bool):
        self._responses = responses
        self._buf = bytearray()
        self._state = "head"
        self._left = 0
        self._methods: list[bytes] = []
        self.switched = False

    def expect(self, method: bytes) -> None:
        self._methods.append(method)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def closed(self):
        """The stream ended: a body read until close ends here."""
        if self._state == "untilclose":
            self._state = "head"
            return End()
        return None

    def next_event(self):
        buf = self._buf
        if self._state == "raw":
            if not buf:
                return NEED_DATA
            data = bytes(buf)
            del buf[:]
            return Raw(data)
        if self._state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.MAX_HEAD:
                    raise ProtocolError("head too long")
                return NEED_DATA
            head = self._parseHead(bytes(buf[:end]))
            del buf[: end + 4]
            return head
        if self._state == "length":
            if self._left == 0:
                self._state = "head"
                return End()
            if not buf:
                return NEED_DATA
            n = min(self._left, len(buf))
            data = bytes(buf[:n])
            del buf[:n]
            self._left -= n
            return Body(data)
        if self._state == "untilclose":
            if not buf:
                return NEED_DATA
            data = bytes(buf)
            del buf[:]
            return Body(data)
        if self._state == "chunksize":
            end = buf.find(b"\r\n")
            if end < 0:
                return NEED_DATA
            try:
                size = int(bytes(buf[:end]).split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError("bad chunk size")
            del buf[: end + 2]
            if size == 0:
                self._state = "trailers"
            else:
                self._left, self._state = size, "chunk"
            return self.next_event()
        if self._state == "chunk":
            if self._left > 0:
                if not buf:
                    return NEED_DATA
                n = min(self._left, len(buf))
                data = bytes(buf[:n])
                del buf[:n]
                self._left -= n
                return Body(data)
            if len(buf) < 2:
                return NEED_DATA
            if buf[:2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            del buf[:2]
            self._state = "chunksize"
            return self.next_event()
        if self._state == "trailers":
            end = buf.find(b"\r\n")
            if end < 0:
                return NEED_DATA
            line = bytes(buf[:end])
            del buf[: end + 2]
            if line == b"":
                self._state = "head"
                return End()
            return self.next_event()
        raise AssertionError(self._state)

    def _parseHead(self, raw: bytes) -> Head:
        head = parseHead(raw, self._responses)
        if self._responses:
            status = head.status
            method = self._methods[0] if self._methods else b"GET"
            if status >= 200 or status == 101:
                if self._methods:
                    self._methods.pop(0)
            self._bodyFor(head, method)
        else:
            self._bodyFor(head, None)
        return head

    def _bodyFor(self, head: Head, method: bytes | None) -> None:
        status = head.status
        if self._responses and status == 101:
            self._state, self.switched = "raw", True
            return
        if self._responses and (method == b"HEAD" or status < 200 or status in (204, 304)):
            self._state, self._left = "length", 0
            return
        te = head.get(b"transfer-encoding")
        if te is not None and te.lower().rstrip().endswith(b"chunked"):
            self._state = "chunksize"
            return
        cl = head.get(b"content-length")
        if cl is not None:
            try:
                self._state, self._left = "length", int(cl)
            except ValueError:
                raise ProtocolError("bad content-length")
            return
        self._state, self._left = ("untilclose", 0) if self._responses else ("length", 0)


def parseHead(raw: bytes, responses: bool) -> Head:
    """
    A request or response head (without its blank line).

    @raise ProtocolError: not a well-formed HTTP/1.x head.
    """
    return parseHeadIndexed(raw, responses)[0]


def parseHeadIndexed(raw: bytes, responses: bool, strict: bool = False) -> tuple[Head, dict, list]:
    """
    L{parseHead}, plus what a relay looks headers up by, in the same pass:
    lower-cased name -> list of values, and the lower-cased names in order.

    @param strict: also refuse what RFC 9110 forbids in names and values
        (a live relay; a recorded stream is read as it was sealed).
    """
    lines = raw.split(b"\r\n")
    # A bare CR or LF inside a line could end it for the next hop: refuse.
    if raw.count(b"\n") != len(lines) - 1 or raw.count(b"\r") != len(lines) - 1:
        raise ProtocolError("bare CR or LF in the head")
    if strict and len(raw.translate(None, _BAD_OCTETS)) != len(raw):
        raise ProtocolError("a control character (such as NUL) in the head")
    first = lines[0]
    headers = []
    low: dict = {}
    names = []
    cache = _strictLines if strict else _NO_LINES
    for line in lines[1:]:
        hit = cache.get(line)
        if hit is not None:
            name, value, lname = hit
        else:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolError("bad header line")
            if strict and name not in _goodNames:
                if _TOKEN.fullmatch(name) is None:
                    raise ProtocolError("a header name that is not a token")
                if len(_goodNames) < 4096:
                    _goodNames.add(name)
            value = value.strip()
            lname = name.lower()
            if strict and len(line) <= _LINE_CACHED:
                if len(cache) >= 4096:
                    cache.clear()
                cache[line] = (name, value, lname)
        headers.append((name, value))
        names.append(lname)
        values = low.get(lname)
        if values is None:
            low[lname] = [value]
        else:
            values.append(value)
    parts = first.split(b" ", 2)
    if len(parts) < 2:
        raise ProtocolError("bad first line")
    if responses:
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError("bad status")
        return Head(first, tuple(headers), status=status,
                    reason=parts[2] if len(parts) > 2 else b"", version=parts[0]), low, names
    if len(parts) != 3 or not parts[1] or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ProtocolError("bad request line")
    if strict and parts[0] not in _goodNames and _TOKEN.fullmatch(parts[0]) is None:
        raise ProtocolError("a request method that is not a token")
    return Head(first, tuple(headers), method=parts[0], target=parts[1], version=parts[2]), low, names


# -- WebSocket frames (RFC 6455), read for the HAR export ----------------------


@attrs.frozen
class WSFrame:
    fin: bool
    opcode: int
    payload: bytes
    #: The reserved bits (RSV1-3, as in the first byte): set only by an extension.
    rsv: int = 0


class FrameTooLarge(ProtocolError):
    """A WebSocket frame longer than its reader's C{MAX_FRAME}."""


class WebSocketReader:
    """Reads RFC 6455 frames from one direction, unmasking client frames."""

    MAX_FRAME = 64 << 20

    def __init__(self):
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self):
        buf = self._buf
        if len(buf) < 2:
            return NEED_DATA
        b0, b1 = buf[0], buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return NEED_DATA
            (n,) = struct.unpack_from("!H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return NEED_DATA
            (n,) = struct.unpack_from("!Q", buf, 2)
            pos = 10
        if n > self.MAX_FRAME:
            raise FrameTooLarge("websocket frame too large")
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return NEED_DATA
            key = bytes(buf[pos: pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return NEED_DATA
        payload = bytes(buf[pos: pos + n])
        del buf[: pos + n]
        if masked:
            payload = unmask(payload, key)
        return WSFrame(bool(b0 & 0x80), b0 & 0x0F, payload, b0 & 0x70)


def unmask(payload: bytes, key: bytes) -> bytes:
    """A frame's payload XORed with its 4-byte masking key (RFC 6455 section 5.3), as one big integer."""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def wsFrame(opcode: int, payload: bytes, mask: bytes | None = None, fin: bool = True) -> bytes:
    """Serialize one WebSocket frame (for tests and for closing a relay)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        payload = unmask(payload, mask)
        head += mask
    return head + payload
