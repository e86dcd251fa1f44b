"""C2SP tlog-checkpoint signed notes with Ed25519 keys (signing, parsing, verifying)."""

import base64
import hashlib
import re

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "
_NAME = re.compile(r"^[^\s+]+$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,19})$")


class NoteError(ValueError):
    """A key, note or checkpoint is malformed or its signature does not verify."""


def keyId(name: str, publicKey: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte key id: SHA-256(name || 0x0A || alg || public key)[:4] (alg 0x01 for note keys)."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + publicKey).digest()[:4]


def _checkName(name: str) -> None:
    if not name or not _NAME.match(name):
        raise NoteError(f"key name {name!r} must be non-empty without spaces or '+'")


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@attrs.frozen
class Verifier:
    """An Ed25519 note verifier: a key name and a public key."""

    name: str
    publicKey: bytes

    @property
    def keyId(self) -> bytes:
        return keyId(self.name, self.publicKey)

    @property
    def fingerprint(self) -> str:
        """C{SHA256:} and the unpadded base64 SHA-256 of the public key, as OpenSSH prints keys."""
        digest = hashlib.sha256(bytes([ALG_ED25519]) + self.publicKey).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def vkey(self) -> str:
        """The signed-note verifier key, C{name+hash+base64(0x01||key)}."""
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.publicKey).decode()
        return f"{self.name}+{self.keyId.hex()}+{blob}"

    @classmethod
    def fromVkey(cls, vkey: str) -> "Verifier":
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key has the form NAME+HASH+BASE64KEY")
        name, hexId, blob = parts
        _checkName(name)
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise NoteError("the verifier key's key part is not base64")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("the verifier key is not an Ed25519 key")
        v = cls(name, raw[1:])
        if hexId.lower() != v.keyId.hex():
            raise NoteError(f"the verifier key's hash {hexId} does not match its name and key")
        return v

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.publicKey).verify(signature, message)
        except InvalidSignature:
            return False
        return True


def isFingerprint(text: str) -> bool:
    """Whether C{text} looks like a L{Verifier.fingerprint} rather than a verifier key."""
    return text.strip().startswith("SHA256:")


class Signer:
    """An Ed25519 note signer."""

    def __init__(self, name: str, privateKey: Ed25519PrivateKey):
        _checkName(name)
        self.name = name
        self._key = privateKey
        self.verifier = Verifier(name, _raw(privateKey.public_key()))

    @classmethod
    def generate(cls, name: str) -> "Signer":
        return cls(name, Ed25519PrivateKey.generate())

    def skey(self) -> str:
        """The signer key in the Go note format, C{PRIVATE+KEY+name+hash+base64(0x01||seed)}."""
        seed = self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.keyId.hex()}+{blob}"

    @classmethod
    def fromSkey(cls, skey: str) -> "Signer":
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key has the form PRIVATE+KEY+NAME+HASH+BASE64KEY")
        try:
            raw = base64.b64decode(parts[4], validate=True)
        except ValueError:
            raise NoteError("the signer key's key part is not base64")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("the signer key is not an Ed25519 key")
        s = cls(parts[2], Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if parts[3].lower() != s.verifier.keyId.hex():
            raise NoteError("the signer key's hash does not match its name and key")
        return s

    def sign(self, text: str) -> str:
        """A signed note: C{text}, a blank line, one signature line."""
        if not text.endswith("\n") or "\n\n" in text:
            raise NoteError("note text must end in a newline and contain no blank line")
        sig = self._key.sign(text.encode())
        blob = base64.b64encode(self.verifier.keyId + sig).decode()
        return f"{text}\n{SIG_PREFIX}{self.name} {blob}\n"


def splitNote(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """
    A signed note's text (with its final newline) and its signatures as
    C{(key name, key id || signature)}, unverified.

    @raise NoteError: when the note or a signature line is malformed.
    """
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise NoteError("the note has no signature block")
    found = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line {line[:40]!r}")
        name, _, blob = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except ValueError:
            raise NoteError(f"signature by {name} is not base64")
        if len(raw) < 5:
            raise NoteError(f"signature by {name} is too short")
        if base64.b64encode(raw).decode() != blob:
            # Unused low bits of the last base64 digit: the same signature
            # written differently is still a changed note.
            raise NoteError(f"signature by {name} is not canonical base64 (altered)")
        found.append((name, raw))
    return text + "\n", found


def openNote(note: str, verifier: Verifier) -> str:
    """
    Check a signed note against one verifier and return its text.

    @raise NoteError: naming what is wrong (format, unknown key, bad signature).
    """
    text, sigs = splitNote(note)
    found = False
    for name, raw in sigs:
        if name != verifier.name or raw[:4] != verifier.keyId:
            continue
        if not verifier.verify(text.encode(), raw[4:]):
            raise NoteError(f"the signature by {name} does not verify (note or signature altered)")
        found = True
    if not found:
        raise NoteError(f"the note carries no signature by the key {verifier.name}+{verifier.keyId.hex()}")
    return text


@attrs.frozen
class Checkpoint:
    """A tlog checkpoint: origin, tree size, root hash."""

    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root, one per line")
        origin, size, root = lines[:3]
        if not origin:
            raise NoteError("the checkpoint's origin is empty")
        if not _SIZE.match(size):
            raise NoteError(f"the checkpoint's size {size[:30]!r} is not a decimal number")
        try:
            rootBytes = base64.b64decode(root, validate=True)
        except ValueError:
            raise NoteError("the checkpoint's root is not base64")
        if len(rootBytes) != 32:
            raise NoteError("the checkpoint's root is not a 32-byte hash")
        return cls(origin, int(size), rootBytes)


def signCheckpoint(signer: Signer, checkpoint: Checkpoint) -> str:
    return signer.sign(checkpoint.text())


def openCheckpoint(note: str, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint note and parse it; check the origin when given."""
    cp = Checkpoint.parse(openNote(note, verifier))
    if origin is not None and cp.origin != origin:
        raise NoteError(f"the checkpoint is for origin {cp.origin!r}, not {origin!r}")
    return cp
