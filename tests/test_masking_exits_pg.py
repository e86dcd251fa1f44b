"""Every PostgreSQL exit path with masking on, through a real twistd gateway and real PostgreSQL.

Each case runs a stock client (psql, psycopg text and binary cursors,
prepared statements, a raw socket) through a transparent tap in front of
the gateway, then asserts that no form of the card number or the e-mail
(ASCII, spaced, hex, int8 and numeric binary, the first 8 digits) is in
the bytes the client received, nor in the sealed log (the session's log
leaves and the frames recorded as sent to the client), and that typed
drivers loaded every row.
"""

import os
import socket
import struct
import subprocess
import time

import psycopg
import pytest

from sealgate.flow import TO_CLIENT
from sealgate.protocols.postgres import _wire as w
from sealgate.recording.reader import StoreReader
from tests.harness.pggateway import gatewayConfig
from tests.harness.scripted import Tap

CARD = "4111111111111111"
SPACED = "4111 1111 1111 1111"
MAIL = "jane.doe@example.com"
MASKED_CARD = "************1111"
MASKED_SPACED = "**** **** **** 1111"
MASKED_MAIL = "********@example.com"
#: Luhn-valid, 16 digits, no issuer prefix: not a card (docs/masking.md).
NOT_A_CARD = "1234567812345670"

#: Every form a leaked value could take on the wire.
SECRETS = [CARD.encode(), SPACED.encode(), MAIL.encode(), b"jane.doe", CARD[:8].encode(),
           CARD.encode().hex().encode(), MAIL.encode().hex().encode(), struct.pack("!q", int(CARD)),
           struct.pack("!4H", 4111, 1111, 1111, 1111)]

_SETUP = f"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
DO $$ BEGIN
  CREATE TYPE xmood AS ENUM ('{MAIL}', 'calm');
  CREATE TYPE xpair AS (label text, n int8);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DROP TABLE IF EXISTS exits;
CREATE TABLE exits (
  id int PRIMARY KEY, card text, spaced varchar(40), mail text, i8 int8, num numeric,
  i8s int8[], txts text[], j jsonb, js json, raw bytea, ci citext, m xmood, p xpair, ps xpair[],
  hs hstore, plain int4, fp text);
INSERT INTO exits VALUES (1, '{CARD}', '{SPACED}', '{MAIL}', {CARD}, {CARD}.25,
  ARRAY[{CARD}, 7], ARRAY['card {CARD}', '{MAIL}'],
  '{{"n": {CARD}, "mail": "{MAIL}"}}', '{{"n": {CARD}, "s": "{SPACED}"}}',
  convert_to('raw {CARD} {MAIL}', 'UTF8'), '{MAIL}', '{MAIL}', ROW('{MAIL}', 7),
  ARRAY[ROW('card {CARD}', 7)::xpair], hstore(ARRAY['card', '{MAIL}'], ARRAY['{CARD}', NULL]),
  7, '{NOT_A_CARD}');
GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
"""

_POLICY = f"""
[[rules]]
name = "no-drop"
action = "deny"
statements = ["DROP"]
reason = "no drops; ask {MAIL}"

