"""Exported bundles verify offline, and the same tampering as in the store is caught."""

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealgate.recording import _format
from sealgate.recording._engine import Engine, SessionState
from sealgate.recording.bundle import _LEN, MAGIC, readBundle, verifyBundle
from sealgate.recording.checkpoint import Signer, Verifier
from tests.test_store import cli

ORIGIN = "sealgate/bundle"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store with two sessions (one frame redacted), the first exported; returns (bundle bytes, vkey)."""
    d = tmp_path_factory.mktemp("store")
    e = Engine(d, ORIGIN)
    e.open()
    for sid, t in (("s1", 10.0), ("s2", 20.0)):
        s = SessionState(sid)
        items = [("open", s, {"identity": "alice"}, None, None, False)]
        items += [(s, t + i / 10, 0, i % 2, f"{sid}:{i};".encode() * (i + 1)) for i in range(30)]
        items += [("event", s, "command", {"command": "DROP TABLE x", "verdict": "deny"}, None, False),
                  ("close", s, "closed", {}, None, False)]
        e.apply(items[:15], now=t)
        e.apply([], now=t + 1.5)
        e.apply(items[15:], now=t + 2)
    e.close()
    assert cli("redact", "s1", "--frame", "4", "--reason", "secret typed", "--state-dir", str(d))[0] == 0
    code, vkey = cli("key", "show", "--state-dir", str(d))
    out = d / "s1.bundle"
    code, text = cli("export", "s1", "--out", str(out), "--state-dir", str(d))
    assert code == 0, text
    return out.read_bytes(), vkey.strip()


def _verify(tmp_path, data, *extra):
    path = tmp_path / "b.bundle"
    path.write_bytes(data)
    return cli("verify-bundle", str(path), *extra)


def _split(data):
    header, at = readBundle(data)
    return header, [tuple(bytes(x) for x in r) for r in _format.iterRecords(data, at)]


def _join(header, records):
    blob = json.dumps(header).encode()
    out = [MAGIC, _LEN.pack(len(blob)), blob]
    for leaf, salt, payload in records:
        out += [_format.RECORD.pack(len(leaf), len(salt), len(payload)), leaf, salt, payload]
    return b"".join(out)


def test_bundle_verifies_offline_with_the_published_key(exported, tmp_path):
    data, vkey = exported
    code, out = _verify(tmp_path, data, "--key", vkey)
    assert code == 0, out
    assert "30 frames" in out and "1 redacted" in out
    header, records = _split(data)
    assert header["redacted"] == [4] and records[4][1:] == (b"", b"")
    assert b"s2:" not in data  # only the exported session's frames
    assert max(len(json.dumps(leaf["proof"])) for leaf in header["leaves"]) < 1024


def test_bundle_without_a_key_verifies_against_its_own_and_says_so(exported, tmp_path, capsys):
    code, out = _verify(tmp_path, exported[0])
    assert code == 0
    assert "checked against the key inside the bundle" in capsys.readouterr().err


def test_wrong_key_is_refused(exported, tmp_path):
    other = Signer.generate(ORIGIN).verifier.vkey()
    code, out = _verify(tmp_path, exported[0], "--key", other)
    assert code == 1 and "carries no signature by the key" in out


def test_bundle_verifies_against_a_fingerprint_the_auditor_holds(exported, tmp_path):
    data, vkey = exported
    fp = Verifier.fromVkey(vkey).fingerprint
    code, out = _verify(tmp_path, data, "--key", fp)
    assert code == 0 and f"by key {fp} (the fingerprint you passed)" in out, out
    other = Signer.generate(ORIGIN).verifier.fingerprint
    code, out = _verify(tmp_path, data, "--key", other)
    assert code == 1 and f"the bundle's key is {fp}, not the key you hold ({other})" in out, out


def _flip(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 1]) + b[at + 1 :]


def flipPayload(header, records):
    leaf, salt, payload = records[7]
    records[7] = (leaf, salt, _flip(payload, 3))
    return "session s1 frame 7: its payload does not match its sealed commitment"


def flipLeaf(header, records):
    leaf, salt, payload = records[7]
    records[7] = (_flip(leaf, _format.PREFIX.size + 2 + 12), salt, payload)
    return "session s1 frame 7: its leaf was altered"


def flipLogLeaf(header, records):
    entry = next(x for x in header["leaves"] if b"DROP TABLE" in base64.b64decode(x["leaf"]))
    entry["leaf"] = base64.b64encode(base64.b64decode(entry["leaf"]).replace(b"deny", b"allo")).decode()
    return f"log leaf {entry['n']} is not in the signed log"


def flipSessionRoot(header, records):
    entry = next(x for x in header["leaves"] if b'"close"' in base64.b64decode(x["leaf"]))
    body = _format.parseLogLeaf(base64.b64decode(entry["leaf"]))
    body["root"] = "00" * 32
    entry["leaf"] = base64.b64encode(_format.logLeaf(body)).decode()
    return f"log leaf {entry['n']} is not in the signed log"


def flipProof(header, records):
    entry = header["leaves"][0]
    entry["proof"][0] = base64.b64encode(_flip(base64.b64decode(entry["proof"][0]), 0)).decode()
    return f"log leaf {entry['n']} is not in the signed log"


def flipCheckpoint(header, records):
    lines = header["checkpoint"].split("\n")
    lines[1] = str(int(lines[1]) + 1)
    header["checkpoint"] = "\n".join(lines)
    return "the checkpoint: the signature by sealgate/bundle does not verify"


def flipSignature(header, records):
    note = header["checkpoint"]
    i = len(note) - 8
    header["checkpoint"] = note[:i] + ("A" if note[i] != "A" else "B") + note[i + 1 :]
    return "the checkpoint: the signature by sealgate/bundle does not verify"


def deleteFrame(header, records):
    del records[12]
    return "session s1 frame 12: the leaf says it is frame 13"


def reorderFrames(header, records):
    records[2], records[3] = records[3], records[2]
    return "session s1 frame 2: the leaf says it is frame 3"


def truncateFrames(header, records):
    del records[20:]
    return "seals 30 frames but only 20 are stored"


def dropClose(header, records):
    header["leaves"] = [x for x in header["leaves"] if b'"close"' not in base64.b64decode(x["leaf"])]
    return "the bundle has no CLOSE leaf proven in the log"


def unredact(header, records):
    header["leaves"] = [x for x in header["leaves"] if b"redaction" not in base64.b64decode(x["leaf"])]
    return "session s1 frame 4: its payload does not match"


@pytest.mark.parametrize("tamper", [
    flipPayload, flipLeaf, flipLogLeaf, flipSessionRoot, flipProof, flipCheckpoint, flipSignature,
    deleteFrame, reorderFrames, truncateFrames, dropClose, unredact,
], ids=lambda f: f.__name__)
def test_tampered_bundle_fails_naming_the_piece(exported, tmp_path, tamper):
    data, vkey = exported
    header, records = _split(data)
    expected = tamper(header, records)
    code, out = _verify(tmp_path, _join(header, records), "--key", vkey)
    assert code == 1, out
    assert expected in out, out


def test_cut_off_bundle_fails(exported, tmp_path):
    data, vkey = exported
    code, out = _verify(tmp_path, data[:-100], "--key", vkey)
    assert code == 1 and "cut off" in out
    code, out = _verify(tmp_path, b"not a bundle", "--key", vkey)
    assert code == 1 and "not a sealgate bundle" in out


def test_open_session_cannot_be_exported(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    s = SessionState("live")
    e.apply([("open", s, {}, None, None, False), (s, 1.0, 0, 0, b"x")], forceCheckpoint=True)
    e.close()
    code, _ = cli("export", "live", "--out", str(tmp_path / "x"), "--state-dir", str(tmp_path))
    assert code == 2 and not (tmp_path / "x").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_changed_byte_is_caught_or_harmless_and_never_crashes(exported, data):
    from sealgate.recording.checkpoint import Verifier

    bundle, vkey = exported
    _, at = readBundle(bundle)
    where = data.draw(st.integers(0, len(bundle) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != bundle[where]))
    changed = bundle[:where] + bytes([value]) + bundle[where + 1 :]
    report, _ = verifyBundle(changed, Verifier.fromVkey(vkey))
    if where >= at or where < len(MAGIC) + _LEN.size:
        assert not report.ok  # frame records and framing are fully covered by the seal
