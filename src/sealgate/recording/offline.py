"""A verified bundle read as a recorded session, with no store and no config: the auditor's offline view."""

import base64
import mmap
from pathlib import Path
from typing import Any

import attrs
from zope.interface import implementer

from sealgate.interfaces import IRecordedSession
from sealgate.recording import Frame
from sealgate.recording import _format as fmt
from sealgate.recording.bundle import MAGIC, readBundle, verifyBundle
from sealgate.recording.records import SessionRecord, lastSeal


class BundleRefused(ValueError):
    """The bundle does not verify (or does not parse); the message lists why."""


@implementer(IRecordedSession)
@attrs.define
class BundleSession:
    """
    One session read from an exported bundle that verified.  Only what the
    proofs cover is used: the log leaves proven in the signed log, and the
    frame records whose commitments the session tree sealed.
    """

    path: str
    record: SessionRecord
    report: Any
    _data: Any = attrs.field(repr=False)
    _leaves: list = attrs.field(repr=False)
    _redacted: frozenset = attrs.field(repr=False)
    _at: int = attrs.field(repr=False)

    @classmethod
    def open(cls, path, trusted=None) -> "BundleSession":
        """
        Verify the bundle at C{path} (against C{trusted}, a Verifier, or its
        own key with a warning in C{report.warnings}) and read it.

        @raise BundleRefused: it did not verify; nothing of it is shown.
        @raise OSError: it cannot be read.
        """
        with open(path, "rb") as f:
            data: Any
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                data = b""  # an empty file: mmap refuses length 0
        report, header = verifyBundle(data, trusted)
        if not report.ok or header is None:
            raise BundleRefused("; ".join(report.problems) or "the bundle does not verify")
        header, at = readBundle(data)
        leaves = sorted((fmt.parseLogLeaf(base64.b64decode(e["leaf"])) for e in header["leaves"]),
                        key=lambda b: b["n"])
        opening = next(b for b in leaves if b["type"] == "open")
        record = SessionRecord.fromLeaves(opening, lastSeal(leaves))
        return cls(str(path), record, report, data, leaves, frozenset(header.get("redacted") or ()), at)

    def frames(self):
        for position, (leaf, _salt, payload) in enumerate(fmt.iterRecords(self._data, self._at)):
            f = fmt.parseFrameLeaf(leaf)
            yield Frame(f.seq, f.time, f.channel, f.direction, f.offset,
                        None if position in self._redacted else bytes(payload))

    def events(self) -> list:
        return list(self._leaves)

    def redactions(self) -> dict:
        return {seq: {} for seq in sorted(self._redacted)}

    def bundle(self, out) -> dict:
        out.write(self._data)
        return readBundle(self._data)[0]


def isBundle(path: str) -> bool:
    """Whether C{path} names a bundle file rather than a session id."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
