"""Sans-IO pieces of the SSH proxy: channel request payloads, SFTP framing, shell line assembly."""

import re
import struct

import attrs

NEED_DATA = object()

_U32 = struct.Struct(">L")
_U64 = struct.Struct(">Q")


class WireError(Exception):
    """A malformed payload; the channel it came on is closed."""


def _string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise WireError("truncated string length")
    (n,) = _U32.unpack_from(data, offset)
    end = offset + 4 + n
    if end > len(data):
        raise WireError("truncated string")
    return bytes(data[offset + 4:end]), end


def _u32(data: bytes, offset: int) -> tuple[int, int]:
    if offset + 4 > len(data):
        raise WireError("truncated uint32")
    return _U32.unpack_from(data, offset)[0], offset + 4


def NS(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


# -- channel requests (RFC 4254 section 6) ----------------------------------


@attrs.frozen
class PtyRequest:
    term: str
    cols: int
    rows: int
    width: int
    height: int
    modes: bytes


def parsePtyRequest(data: bytes) -> PtyRequest:
    term, o = _string(data, 0)
    cols, o = _u32(data, o)
    rows, o = _u32(data, o)
    width, o = _u32(data, o)
    height, o = _u32(data, o)
    modes, o = _string(data, o)
    return PtyRequest(term.decode("ascii", "replace"), cols, rows, width, height, modes)


def parseWindowChange(data: bytes) -> tuple[int, int]:
    """(cols, rows) of a window-change request."""
    cols, o = _u32(data, 0)
    rows, o = _u32(data, o)
    return cols, rows


def parseString(data: bytes) -> bytes:
    """The single string of an exec, subsystem or signal request."""
    value, _ = _string(data, 0)
    return value


def parseEnv(data: bytes) -> tuple[bytes, bytes]:
    name, o = _string(data, 0)
    value, _ = _string(data, o)
    return name, value


def parseExitStatus(data: bytes) -> int:
    return _u32(data, 0)[0]


def parseExitSignal(data: bytes) -> tuple[str, bool, str]:
    name, o = _string(data, 0)
    if o >= len(data):
        raise WireError("truncated exit-signal")
    core = data[o] != 0
    msg, _ = _string(data, o + 1)
    return name.decode("ascii", "replace"), core, msg.decode("utf-8", "replace")


def exitSignal(name: str, core: bool, message: str, lang: bytes = b"") -> bytes:
    """An exit-signal request's payload (RFC 4254 section 6.10)."""
    return (NS(name.encode("ascii", "replace")) + (b"\x01" if core else b"\x00")
            + NS(message.encode("utf-8")) + NS(lang))


def exitStatus(code: int) -> bytes:
    return _U32.pack(code & 0xFFFFFFFF)


# -- SFTP (draft-ietf-secsh-filexfer-02, version 3 as OpenSSH speaks it) ----

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_SETSTAT, FXP_OPENDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR = 9, 11, 13, 14, 15
FXP_RENAME, FXP_SYMLINK, FXP_EXTENDED = 18, 20, 200
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
FX_PERMISSION_DENIED = 3
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC = 1, 2, 4, 8, 16
_ATTR_SIZE = 1

#: Largest SFTP packet accepted from a client (OpenSSH's sftp-server limit).
MAX_PACKET = 256 * 1024 + 1024


@attrs.frozen
class SFTPOperation:
    """
    A client request that is a command for the chain.

    @ivar op: get, put, list, remove, rename, mkdir, rmdir, setstat, symlink,
        link.
    @ivar direction: "download", "upload" or None.
    """

    op: str
    path: str
    requestId: int
    size: int | None = None
    direction: str | None = None
    target: str | None = None

    @property
    def text(self) -> str:
        return f"{self.op} {self.path}" + (f" {self.target}" if self.target else "")


class SFTPRequests:
    """
    Frames the client-to-server SFTP stream.  C{next_event()} returns
    C{(packet_bytes, operation_or_None)} per whole packet, or L{NEED_DATA}.
    Packets pass through unchanged; only those that are commands are decoded.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self):
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        (n,) = _U32.unpack_from(buf, 0)
        if n < 1 or n > MAX_PACKET:
            raise WireError(f"SFTP packet length {n} out of range")
        if len(buf) < 4 + n:
            return NEED_DATA
        packet = bytes(buf[:4 + n])
        del buf[:4 + n]
        return packet, decodeOperation(packet)


def _path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def decodeOperation(packet: bytes) -> SFTPOperation | None:
    """The command in one whole SFTP packet, or None when it is not one."""
    kind = packet[4]
    if kind in (FXP_INIT, FXP_CLOSE, FXP_READ, FXP_WRITE) or len(packet) < 9:
        return None
    rid = _U32.unpack_from(packet, 5)[0]
    body = packet[9:]
    if kind == FXP_OPEN:
        name, o = _string(body, 0)
        flags, o = _u32(body, o)
        size = None
        if o + 4 <= len(body):
            aflags = _U32.unpack_from(body, o)[0]
            if aflags & _ATTR_SIZE and o + 12 <= len(body):
                size = _U64.unpack_from(body, o + 4)[0]
        if flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC):
            return SFTPOperation("put", _path(name), rid, size, "upload")
        return SFTPOperation("get", _path(name), rid, size, "download")
    simple = {FXP_OPENDIR: "list", FXP_REMOVE: "remove", FXP_MKDIR: "mkdir",
              FXP_RMDIR: "rmdir", FXP_SETSTAT: "setstat"}
    if kind in simple:
        name, _ = _string(body, 0)
        return SFTPOperation(simple[kind], _path(name), rid)
    if kind in (FXP_RENAME, FXP_SYMLINK):
        a, o = _string(body, 0)
        b, _ = _string(body, o)
        op = "rename" if kind == FXP_RENAME else "symlink"
        return SFTPOperation(op, _path(a), rid, target=_path(b))
    if kind == FXP_EXTENDED:
        name, o = _string(body, 0)
        if name in (b"posix-rename@openssh.com", b"hardlink@openssh.com"):
            a, o = _string(body, o)
            b, _ = _string(body, o)
            op = "rename" if name.startswith(b"posix") else "link"
            return SFTPOperation(op, _path(a), rid, target=_path(b))
        if name == b"lsetstat@openssh.com":
            a, _ = _string(body, o)
            return SFTPOperation("setstat", _path(a), rid)
    return None


#: How much of each server reply L{SFTPResponses} keeps: enough for a
#: HANDLE reply (handles are at most 256 bytes) or the header of a DATA one.
_HEAD = 4 + 1 + 4 + 4 + 256


class SFTPResponses:
    """
    Tracks packet boundaries in the server-to-client SFTP stream without
    copying it, so the gateway can slip its own replies in between, and
    keeps the head of each reply (C{heads}: C{(type, head_bytes, length)})
    for transfer accounting.
    """

    def __init__(self) -> None:
        self._need = 0
        self._header = b""
        self._head = b""
        self._length = 0
        self.heads: list[tuple[int, bytes, int]] = []

    def receive_data(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._need:
                take = min(self._need, n - i)
                if len(self._head) < _HEAD:
                    self._head += data[i:i + min(take, _HEAD - len(self._head))]
                self._need -= take
                i += take
                if not self._need and self._head:
                    self.heads.append((self._head[0], self._head, self._length))
                continue
            take = min(4 - len(self._header), n - i)
            self._header += data[i:i + take]
            i += take
            if len(self._header) == 4:
                self._need = self._length = _U32.unpack(self._header)[0]
                self._header = b""
                self._head = b""

    @property
    def atBoundary(self) -> bool:
        return self._need == 0 and not self._header


def handleOf(packet: bytes) -> bytes:
    """The handle a CLOSE, READ or WRITE request (a whole packet) names."""
    return _string(packet, 9)[0]


def writeLength(packet: bytes) -> int:
    """How many bytes a whole WRITE request packet carries."""
    _, o = _string(packet, 9)
    return _u32(packet, o + 8)[0]


def replyId(head: bytes) -> int:
    """The request id a reply (its kept head, starting at the type byte) answers."""
    return _u32(head, 1)[0]


def replyHandle(head: bytes) -> bytes:
    """The handle in a HANDLE reply's head."""
    return _string(head, 5)[0]


def dataLength(head: bytes) -> int:
    """The payload length in a DATA reply's head."""
    return _u32(head, 5)[0]


def statusReply(requestId: int, code: int, message: str) -> bytes:
    """An SSH_FXP_STATUS packet answering C{requestId}."""
    body = (bytes([FXP_STATUS]) + _U32.pack(requestId) + _U32.pack(code)
            + NS(message.encode("utf-8")) + NS(b"en"))
    return _U32.pack(len(body)) + body


# -- interactive shell input, for the best-effort audit ----------------------

_CSI = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|[^\[O])")


class LineAssembler:
    """
    Rebuilds the lines typed in a terminal from the keystrokes sent, the way
    a plain line editor would: backspace, ^U and ^C are applied, escape
    sequences (arrows, function keys) dropped.  It cannot see shell-side
    editing (history recall, tab completion), so lines are best effort.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._line = bytearray()
        self._limit = limit
        self._esc = b""

    def receive_data(self, data: bytes) -> list[bytes]:
        lines = []
        if self._esc:
            data, self._esc = self._esc + data, b""
        data = _CSI.sub(b"", data)
        if data.endswith(b"\x1b") or re.search(rb"\x1b\[[0-?]*[ -/]*$", data):
            cut = data.rfind(b"\x1b")
            data, self._esc = data[:cut], data[cut:]
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._line or byte == 0x0D:
                    lines.append(bytes(self._line))
                self._line.clear()
            elif byte in (0x7F, 0x08):
                if self._line:
                    del self._line[-1]
            elif byte in (0x15, 0x03):
                self._line.clear()
            elif byte == 0x17:
                stripped = bytes(self._line).rstrip(b" ")
                cut = stripped.rfind(b" ") + 1
                del self._line[cut:]
            elif byte >= 0x20 or byte == 0x09:
                if len(self._line) < self._limit:
                    self._line.append(byte)
        return lines


#: Output ending like this means the next typed line is a secret.
SECRET_PROMPT = re.compile(rb"(?i)(pass(word|phrase)|token|secret|pin)[^\n]{0,40}:\s*$")
