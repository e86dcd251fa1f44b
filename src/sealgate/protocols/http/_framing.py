"""Sans-IO HTTP/1.1 body framing for the live relay: Content-Length, chunked, close-delimited (RFC 9112 section 6)."""

from sealgate.protocols.http._wire import NotImplementedCoding, ProtocolError


def _contentLength(values: list[bytes]) -> int:
    """The one length all C{Content-Length} values agree on (RFC 9112 section 6.3)."""
    lengths = set()
    for value in values:
        for part in value.split(b","):
            part = part.strip()
            if not part.isdigit() or len(part) > 18:
                raise ProtocolError("bad content-length")
            lengths.add(int(part))
    if len(lengths) != 1:
        raise ProtocolError("conflicting content-length")
    return lengths.pop()


def requestFraming(headers, version: bytes = b"HTTP/1.1") -> "BodyFraming | None":
    """
    How a request body is delimited (None: it has none); lower-cased header
    names map to value lists.  Strict, so that no hop reads the body
    another way (RFC 9112 sections 6.1 and 6.3): "chunked" is the only
    transfer coding, exactly once and last, never beside a Content-Length
    nor in an HTTP/1.0 request.
    """
    te = headers.get(b"transfer-encoding")
    if te is not None:
        codings = [c.strip().lower() for v in te for c in v.split(b",")]
        if version != b"HTTP/1.1":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if b"content-length" in headers:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if codings[-1] != b"chunked" or codings.count(b"chunked") != 1 or b"" in codings:
            raise ProtocolError("the request's final transfer coding is not chunked")
        if len(codings) > 1:
            raise NotImplementedCoding("only the chunked transfer coding is implemented")
        return BodyFraming("chunked")
    cl = headers.get(b"content-length")
    if cl is None:
        return None
    n = _contentLength(cl)
    return BodyFraming("length", n) if n else None


def responseFraming(headers, status: int, method: bytes) -> "BodyFraming | None":
    """How a response body is delimited (None: it has none, RFC 9112 section 6.3)."""
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return None
    te = headers.get(b"transfer-encoding")
    if te is not None:
        if b",".join(te).lower().rstrip().endswith(b"chunked"):
            return BodyFraming("chunked", keepTrailers=True)
        return BodyFraming("close")
    cl = headers.get(b"content-length")
    if cl is None:
        return BodyFraming("close")
    n = _contentLength(cl)
    return BodyFraming("length", n) if n else None


class BodyFraming:
    """
    Finds where one message body ends in the bytes that follow its head.
    C{feed(data)} returns C{(pieces, used)}: the payload in C{data} (chunk
    framing removed) and how many bytes of C{data} belong to this body, so
    a relay can pass C{data[:used]} on unchanged.  C{done} turns true at the
    body's end; a "close" body ends only with L{closed}.
    """

    MAX_LINE = 4096
    #: Bytes of trailer lines a response's chunked body may carry.
    MAX_TRAILERS = 64 << 10
    #: The trailer field lines of a chunked body (CRLF removed), once read,
    #: when C{keepTrailers} (a response's: the relay masks and passes them).
    trailers: tuple[bytes, ...] | list[bytes] = ()
    _trailerBytes = 0

    def __init__(self, kind: str, length: int = 0, keepTrailers: bool = False):
        self.kind = kind
        self.keepTrailers = keepTrailers
        #: The announced length of a "length" body.
        self.length = length
        self.done = False
        self._left = length
        self._state = "size"
        self._line = b""

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        if self.done or not data:
            return [], 0
        if self.kind == "length":
            n = len(data)
            if n <= self._left:
                self._left -= n
                self.done = self._left == 0
                return [data], n
            n, self._left, self.done = self._left, 0, True
            return [data[:n]], n
        if self.kind == "close":
            return [data], len(data)
        return self._chunked(data)

    def closed(self) -> None:
        """The connection ended: only a close-delimited body is then complete."""
        if self.kind != "close" and not self.done:
            raise ProtocolError("connection closed inside a body")
        self.done = True

    def _chunked(self, data: bytes) -> tuple[list[bytes], int]:
        pieces: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end and not self.done:
            state = self._state
            if state == "data":
                n = min(self._left, end - pos)
                pieces.append(data[pos: pos + n])
                pos += n
                self._left -= n
                if self._left == 0:
                    self._state = "crlf"
                continue
            # size, crlf and trailer states read one line each.
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > self.MAX_LINE:
                    raise ProtocolError("chunk line too long")
                if state == "crlf" and self._line not in (b"", b"\r"):
                    raise ProtocolError("chunk not followed by CRLF")
                return pieces, end
            line = self._line + data[pos:nl]
            self._line = b""
            pos = nl + 1
            if len(line) > self.MAX_LINE:
                raise ProtocolError("chunk line too long")
            line = line[:-1] if line.endswith(b"\r") else line
            if state == "crlf":
                if line:
                    raise ProtocolError("chunk not followed by CRLF")
                self._state = "size"
            elif state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise ProtocolError("bad chunk size")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
            elif not line:
                self.done = True
            elif self.keepTrailers:
                trailers = self.trailers
                if not isinstance(trailers, list):
                    trailers = self.trailers = []
                trailers.append(line)
                self._trailerBytes += len(line)
                if self._trailerBytes > self.MAX_TRAILERS:
                    raise ProtocolError("trailers too long")
        return pieces, pos
