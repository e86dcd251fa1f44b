"""[[witnesses]] and [gateway] witness_quorum: parsed into the policy, every mistake named with its fix."""

from sealgate.recording.cosignature import Cosigner
from tests.test_config import GOOD, error, load

W1, W2 = Cosigner.generate("w.example/1").verifier, Cosigner.generate("w.example/2").verifier


def _with(quorum: int, *entries: str) -> str:
    return GOOD.replace('admin = "tcp', f'witness_quorum = {quorum}\nadmin = "tcp') + "".join(entries)


def _entry(v, url="http://127.0.0.1:8780", extra="") -> str:
    return f'\n[[witnesses]]\nurl = "{url}"\nvkey = "{v.vkey()}"\n{extra}'


def test_witnesses_and_quorum_parse(tmp_path):
    _, cfg = load(tmp_path, _with(2, _entry(W1, "http://127.0.0.1:8780/"), _entry(W2, extra='backoff = "2s"\n')))
    policy = cfg.witnesses
    assert policy.quorum == 2
    assert [(w.name, w.url, w.verifier) for w in policy.witnesses] == [
        ("w.example/1", "http://127.0.0.1:8780", W1), ("w.example/2", "http://127.0.0.1:8780", W2)]
    assert policy.witnesses[1].backoff == 2.0


def test_no_witnesses_is_the_default(tmp_path):
    _, cfg = load(tmp_path, GOOD)
    assert (cfg.witnesses.witnesses, cfg.witnesses.quorum) == ((), 0)


def test_quorum_above_the_witnesses_configured(tmp_path):
    m = error(tmp_path, _with(2, _entry(W1)))
    assert "gateway.witness_quorum: asks for 2 cosignatures but 1 [[witnesses]] are configured" in m
    assert "fix:" in m


def test_a_note_key_is_not_a_witness_vkey(tmp_path):
    from sealgate.recording.checkpoint import Signer

    note = Signer.generate("log").verifier
    m = error(tmp_path, _with(0, f'\n[[witnesses]]\nurl = "http://x"\nvkey = "{note.vkey()}"\n'))
    assert "witnesses[0].vkey" in m and "0x04" in m and "fix:" in m


def test_duplicate_witness_and_bad_url(tmp_path):
    assert "witnesses[1].name" in error(tmp_path, _with(0, _entry(W1), _entry(W1)))
    assert "witnesses[0].url: is not an http(s) URL" in error(tmp_path, _with(0, _entry(W1, "ftp://x")))
    assert "witnesses[0].bogus: unknown key" in error(tmp_path, _with(0, _entry(W1, extra="bogus = 1\n")))
