"""RFC 9162 tree hash and proofs against the transparency-dev vectors and Hypothesis."""

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.recording import merkle

VECTORS = Path(os.environ.get("SEALGATE_MERKLE_VECTORS", "/work/shared/merkle-vectors"))

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="merkle vectors not present")


def _cases(kind):
    return sorted((VECTORS / kind).rglob("*.json")) if VECTORS.is_dir() else []


def _b64(value):
    return base64.b64decode(value)


def test_vector_count_is_complete():
    assert len(_cases("inclusion")) + len(_cases("consistency")) == 196


def test_roots_for_every_size():
    data = json.loads((VECTORS / "roots.json").read_text())
    leaves = [bytes.fromhex(x) for x in data["leaf_inputs_hex"]]
    for size, want in data["root_hex_by_tree_size"].items():
        size = int(size)
        hashes = [merkle.leafHash(x) for x in leaves[:size]]
        assert merkle.rootOf(hashes).hex() == want
        assert merkle.Levels(hashes).root().hex() == want
        t = merkle.CompactTree()
        for x in leaves[:size]:
            t.append(x)
        assert t.root().hex() == want
        assert merkle.CompactTree.unpack(t.size, t.pack()).root().hex() == want


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vector(path):
    case = json.loads(path.read_text())
    args = (
        case["leafIdx"],
        case["treeSize"],
        _b64(case["leafHash"]),
        [_b64(p) for p in case["proof"] or []],
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verifyInclusion(*args)
    else:
        merkle.verifyInclusion(*args)


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vector(path):
    case = json.loads(path.read_text())
    args = (
        case["size1"],
        case["size2"],
        _b64(case["root1"]),
        _b64(case["root2"]),
        [_b64(p) for p in case["proof"] or []],
    )
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verifyConsistency(*args)
    else:
        merkle.verifyConsistency(*args)


def _tree(n):
    return [merkle.leafHash(i.to_bytes(4, "big")) for i in range(n)]


def _flip(b: bytes, bit: int) -> bytes:
    a = bytearray(b)
    a[bit // 8] ^= 1 << (bit % 8)
    return bytes(a)


def _rootsAt(hashes, sizes):
    """Roots of the prefixes of C{hashes} at C{sizes}, in one pass."""
    want, roots, t = set(sizes), {}, merkle.CompactTree()
    for h in hashes[: max(want)]:
        t.appendHash(h)
        if t.size in want:
            roots[t.size] = t.root()
    return roots


# A size is authenticated together with its root (both are in the signed
# checkpoint), so a flipped size is paired with the genuine root of that size:
# RFC 9162 proofs do not encode the size themselves, and leaf 0 of a 5-leaf
# tree has the same audit path shape as in a 7-leaf tree.


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_generated_inclusion_proofs_verify_and_any_bit_flip_fails(n, data):
    bits = n.bit_length() + 1
    hashes = _tree(1 << bits)
    levels = merkle.Levels(hashes[:n])
    root = levels.root()
    index = data.draw(st.integers(0, n - 1))
    proof = levels.inclusionProof(index)
    assert proof == merkle.inclusionProof(hashes[:n], index)
    assert len(proof) <= (n - 1).bit_length()
    merkle.verifyInclusion(index, n, hashes[index], proof, root)

    bit = data.draw(st.integers(0, 255))
    bad = [
        (index, n, hashes[index], proof, _flip(root, bit)),
        (index, n, _flip(hashes[index], bit), proof, root),
    ]
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bad.append((index, n, hashes[index], proof[:which] + [_flip(proof[which], bit)] + proof[which + 1 :], root))
    sizes = [n ^ (1 << k) for k in range(bits)]
    roots = _rootsAt(hashes, [s for s in sizes if s])
    for k in range(bits):
        bad.append((index ^ (1 << k), n, hashes[index], proof, root))
        bad.append((index, sizes[k], hashes[index], proof, roots.get(sizes[k], merkle.EMPTY_ROOT)))
    for args in bad:
        with pytest.raises(merkle.ProofError):
            merkle.verifyInclusion(*args)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_generated_consistency_proofs_verify_and_any_bit_flip_fails(n, data):
    bits = n.bit_length() + 1
    hashes = _tree(1 << bits)
    m = data.draw(st.integers(1, n))
    proof = merkle.consistencyProof(hashes[:n], m)
    sizes1 = [m ^ (1 << k) for k in range(bits)]
    sizes2 = [n ^ (1 << k) for k in range(bits)]
    roots = _rootsAt(hashes, [s for s in sizes1 + sizes2 + [m, n] if s])
    root1, root2 = roots[m], roots[n]
    merkle.verifyConsistency(m, n, root1, root2, proof)

    bit = data.draw(st.integers(0, 255))
    bad = [
        (m, n, _flip(root1, bit), root2, proof),
        (m, n, root1, _flip(root2, bit), proof),
    ]
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bad.append((m, n, root1, root2, proof[:which] + [_flip(proof[which], bit)] + proof[which + 1 :]))
    for m2, n2 in zip(sizes1, sizes2, strict=True):
        bad.append((m2, n, roots.get(m2, merkle.EMPTY_ROOT), root2, proof))
        bad.append((m, n2, root1, roots.get(n2, merkle.EMPTY_ROOT), proof))
    for args in bad:
        with pytest.raises(merkle.ProofError):
            merkle.verifyConsistency(*args)


@given(st.lists(st.binary(max_size=40), max_size=300))
def test_compact_tree_matches_full_tree(leaves):
    t = merkle.CompactTree()
    for x in leaves:
        t.append(x)
        assert len(t.edge) == bin(t.size).count("1")
    assert t.root() == merkle.rootOf(merkle.leafHash(x) for x in leaves)


@pytest.mark.parametrize("n", [1023, 1024, 1025, 2049, 3000])
def test_large_trees_every_leaf_proves_and_a_flipped_proof_fails(n):
    hashes = _tree(n)
    levels = merkle.Levels(hashes)
    root = levels.root()
    for index in range(0, n, 7):
        proof = levels.inclusionProof(index)
        merkle.verifyInclusion(index, n, hashes[index], proof, root)
        if proof:
            with pytest.raises(merkle.ProofError):
                merkle.verifyInclusion(index, n, hashes[index], proof[:-1] + [_flip(proof[-1], index % 256)], root)
    for m in (1, n // 3, n - 1, n):
        proof = merkle.consistencyProof(hashes, m)
        merkle.verifyConsistency(m, n, merkle.rootOf(hashes[:m]), root, proof)
