"""The gateway's witness pump without a reactor: what each tlog-witness answer does, and its backoff (task.Clock)."""

import pytest
from twisted.internet import defer, task

from sealgate.recording import witnessclient
from sealgate.recording.checkpoint import Checkpoint, Signer
from sealgate.recording.cosignature import AddCheckpoint, Cosigner
from sealgate.recording.cosigned import Cosignatures, witnessedNote
from sealgate.recording.witnessconfig import WitnessEndpoint, WitnessPolicy

ORIGIN = "sealgate/node1"


class Pump(witnessclient.WitnessPump):
    """A pump whose thread work runs inline and whose witness answers are scripted."""

    def __init__(self, tmp_path, answers, clock=None):
        self.cosigner = Cosigner.generate("w.test/1")
        w = WitnessEndpoint("w.test/1", "http://w.invalid", self.cosigner.verifier, backoff=0.1, max_backoff=0.4)
        super().__init__(w, tmp_path, clock or task.Clock(), None, agent=object())
        self.answers = list(answers)
        self.sent: list[AddCheckpoint] = []

    def _thread(self, fn, *args):
        return defer.maybeDeferred(fn, *args)

    def _post(self, body):
        self.sent.append(AddCheckpoint.parse(body))
        answer = self.answers.pop(0)
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer(self, body))


def _work(size=5):
    cp = Checkpoint(ORIGIN, size, bytes(range(32)))
    note = Signer.generate(ORIGIN).sign(cp.text())
    return size, note, AddCheckpoint(0, (), note)


def _cosign(pump, body):
    req = AddCheckpoint.parse(body)
    return 200, pump.cosigner.cosign(req.note.rpartition("\n\n")[0] + "\n", 1700000000).encode()


def _submit(pump, work):
    failures: list = []
    pump._submit(*work).addErrback(failures.append)
    return failures[0].value if failures else None


def test_a_cosignature_is_verified_kept_and_served_with_the_note(tmp_path):
    pump = Pump(tmp_path, [_cosign])
    size, note, _ = work = _work()
    assert _submit(pump, work) is None
    assert (pump.known, pump.cosigned) == (5, 5)
    with Cosignatures(tmp_path, readOnly=True) as c:
        assert c.latest("w.test/1") == 5
    assert witnessedNote(tmp_path, size, note).count("\u2014 ") == 2


def test_a_409_teaches_the_witness_size(tmp_path):
    pump = Pump(tmp_path, [lambda p, b: (409, b"3\n")])
    assert _submit(pump, _work()) is None
    assert (pump.known, pump.cosigned) == (3, 0)


def test_a_409_for_the_size_sent_is_a_fork(tmp_path):
    pump = Pump(tmp_path, [lambda p, b: (409, b"0\n")])
    assert "a fork" in str(_submit(pump, _work()))


@pytest.mark.parametrize("answer, why", [
    (lambda p, b: (422, b"the consistency proof does not verify\n"), "HTTP 422 the consistency proof"),
    (lambda p, b: (200, Cosigner.generate("w.test/1").cosign("x\n", 1).encode()), "without a valid cosignature"),
    (lambda p, b: (200, b"not a signature line\n"), "signature lines"),
])
def test_a_refusal_or_a_bad_cosignature_keeps_nothing(tmp_path, answer, why):
    pump = Pump(tmp_path, [answer])
    assert why in str(_submit(pump, _work()))
    assert pump.cosigned == 0
    with Cosignatures(tmp_path, readOnly=True) as c:
        assert c.latest("w.test/1") is None


def test_failures_back_off_doubling_up_to_the_maximum_then_recover(tmp_path, monkeypatch):
    clock = task.Clock()
    work = _work()
    pump = Pump(tmp_path, [ConnectionRefusedError()] * 4 + [_cosign], clock)
    # Once the cosignature is kept there is nothing more to send.
    monkeypatch.setattr(witnessclient, "_prepare", lambda *a: (5, 5, None) if pump.cosigned else (5, None, work))
    pump.run()
    waits = []
    for _ in range(4):
        (call,) = clock.getDelayedCalls()
        waits.append(round(call.getTime() - clock.seconds(), 3))
        clock.advance(call.getTime() - clock.seconds())
    assert waits == [0.1, 0.2, 0.4, 0.4]
    assert pump.failures == 0 and pump.cosigned == 5 and pump.lastError is None
    pump.stop()


def test_a_witness_ahead_of_the_log_is_named_a_cut_back(tmp_path, monkeypatch):
    monkeypatch.setattr(witnessclient, "_prepare", lambda *a: (4, None, ("ahead", 9)))
    pump = Pump(tmp_path, [])
    pump.run()
    assert "cosigned size 9, beyond this log's latest checkpoint" in pump.lastError
    pump.stop()


def test_status_gives_each_lag_and_the_quorum_size(tmp_path):
    policy = WitnessPolicy((), 2)
    w = witnessclient.Witnessing(policy, tmp_path, task.Clock(), None)
    w.pumps = [Pump(tmp_path, []), Pump(tmp_path, []), Pump(tmp_path, [])]
    for p, cosigned in zip(w.pumps, (10, 7, 3), strict=True):
        p.cosigned, p.logCheckpoint = cosigned, 12
    s = w.status()
    assert (s["witnessed_size"], s["lag_leaves"], s["checkpoint_size"]) == (7, 5, 12)
    assert [x["lag_leaves"] for x in s["witnesses"]] == [2, 5, 9]


def test_status_says_when_the_witness_last_cosigned_also_after_a_restart(tmp_path, monkeypatch):
    pump = Pump(tmp_path, [_cosign])
    assert pump.status()["last_success"] is None
    assert _submit(pump, _work()) is None
    # The cosignature's own timestamp (what _cosign signs), not the gateway's clock.
    assert pump.status()["last_success"] == 1700000000 and pump.status()["error"] is None
    # A new gateway process reads it from the cosignatures it kept.
    again = Pump(tmp_path, [])
    monkeypatch.setattr(witnessclient, "_prepare", lambda *a: (5, 5, None))
    again.run()
    assert again.status()["last_success"] == 1700000000 and again.status()["size"] == 5
    again.stop()
