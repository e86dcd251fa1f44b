"""The witness service: its add-checkpoint rules (tlog-witness, https://c2sp.org/tlog-witness), its store, under twistd."""

import threading
import urllib.error
import urllib.request

import pytest

from sealgate.configtable import ConfigError
from sealgate.recording import merkle
from sealgate.recording.checkpoint import Checkpoint, Signer
from sealgate.recording.cosignature import (
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    Cosigner,
    addSignatures,
    cosignatures,
    signatureLines,
)
from sealgate.witness._decide import Latest, decide
from sealgate.witness.config import loadWitnessConfig
from sealgate.witness.store import WitnessStore
from tests.harness.witness import WitnessProcess

ORIGIN = "gw.example/node1"


class Log:
    """A tiny log with its signer: leaves, roots, proofs, notes."""

    def __init__(self, signer=None, tag=b""):
        self.signer = signer or Signer.generate(ORIGIN)
        self.tag = tag
        self.hashes: list[bytes] = []

    def grow(self, n: int) -> "Log":
        for _ in range(n):
            self.hashes.append(merkle.leafHash(self.tag + b"leaf %d" % len(self.hashes)))
        return self

    def cp(self, size=None) -> Checkpoint:
        size = len(self.hashes) if size is None else size
        return Checkpoint(ORIGIN, size, merkle.rootOf(self.hashes[:size]))

    def note(self, size=None) -> str:
        return self.signer.sign(self.cp(size).text())

    def request(self, old: int, size=None) -> AddCheckpoint:
        size = len(self.hashes) if size is None else size
        proof = merkle.consistencyProof(self.hashes[:size], old) if 0 < old < size else []
        return AddCheckpoint(old, tuple(proof), self.note(size))


@pytest.fixture
def log():
    return Log().grow(7)


def _logs(log):
    return {ORIGIN: (log.signer.verifier,)}


def test_first_checkpoint_is_cosigned_from_size_zero(log):
    out = decide(log.request(0), _logs(log), None)
    assert (out.status, out.checkpoint) == (200, log.cp())


def test_unknown_origin_is_404(log):
    assert decide(log.request(0), {"other": (log.signer.verifier,)}, None).status == 404


def test_checkpoint_signed_by_an_untrusted_key_is_403(log):
    assert decide(log.request(0), {ORIGIN: (Signer.generate(ORIGIN).verifier,)}, None).status == 403


def test_old_size_past_the_checkpoint_is_400(log):
    assert decide(AddCheckpoint(8, (), log.note()), _logs(log), Latest(8, bytes(32))).status == 400


def test_stale_old_size_is_409_with_the_witness_size(log):
    out = decide(log.request(3), _logs(log), Latest(5, log.cp(5).root))
    assert (out.status, out.body, out.contentType) == (409, b"5\n", SIZE_CONTENT_TYPE)


def test_extension_with_a_valid_proof_is_cosigned(log):
    out = decide(log.request(3), _logs(log), Latest(3, log.cp(3).root))
    assert out.status == 200


def test_extension_with_a_wrong_proof_is_422(log):
    req = log.request(3)
    bad = AddCheckpoint(3, (bytes(32),) + req.proof[1:], req.note)
    assert decide(bad, _logs(log), Latest(3, log.cp(3).root)).status == 422


def test_proof_from_zero_must_be_empty(log):
    assert decide(AddCheckpoint(0, (bytes(32),), log.note()), _logs(log), None).status == 422


def test_same_size_other_root_is_a_fork_409(log):
    fork = Log(log.signer, tag=b"forked ").grow(7)
    out = decide(fork.request(7), _logs(log), Latest(7, log.cp().root))
    assert (out.status, out.body) == (409, b"7\n")


def test_log_re_signed_at_the_cosigned_size_with_a_rewritten_history_is_refused(log):
    # The operator holds the log key: a rewritten log, signed, extends nothing the witness cosigned.
    fork = Log(log.signer, tag=b"rewritten ").grow(9)
    req = AddCheckpoint(7, tuple(merkle.consistencyProof(fork.hashes, 7)), fork.note())
    assert decide(req, _logs(log), Latest(7, log.cp().root)).status == 422


