"""The monitor's judgement: a served checkpoint against those seen (same size, smaller, larger with a proof)."""

from sealgate.monitor import FORK, OK, ROLLBACK, Seen, judge
from sealgate.recording import merkle
from sealgate.recording.checkpoint import Checkpoint

ORIGIN = "gw.example/node1"


def _hashes(n, tag=b""):
    return [merkle.leafHash(tag + b"%d" % i) for i in range(n)]


def _seen(hashes) -> Seen:
    cp = Checkpoint(ORIGIN, len(hashes), merkle.rootOf(hashes))
    return Seen(cp, cp.text() + "\n\u2014 x AAAAAAA=\n")


def _prover(hashes):
    return lambda first, second: merkle.consistencyProof(hashes[:second], first)


def test_first_checkpoint_is_ok():
    assert judge([], _seen(_hashes(3)), None).kind == OK


def test_growth_proved_consistent_is_ok():
    h = _hashes(9)
    v = judge([_seen(h[:4])], _seen(h), _prover(h))
    assert v.kind == OK and "consistent with size 4" in v.line


def test_two_roots_for_one_size_are_a_fork_with_the_earlier_as_evidence():
    earlier = _seen(_hashes(5))
    v = judge([earlier], _seen(_hashes(5, b"x")), None)
    assert (v.kind, v.earlier) == (FORK, earlier)


def test_a_smaller_size_after_a_larger_one_is_a_rollback():
    h = _hashes(8)
    earlier = _seen(h)
    v = judge([_seen(h[:3]), earlier], _seen(h[:5]), _prover(h))
    assert (v.kind, v.earlier) == (ROLLBACK, earlier)


def test_a_larger_rewritten_log_fails_its_proof_and_is_a_fork():
    old, rewritten = _hashes(4), _hashes(9, b"r")
    v = judge([_seen(old)], _seen(rewritten), _prover(rewritten))
    assert v.kind == FORK and "does not extend size 4" in v.line


def test_seen_round_trips_through_the_state_file_form():
    s = _seen(_hashes(2))
    assert Seen.fromDict(s.asDict()) == s
