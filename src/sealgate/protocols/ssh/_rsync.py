"""
Sans-IO recogniser of what C{rsync --server} (and its daemon mode over ssh)
writes, for the exemption of file data from masking (see
L{sealgate.protocols.ssh._transfer} for the shape every recogniser shares).
"""

import re
import shlex
import struct

from sealgate.protocols.ssh._transfer import MAX_MESSAGE, MAX_RECORD, Piece, Recogniser

#: Multiplexed message codes (rsync io.h): MSG_DATA carries the protocol
#: stream itself; the others are texts (info, errors) or small numbers.
_MSG_DATA = 0
_MSG_CODES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 22, 33, 42, 86, 100, 101, 102})
_MPLEX_BASE = 7
_CF_VARINT_FLIST_FLAGS = 0x80
_U32LE = struct.Struct("<L")
_OPTION_Z = re.compile(r"^-[a-zA-Z]*z")
_NAMES = re.compile(rb"[a-z0-9 ]*")
_GREETING = re.compile(rb"@RSYNCD: (\d{1,3})\.\d+")


def rsyncOptions(command: str) -> tuple[bool, bool]:
    """
    From an C{rsync --server} command line: whether the server sends its
    checksum and its compression lists in the negotiation (it does unless a
    choice was given on the command line; compression only with C{-z}).
    """
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    checksums, compress = True, False
    for w in words[1:]:
        if w in ("--compress", "-z") or (not w.startswith("--") and _OPTION_Z.match(w.split("e.")[0])):
            compress = True
        elif w.startswith(("--checksum-choice", "--cc")):
            checksums = False
        elif w.startswith(("--compress-choice", "--zc", "--old-compress", "--new-compress")):
            compress = False
    return checksums, compress


def rsyncServer(command: str) -> "RsyncServer":
    """The recogniser for an C{rsync --server} command line (C{--daemon}: the daemon's greeting first)."""
    try:
        daemon = "--daemon" in shlex.split(command)
    except ValueError:
        daemon = False
    return RsyncServer(*rsyncOptions(command), daemon=daemon)