def test_store_persists_and_refuses_a_rollback(tmp_path, log):
    w = Cosigner.generate("w1")
    store = WitnessStore(tmp_path / "w.sqlite", clock=lambda: 1700000000)
    out = store.submit(log.request(0, 5).encode(), _logs(log), w)
    assert out.status == 200
    cosigned = addSignatures(log.note(5), signatureLines(out.body.decode()))
    assert [(c.name, c.timestamp) for c in cosignatures(cosigned, [w.verifier])] == [("w1", 1700000000)]
    store.close()
    store = WitnessStore(tmp_path / "w.sqlite")
    assert store.latest(ORIGIN)[0] == 5
    assert store.submit(log.request(0, 3).encode(), _logs(log), w).status == 409
    assert store.submit(log.request(5, 7).encode(), _logs(log), w).status == 200
    assert store.latest(ORIGIN)[0] == 7
    assert [s for s, _ in store.refusals(ORIGIN)] == [409]


def test_racing_requests_never_roll_the_witness_back(tmp_path, log):
    store = WitnessStore(tmp_path / "w.sqlite")
    w = Cosigner.generate("w1")
    assert store.submit(log.request(0, 2).encode(), _logs(log), w).status == 200
    bodies = [log.request(2, n).encode() for n in range(3, 8)]
    results: list[int] = []
    threads = [threading.Thread(target=lambda b=b: results.append(store.submit(b, _logs(log), w).status))
               for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Every request claims old size 2: exactly one can be cosigned, the rest learn the new size.
    assert sorted(results) == [200, 409, 409, 409, 409]
    assert store.latest(ORIGIN)[0] > 2


def test_malformed_body_is_400(tmp_path, log):
    store = WitnessStore(tmp_path / "w.sqlite")
    assert store.submit(b"old x\n\n", _logs(log), Cosigner.generate("w1")).status == 400


def test_config_error_names_file_key_and_fix(tmp_path):
    key = tmp_path / "k"
    key.write_text(Cosigner.generate("w1").skey())
    cfg = tmp_path / "witness.toml"
    cfg.write_text(f'[witness]\nkey_file = "{key}"\n\n[[logs]]\norigin = "o"\nvkey = "nonsense"\n')
    with pytest.raises(ConfigError) as e:
        loadWitnessConfig(cfg)
    assert str(cfg) in str(e.value) and "logs[0].vkey" in str(e.value) and "fix:" in str(e.value)


def _post(url: str, body: bytes):
    req = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_witness_under_twistd_speaks_the_spec_status_codes(tmp_path, log):
    proc = WitnessProcess(tmp_path / "w1", "witness.test/w1", {ORIGIN: log.signer.verifier.vkey()}).start()
    try:
        status, ctype, body = _post(proc.url, log.request(2, 5).encode())
        assert (status, ctype, body) == (409, SIZE_CONTENT_TYPE, b"0\n")
        status, _, body = _post(proc.url, log.request(0, 5).encode())
        assert status == 200
        assert cosignatures(addSignatures(log.note(5), signatureLines(body.decode())), [proc.cosigner.verifier])
        assert _post(proc.url, log.request(0, 3).encode())[:3:2] == (409, b"5\n")
        other = Log().grow(3)
        assert _post(proc.url, other.request(0).encode())[0] == 403
        assert _post(proc.url, b"old 1\n")[0] == 400
    finally:
        proc.stop()
    # Restarted, it still remembers what it cosigned.
    proc.start()
    try:
        assert _post(proc.url, log.request(5, 7).encode())[0] == 200
        assert _post(proc.url, log.request(5, 7).encode())[:3:2] == (409, b"7\n")
    finally:
        proc.stop()
    assert proc.log().count("Server Shut Down.") == 2  # stopped cleanly both times


def test_witness_generate_key_writes_a_private_file_and_prints_the_vkey(tmp_path):
    from sealgate.recording.cosignature import CosignatureVerifier
    from tests.harness.twistd import runCLI

    key = tmp_path / "w.key"
    r = runCLI("witness", "--generate-key", "witness.test/w9", "--key-file", str(key))
    assert key.stat().st_mode & 0o077 == 0
    assert Cosigner.fromSkey(key.read_text()).verifier == CosignatureVerifier.fromVkey(r.stdout.strip())
    assert "PRIVATE" not in r.stdout


def test_sealgate_witness_with_a_bad_config_says_where_without_a_traceback(tmp_path):
    from tests.harness.twistd import runCLI

    cfg = tmp_path / "witness.toml"
    cfg.write_text('[witness]\nkey_file = "/nonexistent/key"\n')
    r = runCLI("witness", "--config", str(cfg), check=False)
    assert r.returncode == 1
    assert f"{cfg}: witness.key_file: cannot read /nonexistent/key" in r.stderr
    assert "Traceback" not in r.stderr
