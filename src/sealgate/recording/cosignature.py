"""C2SP tlog-cosignature (Ed25519 cosignature/v1) and the tlog-witness add-checkpoint wire format, pure."""

import base64
import re
import struct

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from sealgate.recording.checkpoint import SIG_PREFIX, Checkpoint, NoteError, keyId, splitNote

#: The signature type of an Ed25519 cosignature/v1 key (tlog-cosignature, "Format").
ALG_COSIGNATURE_V1 = 0x04
#: The Content-Type of a witness's 409 answer (tlog-witness, add-checkpoint).
SIZE_CONTENT_TYPE = "text/x.tlog.size"
#: At most this many consistency proof lines in a request (tlog-witness).
MAX_PROOF_LINES = 63
_MAX_TIMESTAMP = 2**63 - 1
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,19})$")


def signedMessage(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: a header line, a time line, then the whole checkpoint body."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def _decodeKey(blob: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise NoteError(f"the {what}'s key part is not base64")
    if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
        raise NoteError(f"the {what} is not an Ed25519 cosignature/v1 key (type 0x04)")
    return raw[1:]


@attrs.frozen
class Cosignature:
    """One verified cosignature: who, and the time it states."""

    name: str
    timestamp: int


@attrs.frozen
class CosignatureVerifier:
    """A witness's public identity: its name and Ed25519 key, as a vkey of type 0x04."""

    name: str
    publicKey: bytes

    @property
    def keyId(self) -> bytes:
        return keyId(self.name, self.publicKey, ALG_COSIGNATURE_V1)

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + self.publicKey).decode()
        return f"{self.name}+{self.keyId.hex()}+{blob}"

    @classmethod
    def fromVkey(cls, vkey: str) -> "CosignatureVerifier":
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not parts[0] or any(c.isspace() for c in parts[0]):
            raise NoteError("a witness key has the form NAME+HASH+BASE64KEY")
        v = cls(parts[0], _decodeKey(parts[2], "witness key"))
        if parts[1].lower() != v.keyId.hex():
            raise NoteError(f"the witness key's hash {parts[1]} does not match its name and key")
        return v

    def check(self, text: str, raw: bytes) -> Cosignature | None:
        """The cosignature in C{raw} (key id || timestamp || signature) over C{text}, or None if it is not valid."""
        if len(raw) != 4 + 8 + 64 or raw[:4] != self.keyId:
            return None
        (timestamp,) = struct.unpack(">Q", raw[4:12])
        if timestamp > _MAX_TIMESTAMP:
            return None
        try:
            Ed25519PublicKey.from_public_bytes(self.publicKey).verify(raw[12:], signedMessage(text, timestamp))
        except Exception:
            return None
        return Cosignature(self.name, timestamp)


class Cosigner:
    """A witness's private key: cosigns checkpoint bodies."""

    def __init__(self, name: str, privateKey: Ed25519PrivateKey):
        if not name or any(c.isspace() or c == "+" for c in name):
            raise NoteError(f"witness name {name!r} must be non-empty without spaces or '+'")
        self.name = name
        self._key = privateKey
        self.verifier = CosignatureVerifier(name, privateKey.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls, name: str) -> "Cosigner":
        return cls(name, Ed25519PrivateKey.generate())

    def skey(self) -> str:
        """The key in the Go note format, C{PRIVATE+KEY+name+hash+base64(0x04||seed)}."""
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        blob = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.keyId.hex()}+{blob}"

    @classmethod
    def fromSkey(cls, skey: str) -> "Cosigner":
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a witness signing key has the form PRIVATE+KEY+NAME+HASH+BASE64KEY")
        c = cls(parts[2], Ed25519PrivateKey.from_private_bytes(_decodeKey(parts[4], "witness signing key")))
        if parts[3].lower() != c.verifier.keyId.hex():
            raise NoteError("the witness signing key's hash does not match its name and key")
        return c

    def cosign(self, text: str, timestamp: int) -> str:
        """One note signature line (with its newline) cosigning the checkpoint body C{text}."""
        sig = self._key.sign(signedMessage(text, timestamp))
        blob = base64.b64encode(self.verifier.keyId + struct.pack(">Q", timestamp) + sig).decode()
        return f"{SIG_PREFIX}{self.name} {blob}\n"


