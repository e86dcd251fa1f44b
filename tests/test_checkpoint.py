"""C2SP signed notes and tlog checkpoints: Go's published vector, round trips, tampering."""

import pytest

from sealgate.recording import checkpoint as cp

# The example key and note from golang.org/x/mod/sumdb/note's documentation.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_go_note_vector_signs_and_verifies_identically():
    signer = cp.Signer.fromSkey(GO_SKEY)
    assert signer.verifier.vkey() == GO_VKEY
    assert signer.sign(GO_TEXT) == GO_NOTE
    assert signer.skey() == GO_SKEY
    assert cp.openNote(GO_NOTE, cp.Verifier.fromVkey(GO_VKEY)) == GO_TEXT


def test_checkpoint_round_trip_and_origin_check():
    signer = cp.Signer.generate("sealgate/node1")
    c = cp.Checkpoint("sealgate/node1", 42, bytes(range(32)))
    note = cp.signCheckpoint(signer, c)
    assert note.startswith("sealgate/node1\n42\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n\u2014 sealgate/node1 ")
    v = cp.Verifier.fromVkey(signer.verifier.vkey())
    assert cp.openCheckpoint(note, v, "sealgate/node1") == c
    with pytest.raises(cp.NoteError, match="origin"):
        cp.openCheckpoint(note, v, "sealgate/other")


def test_any_changed_byte_of_a_checkpoint_note_is_rejected():
    signer = cp.Signer.generate("sealgate/n")
    note = cp.signCheckpoint(signer, cp.Checkpoint("sealgate/n", 7, b"\x11" * 32))
    v = signer.verifier
    for i in range(len(note)):
        changed = note[:i] + chr(ord(note[i]) ^ 1) + note[i + 1 :]
        with pytest.raises(cp.NoteError):
            cp.openCheckpoint(changed, v, "sealgate/n")


def test_other_key_with_same_name_is_not_accepted():
    a, b = cp.Signer.generate("sealgate/n"), cp.Signer.generate("sealgate/n")
    note = a.sign("sealgate/n\n1\n" + "A" * 43 + "=\n")
    with pytest.raises(cp.NoteError, match="no signature by the key"):
        cp.openNote(note, b.verifier)


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "name+00000000",
        "name+00000000+!!!",
        "name+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VKEY[:-4],
        "bad name+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_verifier_keys_are_rejected(vkey):
    with pytest.raises(cp.NoteError):
        cp.Verifier.fromVkey(vkey)


@pytest.mark.parametrize(
    "text",
    ["o\n1\n", "o\n01\n" + "A" * 43 + "=\n", "o\n-1\n" + "A" * 43 + "=\n", "o\n1\nAAAA\n", "\n1\n" + "A" * 43 + "=\n"],
)
def test_malformed_checkpoint_bodies_are_rejected(text):
    with pytest.raises(cp.NoteError):
        cp.Checkpoint.parse(text)
