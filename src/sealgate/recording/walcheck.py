"""Structural checks of a store's SQLite write-ahead log, whose damage SQLite itself passes over in silence."""

import fcntl
import os
import struct
from pathlib import Path

_HEADER = struct.Struct(">IIIIIIII")
_FRAME = struct.Struct(">IIIIII")
_MAGIC = (0x377F0682, 0x377F0683)
#: Larger WALs are not walked (a warning says so): the check is pure Python,
#: about 35 ms of CPU per MiB.  SQLite checkpoints its WAL back to a few MiB
#: (1000 pages) unless a long reader holds it.
MAX_CHECKED = 64 * 1024 * 1024


def _checksum(data, bigEndian: bool, s0: int = 0, s1: int = 0) -> tuple:
    """SQLite's WAL checksum (a Fletcher-like sum over pairs of 32-bit words), continued from C{s0, s1}."""
    words = struct.unpack(f"{'>' if bigEndian else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def inUse(lockFile: Path) -> bool:
    """Whether a writer holds the store's lock (its WAL may then be mid-append as we read it)."""
    try:
        fd = os.open(lockFile, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def walDamage(path: Path) -> tuple:
    """
    C{(definite, possible)}: descriptions of damage to the WAL file at
    C{path}.  Definite damage is what no crash leaves behind (a broken
    header, a frame that fails its checksum with later commits after it);
    possible damage is what a torn write at a crash or an append in
    flight also shows (a frame cut short, a last commit that fails its
    checksum).  Either means committed transactions may be invisible:
    SQLite reads a WAL only up to its first bad frame.
    """
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_CHECKED else None
    except FileNotFoundError:
        return [], []
    if data is None:
        return [], [f"the WAL file {path} is over {MAX_CHECKED >> 20} MiB and was not checked"]
    if not data:
        return [], []  # reset after a checkpoint: nothing in it
    if len(data) < _HEADER.size:
        return [f"the WAL file {path} is cut short in its header ({len(data)} bytes)"], []
    magic, _version, pageSize, _seq, salt1, salt2, c0, c1 = _HEADER.unpack_from(data)
    if magic not in _MAGIC or pageSize < 512 or pageSize & (pageSize - 1):
        return [f"the WAL file {path} does not start with a WAL header (altered or corrupted): "
                "every transaction in it is invisible"], []
    big = magic & 1 == 1
    sums = _checksum(data[:24], big)
    if sums != (c0, c1):
        return [f"the WAL file {path}: its header fails its checksum (altered or corrupted): "
                "every transaction in it is invisible"], []
    size = _FRAME.size + pageSize
    at, frame, bad = _HEADER.size, 0, None
    while at < len(data):
        if at + size > len(data):
            where = f"the WAL file {path} is cut short in frame {frame} (byte {at})"
            return ([where] if bad is not None else []), ([] if bad is not None else [where])
        page, commit, s1, s2, f0, f1 = _FRAME.unpack_from(data, at)
        if (s1, s2) != (salt1, salt2):
            break  # frames left from before the WAL was last restarted: not part of it
        if bad is None:
            sums = _checksum(data[at + _FRAME.size : at + size], big, *_checksum(data[at : at + 8], big, *sums))
            if sums != (f0, f1):
                bad = frame
        elif commit:
            return [f"the WAL file {path}: frame {bad} fails its checksum, yet a later commit (frame "
                    f"{frame}) follows it: the transactions from frame {bad} on are invisible "
                    "(altered or corrupted)"], []
        at += size
        frame += 1
    if bad is not None:
        return [], [f"the WAL file {path}: frame {bad} fails its checksum, so its transaction is ignored "
                    "(a write torn by a crash, or altered)"]
    return [], []