[masking]
detectors = ["credit_card", "email"]
"""


class Gateway:
    def __init__(self, process, key: str, tap: Tap, postgres):
        self.process, self.key, self.tap, self.postgres = process, key, tap, postgres
        self.state = process.directory / "state"
        self.seen: set[str] = set()

    def dsn(self, **extra) -> str:
        parts = dict(host="127.0.0.1", port=self.tap.port, user="ci-bot", dbname="app",
                     password=self.key, sslmode="disable", connect_timeout="20")
        parts.update(extra)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, autocommit: bool = True, **extra) -> psycopg.Connection:
        return psycopg.connect(self.dsn(**extra), autocommit=autocommit)

    def psql(self, sql: str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGPASSWORD=self.key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="20")
        argv = [self.postgres._bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(self.tap.port),
                "-U", "ci-bot", "-d", "app", *extra, "-c", sql]
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def sealed(self, sessions: int, timeout: float = 30) -> tuple[bytes, list, list]:
        """
        The log leaves of the sessions closed since the last call, the bytes
        recorded as sent to the client (one per session) and their log events.
        """
        deadline = time.monotonic() + timeout
        while True:
            with StoreReader(self.state) as reader:
                rows = reader.sessions()
                fresh = [r["id"] for r in rows if r["id"] not in self.seen]
                if len(fresh) >= sessions and all(r["state"] != "open" for r in rows):
                    leaves = b"".join(bytes(leaf) for _n, sid, _t, leaf in reader.logLeaves()
                                      if sid in fresh)
                    events = [e for sid in fresh for e in reader.events(sid)]
                    sent = [b"".join(f.data or b"" for f in reader.frames(sid) if f.direction == TO_CLIENT)
                            for sid in fresh]
                    self.seen.update(fresh)
                    return leaves, sent, events
            assert time.monotonic() < deadline, "no session was sealed"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(postgres, tmp_path_factory):
    from tests.harness.twistd import GatewayProcess

    with psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.superuser,
                         password=postgres.passwords[postgres.superuser], dbname="app",
                         autocommit=True) as c:
        c.execute(_SETUP)
        oid = c.execute(f"SELECT lo_from_bytea(0, convert_to('card {CARD}', 'UTF8'))").fetchone()[0]
        c.execute(f"GRANT SELECT ON LARGE OBJECT {oid} TO PUBLIC")
    config = ('[gateway]\nstate_dir = "state"\nadmin = "tcp:0:interface=127.0.0.1"\n\n'
              + gatewayConfig(postgres, _POLICY))
    process = GatewayProcess(tmp_path_factory.mktemp("exits-pg"), config)
    key = process.cli("keys", "create", "--name", "ci-bot", "--group", "eng").stdout.strip().splitlines()[-1]
    process.start()
    tap = Tap(process.port("app"))
    g = Gateway(process, key, tap, postgres)
    g.largeObject = oid
    try:
        yield g
    finally:
        tap.stop()
        assert process.stop() == 0
        log = process.log().encode()
        for secret in SECRETS:
            assert secret not in log


# -- the cases: each runs a client and checks what it loaded ------------------------------------


def _one(g, sql, binary=False, params=None, prepare=None):
    with g.connect() as c:
        cur = c.cursor(binary=binary)
        rows = cur.execute(sql, params, prepare=prepare).fetchall()
        return rows, [(d.name, d.type_code) for d in cur.description]


def case_psql_text(g):
    out = g.psql("SELECT card, spaced, mail, i8, num FROM exits").stdout
    assert MASKED_CARD in out and MASKED_SPACED in out and MASKED_MAIL in out
    assert "************1111.25" in out
    return out


def case_text_varchar_text_cursor(g):
    rows, _ = _one(g, "SELECT card, spaced, mail FROM exits")
    assert rows == [(MASKED_CARD, MASKED_SPACED, MASKED_MAIL)]
    return rows


def case_text_varchar_binary_cursor(g):
    rows, _ = _one(g, "SELECT card, spaced, mail FROM exits", binary=True)
    assert rows == [(MASKED_CARD, MASKED_SPACED, MASKED_MAIL)]
    return rows


def case_int8_text(g):
    rows, desc = _one(g, "SELECT i8, plain FROM exits")
    assert rows == [(MASKED_CARD, 7)] and desc[0][1] == 25
    return rows


def case_int8_binary(g):
    rows, desc = _one(g, "SELECT i8, plain FROM exits", binary=True)
    assert rows == [(MASKED_CARD, 7)] and desc[0][1] == 25
    return rows


def case_numeric_text(g):
    rows, _ = _one(g, "SELECT num FROM exits")
    assert rows == [("************1111.25",)]
    return rows


def case_numeric_binary(g):
    rows, _ = _one(g, "SELECT num, num * 2 FROM exits", binary=True)
    assert rows[0][0] == "************1111.25" and rows[0][1] == "8222222222222222.50"
    return rows


def case_int8_array_binary(g):
    rows, _ = _one(g, "SELECT i8s FROM exits", binary=True)
    assert rows == [("{************1111,7}",)]
    return rows


def case_text_array_binary(g):
    rows, _ = _one(g, "SELECT txts FROM exits", binary=True)
    assert rows == [([f"card {MASKED_CARD}", MASKED_MAIL],)]
    return rows


def case_record_binary(g):
    rows, _ = _one(g, "SELECT ROW(mail, i8, card) FROM exits", binary=True)
    assert rows == [(f'({MASKED_MAIL},************1111,{MASKED_CARD})',)]
    return rows


def case_named_composite_binary(g):
    rows, _ = _one(g, "SELECT p, ps FROM exits", binary=True)
    assert MASKED_MAIL.encode() in repr(rows).encode() and MASKED_CARD in repr(rows)
    return rows


def case_composite_text(g):
    rows, _ = _one(g, "SELECT p, ps FROM exits")
    assert rows == [(f"({MASKED_MAIL},7)", f'{{"(\\"card {MASKED_CARD}\\",7)"}}')]
    return rows


def case_hstore_binary(g):
    rows, _ = _one(g, "SELECT hs FROM exits", binary=True)
    assert MASKED_CARD.encode() in rows[0][0] and MASKED_MAIL.encode() in rows[0][0]
    return rows


def case_hstore_text(g):
    rows, _ = _one(g, "SELECT hs FROM exits")
    assert MASKED_CARD in rows[0][0] and MASKED_MAIL in rows[0][0]
    return rows


def case_citext(g):
    text, _ = _one(g, "SELECT ci FROM exits")
    binary, _ = _one(g, "SELECT ci FROM exits", binary=True)
    assert text == [(MASKED_MAIL,)] and binary == [(MASKED_MAIL.encode(),)]
    return text, binary


def case_enum(g):
    text, _ = _one(g, "SELECT m FROM exits")
    binary, _ = _one(g, "SELECT m FROM exits", binary=True)
    assert text == [(MASKED_MAIL,)] and binary == [(MASKED_MAIL.encode(),)]
    return text, binary


def case_bytea_hex(g):
    rows, _ = _one(g, "SELECT raw FROM exits")
    assert rows == [(f"raw {MASKED_CARD} {MASKED_MAIL}".encode(),)]
    return rows


def case_bytea_binary(g):
    rows, _ = _one(g, "SELECT raw FROM exits", binary=True)
    assert rows == [(f"raw {MASKED_CARD} {MASKED_MAIL}".encode(),)]
    return rows


def case_json_text(g):
    rows, _ = _one(g, "SELECT j, js FROM exits")
    assert rows == [({"n": MASKED_CARD, "mail": MASKED_MAIL}, {"n": MASKED_CARD, "s": MASKED_SPACED})]
    return rows


def case_json_binary(g):
    rows, _ = _one(g, "SELECT j, js FROM exits", binary=True)
    assert rows == [({"n": MASKED_CARD, "mail": MASKED_MAIL}, {"n": MASKED_CARD, "s": MASKED_SPACED})]
    return rows


def case_prepared(g):
    with g.connect() as c:
        out = [c.execute("SELECT i8, num, ci, card FROM exits WHERE id = %s", (1,), prepare=True,
                         binary=binary).fetchall() for binary in (True, False, True)]
    assert out[0] == out[2] == [(MASKED_CARD, "************1111.25", MASKED_MAIL.encode(), MASKED_CARD)]
    assert out[1] == [(MASKED_CARD, "************1111.25", MASKED_MAIL, MASKED_CARD)]
    return out


def case_column_alias(g):
    rows, desc = _one(g, f'SELECT 1 AS "{CARD}", 2 AS "{MAIL}"')
    assert rows == [(1, 2)] and [d[0] for d in desc] == [MASKED_CARD, MASKED_MAIL]
    return desc


def case_column_alias_psql(g):
    out = g.psql(f'SELECT 1 AS "{CARD}"').stdout
    assert MASKED_CARD in out
    return out


_RAISE = """DO $$ DECLARE v text; BEGIN SELECT mail INTO v FROM exits;
RAISE EXCEPTION 'boom %', v USING DETAIL = 'd ' || v, HINT = 'h ' || v, COLUMN = v,
  CONSTRAINT = v, DATATYPE = v, TABLE = v, SCHEMA = v; END $$"""


def case_error_fields(g):
    with g.connect() as c:
        with pytest.raises(psycopg.errors.RaiseException) as e:
            c.execute(_RAISE)
        d = e.value.diag
        fields = (d.message_primary, d.message_detail, d.message_hint, d.column_name,
                  d.constraint_name, d.datatype_name, d.table_name, d.schema_name)
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert fields == (f"boom {MASKED_MAIL}", f"d {MASKED_MAIL}", f"h {MASKED_MAIL}", *[MASKED_MAIL] * 5)
    return fields


def case_error_internal_query(g):
    sql = ("DO $$ DECLARE v text; BEGIN SELECT card INTO v FROM exits;"
           " EXECUTE 'SELECT ' || quote_literal(v) || '::int4'; END $$")
    with g.connect() as c:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as e:
            c.execute(sql)
        d = e.value.diag
        fields = (d.message_primary, d.internal_query, d.context)
    assert MASKED_CARD in fields[0] and MASKED_CARD in fields[1]
    return fields


def case_error_psql_verbose(g):
    r = g.psql(_RAISE, "-v", "VERBOSITY=verbose", check=False)
    assert r.returncode == 1 and f"SCHEMA NAME:  {MASKED_MAIL}" in r.stderr
    return r.stdout + r.stderr


def case_notice(g):
    notices = []
    with g.connect() as c:
        c.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_detail, d.message_hint)))
        c.execute("DO $$ DECLARE v text; BEGIN SELECT card INTO v FROM exits;"
                  " RAISE NOTICE 'n %', v USING DETAIL = v, HINT = (SELECT mail FROM exits); END $$")
    assert notices == [(f"n {MASKED_CARD}", MASKED_CARD, MASKED_MAIL)]
    return notices


def case_parameter_status(g):
    with g.connect() as c:
        row = c.execute("SELECT set_config('application_name', mail, false) FROM exits").fetchone()
        status = c.info.parameter_status("application_name")
    assert row == (MASKED_MAIL,) and status == MASKED_MAIL
    return row, status


def case_notify(g):
    with g.connect() as c:
        c.execute("DO $$ BEGIN EXECUTE format('LISTEN %I', (SELECT mail FROM exits)); END $$")
        c.execute("SELECT pg_notify(mail, 'card ' || card) FROM exits")
        got = [(n.channel, n.payload) for n in c.notifies(timeout=10, stop_after=1)]
    assert got == [(MASKED_MAIL, f"card {MASKED_CARD}")]
    return got


def case_copy_text(g):
    with g.connect() as c:
        with c.cursor().copy("COPY (SELECT card, mail, i8, raw FROM exits) TO STDOUT") as cp:
            data = b"".join(bytes(b) for b in cp)
    assert data.startswith(f"{MASKED_CARD}\t{MASKED_MAIL}\t{MASKED_CARD}\t".encode())
    return data


def case_copy_csv_psql(g):
    out = g.psql("COPY (SELECT spaced, mail FROM exits) TO STDOUT (FORMAT csv, HEADER)").stdout
    assert out == f"spaced,mail\n{MASKED_SPACED},{MASKED_MAIL}\n"
    return out


def case_binary_copy_refused(g):
    """Refused with an error of its own; the same session goes on (docs/masking.md)."""
    with g.connect() as c:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            with c.cursor().copy("COPY (SELECT card FROM exits) TO STDOUT (FORMAT binary)") as cp:
                b"".join(bytes(b) for b in cp)
        message = str(e.value)
        assert c.execute("SELECT card FROM exits").fetchone() == (MASKED_CARD,)
    assert "binary COPY cannot be vetted" in message
    return message


def case_copy_bytea_csv(g):
    out = g.psql("COPY (SELECT raw, ARRAY[raw, raw] FROM exits) TO STDOUT (FORMAT csv)").stdout
    masked = f"raw {MASKED_CARD} {MASKED_MAIL}".encode().hex()
    assert out.count(masked) == 3
    return out


def case_bytea_array(g):
    text, _ = _one(g, "SELECT ARRAY[raw] FROM exits")
    binary, _ = _one(g, "SELECT ARRAY[raw] FROM exits", binary=True)
    assert text == binary == [([f"raw {MASKED_CARD} {MASKED_MAIL}".encode()],)]
    return text, binary


def case_numbers_without_hits_keep_their_types(g):
    from decimal import Decimal

    sql = "SELECT count(*), 12::int8, 1.5::numeric, ARRAY[1, 2]::int8[] FROM exits"
    text, tdesc = _one(g, sql)
    binary, bdesc = _one(g, sql, binary=True)
    assert text == binary == [(1, 12, Decimal("1.5"), [1, 2])]
    assert [t for _, t in tdesc] == [t for _, t in bdesc] == [20, 20, 1700, 1016]
    return text, binary


def case_copy_in_error_echoes_the_row(g):
    """COPY FROM STDIN of a card into an int4 column: the server's error quotes it back."""
    with g.connect() as c:
        c.execute("CREATE TEMP TABLE ints (n int4)")
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as e:
            with c.cursor().copy("COPY ints FROM STDIN") as cp:
                cp.write(f"{CARD}\n".encode())
        d = e.value.diag
        fields = (d.message_primary, d.context)
    assert MASKED_CARD in fields[0] and MASKED_CARD in fields[1]
    return fields