class RsyncServer(Recogniser):
    """
    The server side of C{rsync --server}: its protocol version (a 32-bit
    little-endian number; with C{daemon}, the daemon's text greeting
    C{@RSYNCD: 32.0 ...} up to C{@RSYNCD: OK}, masked), for 30 and later its compatibility flags (a
    varint) and the negotiated checksum and compression lists (vstrings),
    the checksum seed, then multiplexed messages to the end: a 4-byte
    header (code + 7 in the high byte, length below), MSG_DATA payloads
    exempt, every other message (info, warnings, errors) text to mask.
    """

    protocol = "rsync"
    TRANSITIONS = {
        "greeting": frozenset({"daemon"}),     # daemon mode: text lines to "@RSYNCD: OK"
        "daemon": frozenset({"agreed"}),
        "version": frozenset({"agreed"}),      # binary: the server's version
        "agreed": frozenset({"flags", "seed"}),
        "flags": frozenset({"strings", "seed"}),
        "strings": frozenset({"seed"}),
        "seed": frozenset({"header"}),
        "header": frozenset({"data", "message"}),
        "data": frozenset({"header"}),
        "message": frozenset({"header"}),
    }

    def __init__(self, checksumList: bool = True, compressList: bool = False,
                 daemon: bool = False) -> None:
        super().__init__()
        self._lists = (checksumList, compressList)
        self._state = "greeting" if daemon else "version"
        self._strings = 0
        self._left = 0
        self._code = 0
        self._client = b""
        self._daemon = daemon
        self.version = 0

    def clientData(self, data: bytes) -> None:
        # The client's version comes first (binary, or its daemon greeting
        # and then its arguments); the protocol spoken is the lower one.
        limit = MAX_MESSAGE if self._daemon else 4
        if len(self._client) < limit:
            self._client += data[:limit - len(self._client)]

    def _daemonLine(self, buf: bytes, pos: int, out: list[Piece]) -> int:
        """
        One text line of the daemon's greeting phase (C{@RSYNCD: 32.0 ...},
        the MOTD, C{@RSYNCD: OK}, C{@ERROR: ...}), masked as text; -1 to
        wait for the rest of it.
        """
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - pos > MAX_RECORD:
                self._fail()
                return pos
            return -1
        line = buf[pos:end + 1]
        if self._state == "greeting":
            m = _GREETING.match(line)
            if m is None:
                self._fail()
                return pos
            self.version = int(m.group(1))
            self._go("daemon")
        out.append((line, False))
        if line == b"@RSYNCD: OK\n":
            self._go("agreed")
        return end + 1

    def _agree(self) -> bool:
        """The version both sides speak (and, for a daemon, the options its client sent)."""
        if len(self._client) < 4:
            return False
        if self._client.startswith(b"@RSYNCD: "):
            m = _GREETING.match(self._client)
            if m is None:
                return False
            client = int(m.group(1))
            # Greeting, module name (and an auth reply), then the arguments
            # up to an empty one.
            args = []
            for a in re.split(rb"[\0\n]", self._client.split(b"\n", 2)[-1]):
                if not a:
                    break
                if a.startswith(b"-"):
                    args.append(a.decode("utf-8", "replace"))
            self._lists = rsyncOptions(" ".join(["rsync", *args]))
            self._daemon = False
        else:
            (client,) = _U32LE.unpack(self._client[:4])
        self.version = min(self.version, client)
        return self.version >= 27

    def _parse(self, buf: bytes, out: list[Piece]) -> int:
        pos, n = 0, len(buf)
        while pos < n and not self.failed:
            state = self._state
            if state == "data":
                take = min(self._left, n - pos)
                out.append((buf[pos:pos + take], True))
                pos += take
                self._left -= take
                if not self._left:
                    self._go("header")
                continue
            if state == "message":
                if n - pos < self._left:
                    return pos
                out.append((buf[pos:pos + self._left], False))
                pos += self._left
                self._go("header")
                continue
            if state in ("version", "seed", "header"):
                if n - pos < 4:
                    return pos
                (value,) = _U32LE.unpack_from(buf, pos)
                out.append((buf[pos:pos + 4], True))
                pos += 4
                if state == "version":
                    if not 27 <= value <= 40:
                        self._fail()
                        out.pop()
                        return pos - 4
                    self.version = value
                    self._go("agreed")
                elif state == "seed":
                    self._go("header")
                else:
                    self._header(value, out)
                    if self.failed:
                        return pos - 4
                continue
            if state in ("greeting", "daemon"):
                end = self._daemonLine(buf, pos, out)
                if end < 0:
                    return pos
                pos = end
                continue
            if state == "agreed":
                # The server reads the client's version before it writes
                # more, so the gateway has relayed it by now.
                if not self._agree():
                    self._fail()
                    return pos
                self._go("flags" if self.version >= 30 else "seed")
                continue
            if state == "flags":
                got = _varint(buf, pos)
                if got is None:
                    return pos
                flags, end = got
                out.append((buf[pos:end], True))
                pos = end
                if flags & _CF_VARINT_FLIST_FLAGS:
                    self._strings = sum(self._lists)
                self._go("strings" if self._strings else "seed")
                continue
            if state == "strings":
                string = _vstring(buf, pos)
                if string is None:
                    return pos
                text, end = string
                if not _NAMES.fullmatch(text):
                    self._fail()
                    return pos
                out.append((buf[pos:end], True))
                pos = end
                self._strings -= 1
                if not self._strings:
                    self._go("seed")
        return pos

    def _header(self, value: int, out: list[Piece]) -> None:
        code, length = (value >> 24) - _MPLEX_BASE, value & 0xFFFFFF
        if code not in _MSG_CODES or (code != _MSG_DATA and length > MAX_MESSAGE):
            out.pop()
            self._fail()
            return
        self._code, self._left = code, length
        if length:
            self._go("data" if code == _MSG_DATA else "message")


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """rsync's read_varint: the top bits of the first byte say how many bytes follow."""
    first = buf[pos]
    extra = 0
    while extra < 6 and first & (0x80 >> extra):
        extra += 1
    if pos + 1 + extra > len(buf):
        return None
    low = int.from_bytes(buf[pos + 1:pos + 1 + extra], "little")
    high = first & ((1 << (8 - extra)) - 1)
    return low | (high << (8 * extra)), pos + 1 + extra


def _vstring(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """rsync's read_vstring: a 1-byte length, or 2 bytes with the high bit set."""
    first = buf[pos]
    start = pos + 1
    if first & 0x80:
        if pos + 2 > len(buf):
            return None
        first = (first & 0x7F) << 8 | buf[pos + 1]
        start = pos + 2
    if start + first > len(buf):
        return None
    return buf[start:start + first], start + first
