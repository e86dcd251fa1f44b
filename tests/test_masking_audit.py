"""Client input in the sealed log: detector hits and named fields masked in audit events."""

import json
import os

import psycopg
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads

from sealgate.masking import REDACTED, Masker, knownDetectors, maskEvent
from tests.test_pg_proxy import _dsn, _psql, _sessions, _start

CARD = "4111 1111 1111 1111"
MAIL = "jane.doe@example.com"
M = Masker(sorted(knownDetectors()), columns=["ssn"], jsonFields=["password", "*token"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["GET /x", CARD, MAIL, f"card {CARD}", "plain", '{"password": "pw"}', "42"]),
                min_size=1, max_size=12))
def test_masking_an_event_again_gives_what_a_fresh_masker_gives(values):
    # maskEvent remembers short strings it masked, per masker: a repeated
    # value (the same header on every request) must come out as masked as
    # the first time, and one masker's results never answer for another.
    plain = Masker((), jsonFields=["password"])
    for v in values:
        event = {"command": v, "details": {"headers": {"x": v}, "n": [v]}}
        fresh = Masker(sorted(knownDetectors()), columns=["ssn"], jsonFields=["password", "*token"])
        assert maskEvent(M, event) == maskEvent(fresh, event)
        assert maskEvent(plain, event) == maskEvent(Masker((), jsonFields=["password"]), event)
    assert CARD not in repr(maskEvent(M, {"a": CARD, "b": {"c": CARD}}))


def test_statement_parameters_lines_and_named_fields_are_masked():
    event = {
        "kind": "sql", "verdict": "allow", "rule": "r1",
        "command": f"INSERT INTO t VALUES ('{CARD}', '{MAIL}')",
        "details": {"parameters": [4111111111111111, MAIL, None, True], "statements": ("insert",)},
        "line": f"echo {MAIL}", "application_name": MAIL,
        "body": json.dumps({"password": "hunter2", "user": {"api_token": "t0k", "n": 1}}),
        "fields": {"ssn": "123456789", "password": None},
    }
    out = maskEvent(M, event)
    flat = repr(out)
    assert CARD not in flat and MAIL not in flat and "4111111111111111" not in flat
    assert "hunter2" not in flat and "t0k" not in flat and "123456789" not in flat
    assert out["kind"] == "sql" and out["verdict"] == "allow" and out["rule"] == "r1"
    assert out["details"]["parameters"][2:] == [None, True]
    assert json.loads(out["body"]) == {"password": REDACTED, "user": {"api_token": REDACTED, "n": 1}}
    assert out["fields"] == {"ssn": REDACTED, "password": None}
    clean = {"kind": "sql", "command": "select 1", "details": {"rows": 3}}
    assert maskEvent(M, clean) is clean


_LEAVES = st.one_of(st.text(max_size=20), st.integers(), st.none(), st.booleans(),
                    st.sampled_from([CARD, MAIL, "ssn 123-45-6789", f"x{CARD}y"]))
_TREES = st.recursive(_LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(["a", "command", "password", "b"]),
                                                kids, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["command", "details", "line", "kind", "x"]), _TREES))
def test_no_detected_value_survives_at_any_depth(event):
    flat = json.dumps(maskEvent(M, event), default=repr)
    assert CARD not in flat and MAIL not in flat and "123-45-6789" not in flat


@pytest_twisted.ensureDeferred
async def test_sealed_statements_are_masked_and_client_frames_stay_evidence(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres, extra="""
[masking]
detectors = ["credit_card", "email"]
""")
    try:
        r = await _psql(postgres, g, key, f"select '{CARD}' as c, '{MAIL}' as m")
        assert r.returncode == 0, r.stderr

        def extended():
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                return c.execute("select %s::text", (MAIL,)).fetchone()
        assert await threads.deferToThread(extended) == ("********@example.com",)
    finally:
        await g.stop()
    sessions = _sessions(g)
    events = repr([e for _s, _f, evs in sessions for e in evs])
    assert "select '**** **** **** 1111' as c, '********@example.com' as m" in events
    assert CARD not in events and MAIL not in events
    # The raw frames from the client are kept as evidence (record_input stays "raw").
    fromClient = b"".join(f.data or b"" for _s, frames, _e in sessions for f in frames
                          if f.direction == 0)
    assert CARD.encode() in fromClient and MAIL.encode() in fromClient
    toClient = b"".join(f.data or b"" for _s, frames, _e in sessions for f in frames
                        if f.direction == 1)
    assert CARD.encode() not in toClient and MAIL.encode() not in toClient
    assert os.path.isdir(g.stateDir)