def case_server_side_cursor(g):
    """A named cursor fetched in parts (DECLARE, then FETCH after FETCH): every row loads."""
    with g.connect(autocommit=False) as c:
        with c.cursor(name="scan", binary=True) as cur:
            cur.execute("SELECT x FROM (VALUES (7::int8), (%s::int8), (9::int8)) v(x)" % CARD)
            rows = [cur.fetchone() for _ in range(3)]
    assert [str(r[0]) for r in rows] == ["7", MASKED_CARD, "9"]
    return rows


def case_fastpath_lo_export(g, tmp_path):
    target = tmp_path / "lo.out"
    g.psql(f"\\lo_export {g.largeObject} {target}")
    data = target.read_bytes()
    assert data == f"card {MASKED_CARD}".encode()
    return data


def case_extended_protocol_error(g):
    with g.connect() as c:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as e:
            c.execute("SELECT %s::int4", (CARD,))
        message = e.value.diag.message_primary
        assert c.execute("SELECT %s::text", (MAIL,), binary=True).fetchone() == (MASKED_MAIL,)
    assert MASKED_CARD in message
    return message


def case_gateway_error(g):
    with g.connect() as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute(f'DROP TABLE "{MAIL}"')
        message = str(e.value)
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert "no-drop" in message or "no drops" in message
    return message