def cosignatures(note: str, witnesses) -> list[Cosignature]:
    """
    The valid cosignatures in a signed note by the given witnesses, one per
    witness; lines by unknown keys are ignored (tlog-witness: the client
    MUST ignore them), as are lines that do not verify.
    """
    text, sigs = splitNote(note)
    found: dict[str, Cosignature] = {}
    for name, raw in sigs:
        for w in witnesses:
            if name == w.name and w.name not in found:
                c = w.check(text, raw)
                if c is not None:
                    found[w.name] = c
    return list(found.values())


def signatureLines(body: str) -> list[str]:
    """The note signature lines of a witness's 200 answer (each with its newline)."""
    if not body.endswith("\n"):
        raise NoteError("a cosignature answer ends in a newline")
    lines = [line + "\n" for line in body[:-1].split("\n")]
    if not lines or not all(line.startswith(SIG_PREFIX) and " " in line[len(SIG_PREFIX):] for line in lines):
        raise NoteError("a cosignature answer is one or more note signature lines")
    return lines


def addSignatures(note: str, lines) -> str:
    """The note with the signature lines it does not carry yet appended."""
    have = set(note.rpartition("\n\n")[2].splitlines(keepends=True))
    return note + "".join(line for line in lines if line not in have)


class RequestError(ValueError):
    """A malformed add-checkpoint request: the witness answers 400 Bad Request."""


@attrs.frozen
class AddCheckpoint:
    """The body of C{POST <prefix>/add-checkpoint}: old size, consistency proof, signed checkpoint."""

    oldSize: int
    proof: tuple[bytes, ...]
    note: str

    def encode(self) -> bytes:
        lines = [f"old {self.oldSize}\n"] + [base64.b64encode(h).decode() + "\n" for h in self.proof]
        return ("".join(lines) + "\n" + self.note).encode()

    @classmethod
    def parse(cls, body: bytes) -> "AddCheckpoint":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the request is not UTF-8")
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise RequestError("the request has no empty line before the checkpoint")
        lines = head.split("\n")
        old = lines[0]
        if not old.startswith("old ") or not _DECIMAL.match(old[4:]):
            raise RequestError("the first line must be 'old <size>' in decimal without leading zeroes")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise RequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
        proof = []
        for line in lines[1:]:
            try:
                h = base64.b64decode(line, validate=True)
            except ValueError:
                raise RequestError("a consistency proof line is not base64")
            if len(h) != 32:
                raise RequestError("a consistency proof line is not a 32-byte hash")
            proof.append(h)
        return cls(int(old[4:]), tuple(proof), note)

    def checkpoint(self) -> Checkpoint:
        """The submitted checkpoint, parsed (its signatures unchecked)."""
        try:
            return Checkpoint.parse(splitNote(self.note)[0])
        except NoteError as e:
            raise RequestError(str(e))


def sizeBody(size: int) -> bytes:
    """A 409 answer's body: the witness's latest cosigned size."""
    return f"{size}\n".encode()


def parseSizeBody(body: bytes) -> int:
    text = body.decode("ascii", "replace")
    if not text.endswith("\n") or not _DECIMAL.match(text[:-1]):
        raise NoteError(f"a {SIZE_CONTENT_TYPE} body is a decimal size and a newline, not {text[:30]!r}")
    return int(text[:-1])


def quorumProblem(note: str, witnesses, quorum: int) -> str | None:
    """Why C{note} does not carry C{quorum} valid cosignatures by distinct C{witnesses}, or None when it does."""
    if quorum <= 0:
        return None
    try:
        found = cosignatures(note, witnesses)
    except NoteError as e:
        return f"the checkpoint's signatures cannot be read: {e}"
    if len(found) >= quorum:
        return None
    by = ", ".join(sorted(c.name for c in found)) or "none"
    return (f"the checkpoint carries {len(found)} valid cosignature(s) of the {len(list(witnesses))} witnesses "
            f"given (by: {by}); the quorum is {quorum}")
