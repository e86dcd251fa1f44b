"""RFC 9162 Merkle tree hashing, compact right-edge state, inclusion and consistency proofs."""

import hashlib

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


class ProofError(ValueError):
    """A proof, root, index or size is malformed or does not verify."""


def leafHash(leaf: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || leaf)."""
    return _sha256(b"\x00" + leaf).digest()


def nodeHash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


class CompactTree:
    """
    An append-only tree kept as its right edge: one hash per set bit of the
    size (largest subtree first), so appending is O(log n) and no leaf is
    ever rehashed.
    """

    __slots__ = ("size", "edge")

    def __init__(self, size: int = 0, edge: list | None = None):
        edge = list(edge or ())
        if len(edge) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} has {bin(size).count('1')} edge hashes, not {len(edge)}")
        self.size = size
        self.edge = edge

    def appendHash(self, h: bytes) -> None:
        """Append a leaf by its leaf hash."""
        edge = self.edge
        n = self.size
        while n & 1:
            h = _sha256(b"\x01" + edge.pop() + h).digest()
            n >>= 1
        edge.append(h)
        self.size += 1

    def append(self, leaf: bytes) -> bytes:
        """Append a leaf by its data; returns its leaf hash."""
        h = _sha256(b"\x00" + leaf).digest()
        self.appendHash(h)
        return h

    def root(self) -> bytes:
        edge = self.edge
        if not edge:
            return EMPTY_ROOT
        r = edge[-1]
        for h in reversed(edge[:-1]):
            r = _sha256(b"\x01" + h + r).digest()
        return r

    def copy(self) -> "CompactTree":
        return CompactTree(self.size, self.edge)

    def pack(self) -> bytes:
        """The edge as one blob (the size is stored beside it)."""
        return b"".join(self.edge)

    @classmethod
    def unpack(cls, size: int, blob: bytes) -> "CompactTree":
        return cls(size, [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)])


def rootOf(leafHashes) -> bytes:
    """MTH over a sequence of leaf hashes."""
    t = CompactTree()
    for h in leafHashes:
        t.appendHash(h)
    return t.root()


class Levels:
    """
    Every level of a tree over a list of leaf hashes, built once in O(n), so
    many inclusion proofs come out in O(log n) each.  A lone right node is
    promoted unchanged, which yields exactly the RFC 9162 tree.
    """

    def __init__(self, leafHashes):
        level = list(leafHashes)
        self.size = len(level)
        self.levels = [level]
        while len(level) > 1:
            nxt = [
                _sha256(b"\x01" + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) & 1:
                nxt.append(level[-1])
            self.levels.append(nxt)
            level = nxt

    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def inclusionProof(self, index: int) -> list:
        if not 0 <= index < self.size:
            raise ProofError(f"leaf index {index} is outside a tree of size {self.size}")
        proof = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index >>= 1
        return proof


def _subtree(hashes, lo, hi) -> bytes:
    return rootOf(hashes[lo:hi])


def _largestPowerOfTwoBelow(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def inclusionProof(leafHashes, index: int) -> list:
    """The RFC 9162 audit path for leaf C{index} in the tree of these leaf hashes."""
    return Levels(leafHashes).inclusionProof(index)


def consistencyProof(leafHashes, size1: int) -> list:
    """The RFC 9162 consistency proof from the first C{size1} leaves to all of them."""
    hashes = list(leafHashes)
    size2 = len(hashes)
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to {size2}")

    def subproof(m, lo, hi, complete):
        n = hi - lo
        if m == n:
            return [] if complete else [_subtree(hashes, lo, hi)]
        k = _largestPowerOfTwoBelow(n)
        if m <= k:
            return subproof(m, lo, lo + k, complete) + [_subtree(hashes, lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [_subtree(hashes, lo, lo + k)]

    return subproof(size1, 0, size2, True)


def _checkHash(h, what) -> None:
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")


def rootFromInclusionProof(index: int, size: int, leafHash_: bytes, proof) -> bytes:
    """RFC 9162 section 2.1.3.2: the root the proof leads to (raises if malformed)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _checkHash(leafHash_, "leaf hash")
    fn, sn = index, size - 1
    r = leafHash_
    for i, p in enumerate(proof):
        _checkHash(p, f"proof element {i}")
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verifyInclusion(index: int, size: int, leafHash_: bytes, proof, root: bytes) -> None:
    """Raise L{ProofError} unless the proof shows the leaf at C{index} in the tree C{root}."""
    _checkHash(root, "root")
    if rootFromInclusionProof(index, size, leafHash_, proof) != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


def verifyConsistency(size1: int, size2: int, root1: bytes, root2: bytes, proof) -> None:
    """RFC 9162 section 2.1.4.2; raise L{ProofError} unless tree C{size2} extends tree C{size1}."""
    proof = list(proof)
    if size1 <= 0 or size1 > size2:
        raise ProofError(f"no consistency proof from size {size1} to {size2}")
    if size1 == size2:
        # Nothing is hashed: the claim holds exactly when the roots are equal
        # (the upstream vectors accept this even for opaque, non-32-byte roots).
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError("roots of the same size differ")
        return
    _checkHash(root1, "first root")
    _checkHash(root2, "second root")
    for i, p in enumerate(proof):
        _checkHash(p, f"proof element {i}")
    if not proof:
        raise ProofError("consistency proof is empty")
    if size1 & (size1 - 1) == 0:
        proof = [root1] + proof
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the root of size {size2}")