def case_audit_statement(g):
    rows, _ = _one(g, f"SELECT 'card {CARD} {SPACED} {MAIL}' AS x")
    assert rows == [(f"card {MASKED_CARD} {MASKED_SPACED} {MASKED_MAIL}",)]
    return rows


def case_audit_parameters(g):
    rows, _ = _one(g, "SELECT %s::text, %s::int8", params=(MAIL, int(CARD)), prepare=True)
    assert rows == [(MASKED_MAIL, MASKED_CARD)]
    return rows


def case_startup_application_name(g):
    with g.connect(application_name=MAIL) as c:
        status = c.info.parameter_status("application_name")
        row = c.execute("SELECT current_setting('application_name')").fetchone()
    assert status.endswith(f"({MASKED_MAIL})") and row == (status,)
    return status, row


def case_false_positive_kept(g):
    rows, _ = _one(g, f"SELECT fp, '{NOT_A_CARD}'::int8 FROM exits", binary=True)
    assert rows == [(NOT_A_CARD, int(NOT_A_CARD))]
    return rows


def _recvUntilReady(s, reader) -> list:
    """Decoded backend messages up to and including the next ReadyForQuery."""
    out: list = []
    while not out or not isinstance(out[-1], w.ReadyForQuery):
        data = s.recv(65536)
        assert data, "the gateway hung up"
        reader.receive_data(data)
        while (f := reader.next_event()) is not w.NEED_DATA:
            out.append(w.decodeFrame(f, False))
    return out


