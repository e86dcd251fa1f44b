"""C2SP tlog-cosignature and tlog-witness formats, against the published texts.

Specs: https://c2sp.org/tlog-cosignature (v1.0.0, "Format", "Ed25519 signed
message") and https://c2sp.org/tlog-witness ("add-checkpoint").  The
examples below are copied from them.
"""

import base64
import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealgate.recording.checkpoint import Checkpoint, NoteError, Signer, splitNote
from sealgate.recording.cosignature import (
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    CosignatureVerifier,
    Cosigner,
    RequestError,
    addSignatures,
    cosignatures,
    parseSizeBody,
    signatureLines,
    signedMessage,
    sizeBody,
)

# tlog-cosignature: "Below is an example of a checkpoint that contains a cosignature."
SPEC_NOTE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
# tlog-cosignature, "Ed25519 signed message": the message for that checkpoint.
SPEC_MESSAGE = (b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
                b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
# tlog-witness, add-checkpoint: "Example request body".
SPEC_REQUEST = (
    "old 20852014\n"
    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
    "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
    "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
    "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
    "\n"
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n"
).encode()
# tlog-witness, add-checkpoint: "Example response body".
SPEC_RESPONSE = (
    "\u2014 witness.example/w1 CMp+6LWBU0anHGH5aNDTJkH/gj79sG+T6+iP2ThYN5krrDJbR1HDnucjL39QsZTSvVjyQLrdk3DXDqI5G2HgLatVs0pWh6Up69HVOw==\n"
    "\u2014 witness.example/w1 I7rEps0pvK2UqkS2gSpVUDhrhVtQV9lgF6pRrWAvjJHjyWpW7VcE3SiOlVlbQNt64vWhO+DlkL0+UfzuOBMh9ChdMkP1vi/lCAsmlw==\n"
    "\u2014 witness.example/w2 AWui8Sk55XjYLOijihBjhqEH6nS1ndDymE0a+6idX7pLcnoB+dhnz0854aLZgrrKbYKA7nC3HNJhm/kWl7oJlqU3rXXvpysAdyP3wQ==\n"
)


def test_spec_cosignature_is_key_id_then_big_endian_timestamp_then_signature():
    text, sigs = splitNote(SPEC_NOTE)
    name, raw = sigs[1]
    assert name == "witness.example.com/w1"
    assert len(raw) == 4 + 8 + 64
    (timestamp,) = struct.unpack(">Q", raw[4:12])
    # The spec's signed-message example carries this time for this cosignature.
    assert timestamp == 1679315147
    assert signedMessage(text, timestamp) == SPEC_MESSAGE


def test_key_id_uses_signature_type_0x04():
    w = Cosigner.generate("witness.example.com/w1").verifier
    expected = hashlib.sha256(b"witness.example.com/w1\n\x04" + w.publicKey).digest()[:4]
    assert w.keyId == expected
    assert base64.b64decode(w.vkey().split("+", 2)[2])[0] == 0x04
    assert CosignatureVerifier.fromVkey(w.vkey()) == w


def test_a_note_key_is_not_a_witness_key():
    note = Signer.generate("example.com/log").verifier.vkey()
    with pytest.raises(NoteError, match="0x04"):
        CosignatureVerifier.fromVkey(note)


def test_vkey_with_wrong_hash_is_refused():
    w = Cosigner.generate("w1").verifier
    name, _, blob = w.vkey().split("+", 2)
    with pytest.raises(NoteError, match="does not match"):
        CosignatureVerifier.fromVkey(f"{name}+00000000+{blob}")


def test_skey_round_trips():
    c = Cosigner.generate("w.example/a")
    assert Cosigner.fromSkey(c.skey()).verifier == c.verifier


def _signed(size=5):
    log = Signer.generate("example.com/log")
    cp = Checkpoint("example.com/log", size, hashlib.sha256(b"%d" % size).digest())
    return log, cp, log.sign(cp.text())


def test_cosignature_verifies_and_states_its_time():
    _log, cp, note = _signed()
    w = Cosigner.generate("w1")
    cosigned = addSignatures(note, [w.cosign(cp.text(), 1700000000)])
    assert [(c.name, c.timestamp) for c in cosignatures(cosigned, [w.verifier])] == [("w1", 1700000000)]


def test_cosignature_over_another_checkpoint_does_not_count():
    _log, cp, note = _signed(5)
    w = Cosigner.generate("w1")
    other = Checkpoint(cp.origin, 6, cp.root)
    assert cosignatures(addSignatures(note, [w.cosign(other.text(), 1)]), [w.verifier]) == []


def test_note_signature_by_the_same_key_is_not_a_cosignature():
    # The 0x04 domain: a plain note signature over the body must not pass as cosignature/v1.
    _log, cp, note = _signed()
    w = Cosigner.generate("w1")
    assert cosignatures(note, [w.verifier]) == []
    forged = base64.b64encode(w.verifier.keyId + struct.pack(">Q", 0) + w._key.sign(cp.text().encode()))
    assert cosignatures(note + f"\u2014 w1 {forged.decode()}\n", [w.verifier]) == []


def test_unknown_witness_lines_are_ignored_and_one_per_witness_counts():
    _log, cp, note = _signed()
    a, b, stranger = Cosigner.generate("a"), Cosigner.generate("b"), Cosigner.generate("a")
    lines = [stranger.cosign(cp.text(), 1), a.cosign(cp.text(), 2), a.cosign(cp.text(), 3), b.cosign(cp.text(), 4)]
    found = cosignatures(addSignatures(note, lines), [a.verifier, b.verifier])
    assert sorted(c.name for c in found) == ["a", "b"]


def test_spec_request_parses_and_encodes_byte_for_byte():
    req = AddCheckpoint.parse(SPEC_REQUEST)
    assert req.oldSize == 20852014
    assert len(req.proof) == 4
    assert req.proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert req.checkpoint() == Checkpoint("example.com/behind-the-sofa", 20852163,
                                          base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="))
    assert len(splitNote(req.note)[1]) == 2
    assert req.encode() == SPEC_REQUEST


def test_spec_response_is_three_signature_lines():
    lines = signatureLines(SPEC_RESPONSE)
    assert [line.split(" ")[1] for line in lines] == ["witness.example/w1", "witness.example/w1", "witness.example/w2"]


@pytest.mark.parametrize("body, why", [
    (b"old 01\n\nx", "leading zeroes"),
    (b"old -1\n\nx", "decimal"),
    (b"new 1\n\nx", "old <size>"),
    (b"old 1\nnot base64!\n\nx", "base64"),
    (b"old 1\nAAAA\n\nx", "32-byte"),
    (b"old 1\n" + b"".join([base64.b64encode(bytes(32)) + b"\n"] * 64) + b"\nx", "63"),
    (b"old 1\n", "empty line"),
    (b"old 1\n\n\xff", "UTF-8"),
])
def test_malformed_requests_are_bad_requests(body, why):
    with pytest.raises(RequestError, match=why):
        AddCheckpoint.parse(body)


def test_sixty_three_proof_lines_are_allowed():
    body = b"old 1\n" + b"".join([base64.b64encode(bytes(32)) + b"\n"] * 63) + b"\nx"
    assert len(AddCheckpoint.parse(body).proof) == 63


def test_conflict_body_is_size_and_newline():
    assert SIZE_CONTENT_TYPE == "text/x.tlog.size"
    assert sizeBody(20852014) == b"20852014\n"
    assert parseSizeBody(b"20852014\n") == 20852014
    with pytest.raises(NoteError):
        parseSizeBody(b"020\n")


@given(st.integers(0, 2**63 - 1), st.lists(st.binary(min_size=32, max_size=32), max_size=63),
       st.integers(0, 2**40))
def test_request_round_trips(old, proof, size):
    note = Checkpoint("o", size, bytes(32)).text() + "\n\u2014 o AAAAAAA=\n"
    req = AddCheckpoint(old, tuple(proof), note)
    assert AddCheckpoint.parse(req.encode()) == req
