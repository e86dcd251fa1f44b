"""SQL text read as the server reads it: encodings, standard_conforming_strings, settings in flight."""

import psycopg
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sealgate.protocols.postgres.classify import HIGH_RISK, _classify
from sealgate.protocols.postgres.settings import SessionSettings
from sealgate.protocols.postgres.sqltext import Uncertain, asServerParses, decode
from tests.harness.postgres import SCRAM_USER

_HIDE = "SELECT 'a\\''; DROP TABLE t; --'"


def _status(name: str, value: str) -> bytes:
    body = name.encode() + b"\0" + value.encode() + b"\0"
    return b"S" + (len(body) + 4).to_bytes(4, "big") + body


@pytest.mark.parametrize("text, off, statements", [
    (_HIDE, False, 1),
    (_HIDE, True, 2),
    ("SELECT E'\\''; DROP TABLE t; --'", False, 2),
    ("SELECT $$\\'$$; SELECT 2", True, 2),
    ("SELECT 1 -- '\\'\n; SELECT 2", True, 2),
    ("SELECT \"a\\\"; SELECT 2", True, 2),
    ("SELECT n'\\''; SELECT 2", True, 2),
    ("SELECT b'1'; SELECT 'x\\''; SELECT 3", True, 3),
    ("SELECT x$a$ FROM t WHERE 'q\\'' = 'q'", True, 1),
])
def test_a_text_splits_as_the_server_splits_it(text, off, statements):
    assert _classify(asServerParses(text, not off)).count == statements


@pytest.mark.parametrize("text", ["SELECT 'a\\", "SELECT U&'\\0027' 'x\\'", "SELECT 1 /* \\"])
def test_what_the_server_would_read_unclearly_is_uncertain(text):
    with pytest.raises(Uncertain):
        asServerParses(text, False)


def test_client_encodings_decode_multibyte_characters_whole():
    sjis = "SELECT '表'; DROP TABLE t; --'".encode("cp932")
    assert b"\\'" in sjis
    assert decode(sjis, "SJIS") == "SELECT '表'; DROP TABLE t; --'"
    with pytest.raises(Uncertain):
        decode("é".encode("utf-8"), "EUC_TW")
    with pytest.raises(Uncertain):
        decode(b"\xff", "UTF8")
    assert decode(b"SELECT 1", "EUC_TW") == "SELECT 1"


def test_settings_follow_parameter_status_and_judge_under_them():
    s = SessionSettings()
    assert "DROP" not in s.judge(_HIDE.encode())[1].statements
    s.observe(_status("standard_conforming_strings", "off"))
    assert "DROP" in s.judge(_HIDE.encode())[1].statements
    s.observe(_status("client_encoding", "SJIS"))
    text, c = s.judge("SELECT '表'; DROP TABLE t; --'".encode("cp932"))
    assert "DROP" in c.statements and text.startswith("SELECT '表'")
    assert s.describe() == "standard_conforming_strings=off client_encoding=SJIS"
    s.mayChange(False)
    assert s.describe() == "standard_conforming_strings=off client_encoding=SJIS (changing)"


def test_a_setting_in_flight_makes_a_text_it_would_change_high_risk():
    s = SessionSettings()
    s.sent()
    s.mayChange(True)  # a Query "SET standard_conforming_strings = off", not answered yet
    assert HIGH_RISK in s.judge(_HIDE.encode())[1].statements
    assert HIGH_RISK in s.judge("SELECT 'é'".encode())[1].statements
    # A text both readings agree on stays what it is.
    assert s.judge(b"SELECT 1")[1].statements == ("SELECT",)
    s.ready()
    assert HIGH_RISK not in s.judge(_HIDE.encode())[1].statements
    s.mayChange(False)  # a Parse: its Sync is yet to come
    s.sent()
    assert HIGH_RISK in s.judge(_HIDE.encode())[1].statements
    s.ready()
    assert HIGH_RISK not in s.judge(_HIDE.encode())[1].statements


def test_a_setting_changed_in_the_same_string_as_a_backslash_is_high_risk():
    s = SessionSettings()
    text = b"SET standard_conforming_strings = off; " + _HIDE.encode()
    assert HIGH_RISK in s.judge(text)[1].statements
    assert HIGH_RISK not in s.judge(b"SET client_encoding = 'UTF8'; SELECT 1")[1].statements


def test_search_path_before_pg_catalog_makes_builtin_names_user_code():
    s = SessionSettings()
    assert s.judge(b"SELECT lower('x')")[1].statements == ("SELECT",)
    s.judge(b"SET search_path = public, pg_catalog")
    assert HIGH_RISK in s.judge(b"SELECT lower('x')")[1].statements
    assert s.judge(b"SELECT pg_catalog.lower('x')")[1].statements == ("SELECT",)


# -- the classifier's split against the real server's -------------------------------

_CHARS = st.sampled_from(["a", "\\", "\\'", "'; SELECT 2; '", "'", "''", ";", " ", "\n", "-",
                          "--", "/*", "*/", "$", "$$", '"', "E'", "x", "1"])


def _literal(body: str) -> st.SearchStrategy[str]:
    return st.sampled_from([f"'{body}'", f"E'{body}'", f"$q${body.replace('$q$', '')}$q$",
                            f"1 -- {body}\n", f"1 /* {body.replace('*/', '')} */",
                            f"'{body.replace(chr(92), '')}'"])


@st.composite
def _texts(draw) -> str:
    statements = []
    for _ in range(draw(st.integers(1, 4))):
        body = "".join(draw(st.lists(_CHARS, max_size=8)))
        if draw(st.booleans()):
            atom = draw(_literal(body))
        else:
            atom = "'" + body + "'"
        statements.append("SELECT " + atom)
    return ";".join(statements)


@pytest.fixture(scope="module")
def servers(postgres):
    conns = {off: psycopg.connect(postgres.dsn(SCRAM_USER), autocommit=True,
                                  options=f"-c standard_conforming_strings={'off' if off else 'on'}"
                                  " -c escape_string_warning=off")
             for off in (False, True)}
    yield conns
    for c in conns.values():
        c.close()


def _serverSplit(conn, text: str):
    """The number of statements the server ran, or None if it refused the text whole."""
    pg = conn.pgconn
    pg.send_query(text.encode())
    results = []
    while (r := pg.get_result()) is not None:
        results.append((r.status, r.error_field(psycopg.pq.DiagnosticField.SQLSTATE)))
    errors = [i for i, (status, _) in enumerate(results) if status == psycopg.pq.ExecStatus.FATAL_ERROR]
    if not errors:
        return len(results)
    state = (results[errors[0]][1] or b"").decode()
    if errors[0] == 0 and (state == "42601" or (state.startswith("22") and state != "22P02")):
        return None
    return "unknown"


@pytest.mark.parametrize("off", [False, True], ids=["scs-on", "scs-off"])
def test_the_classifier_splits_where_the_real_server_does(servers, off):
    # The property runs inside the test: pytest-twisted's wrapper and
    # Hypothesis's do not nest.
    @settings(max_examples=300, deadline=None)
    @given(_texts())
    def check(text):
        server = _serverSplit(servers[off], text)
        assume(server != "unknown")
        try:
            c = _classify(asServerParses(text, not off))
        except Uncertain:
            c = None
        if server is None:
            return  # the server ran nothing, whatever the classifier thinks
        # The server ran statements: the classifier saw exactly those, or
        # doubts (which the gateway judges HIGH RISK).
        if c is None or HIGH_RISK in c.statements:
            return
        assert c.count == server, text
        assert set(c.statements) <= {"SELECT"}, text

    check()