def case_raw_socket_extended_binary(g):
    """Parse/Bind asking binary results for int8: RowDescription says text, the row is masked text."""
    reader = w.Reader(frontend=False)
    with socket.create_connection(("127.0.0.1", g.tap.port), timeout=20) as s:
        s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", "app"))).encode()
                  + w.PasswordMessage.cleartext(g.key).encode())
        _recvUntilReady(s, reader)
        s.sendall(w.Parse("", "SELECT i8, plain FROM exits").encode()
                  + w.Bind("", "", resultFormats=(1,)).encode()
                  + w.Describe("P", "").encode() + w.Execute("").encode() + w.Sync().encode())
        got = _recvUntilReady(s, reader)
        s.sendall(w.Terminate().encode())
    desc = next(m for m in got if isinstance(m, w.RowDescription))
    row = next(m for m in got if isinstance(m, w.DataRow))
    assert [c.typeOid for c in desc.columns] == [25, 23]
    assert row.values == (MASKED_CARD.encode(), struct.pack("!i", 7))
    return repr(got)


def case_raw_socket_statement_described_earlier(g):
    """
    Statements described once and executed later without Describe, after
    other queries (asyncpg and JDBC statement caches do this), in text and
    binary: each row is masked by its own statement's columns.
    """
    reader = w.Reader(frontend=False)
    with socket.create_connection(("127.0.0.1", g.tap.port), timeout=20) as s:
        s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", "app"))).encode()
                  + w.PasswordMessage.cleartext(g.key).encode())
        _recvUntilReady(s, reader)
        s.sendall(w.Parse("cached", "SELECT card, i8, mail FROM exits").encode()
                  + w.Describe("S", "cached").encode()
                  + w.Parse("ints", "SELECT 7::int4, 8::int8, 9::int4").encode()
                  + w.Describe("S", "ints").encode() + w.Sync().encode())
        described = _recvUntilReady(s, reader)
        s.sendall(w.Query("SELECT 7::int4, 8::int4, 9::int4").encode())
        _recvUntilReady(s, reader)
        # Pipelined: one Sync for four Executes of two statements in two formats.
        s.sendall(b"".join(w.Bind("", stmt, resultFormats=(fmt,)).encode() + w.Execute("").encode()
                           for stmt, fmt in (("cached", 0), ("ints", 1), ("cached", 1), ("ints", 0)))
                  + w.Sync().encode())
        got = _recvUntilReady(s, reader)
        s.sendall(w.Terminate().encode())
    descs = [m for m in described if isinstance(m, w.RowDescription)]
    assert [[c.typeOid for c in d.columns] for d in descs] == [[25, 25, 25], [23, 25, 23]]
    rows = [m.values for m in got if isinstance(m, w.DataRow)]
    masked = (MASKED_CARD.encode(), MASKED_CARD.encode(), MASKED_MAIL.encode())
    assert rows == [masked, (struct.pack("!i", 7), b"8", struct.pack("!i", 9)), masked,
                    (b"7", b"8", b"9")]
    return repr(described + got)


def case_raw_socket_unknown_statement_rows_refused(g):
    """Rows whose statement was never described (nothing to mask them by) are refused in binary."""
    reader = w.Reader(frontend=False)
    with socket.create_connection(("127.0.0.1", g.tap.port), timeout=20) as s:
        s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", "app"))).encode()
                  + w.PasswordMessage.cleartext(g.key).encode())
        _recvUntilReady(s, reader)
        s.sendall(w.Parse("", "SELECT i8 FROM exits").encode()
                  + w.Bind("", "", resultFormats=(1,)).encode() + w.Execute("").encode()
                  + w.Sync().encode())
        got = []
        while data := s.recv(65536):
            reader.receive_data(data)
            while (f := reader.next_event()) is not w.NEED_DATA:
                got.append(w.decodeFrame(f, False))
    assert not any(isinstance(m, w.DataRow) for m in got)
    error = next(m for m in got if isinstance(m, w.ErrorResponse))
    assert "output could not be checked" in error.get("M")
    return repr(got)


CASES = {name[5:]: fn for name, fn in dict(globals()).items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_exit_path(gw, name, tmp_path):
    fn = CASES[name]
    out = fn(gw, tmp_path) if "tmp_path" in fn.__code__.co_varnames[:fn.__code__.co_argcount] else fn(gw)
    wire, connections = gw.tap.take()
    leaves, sent, events = gw.sealed(connections)
    assert wire, "the tap saw nothing"
    # The recording holds exactly what the client got, session by session.
    assert sum(map(len, sent)) == len(wire) and all(s in wire for s in sent)
    sealed = leaves + b"".join(sent)
    shown = repr(out).encode()
    for secret in SECRETS:
        assert secret not in wire, f"{secret!r} reached the client"
        assert secret not in sealed, f"{secret!r} is in the sealed log"
        assert secret not in shown, f"{secret!r} reached the client's output"
    commands = sorted({e["fields"].get("command") or e["fields"].get("text") for e in events
                       if e.get("event") in ("command", "statement")})
    if name == "audit_statement":
        # The client's own input, sealed masked (what it sent is kept only as its frames).
        assert commands == [f"SELECT 'card {MASKED_CARD} {MASKED_SPACED} {MASKED_MAIL}' AS x"]
    elif name == "audit_parameters":
        # Bound values are not sealed with the statement at all.
        assert commands == ["SELECT $1::text, $2::int8"]
    elif name == "startup_application_name":
        opened = next(e for e in events if e["type"] == "open")
        assert opened["info"]["meta"]["application_name"] == MASKED_MAIL


def test_there_are_enough_cases():
    assert len(CASES) >= 32
