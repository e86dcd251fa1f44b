"""PostgreSQL masking against a real server: binary renderings match the server's text output,
and psycopg (text and binary) loads every masked row of every type that can carry a value."""

import struct

import psycopg
import pytest
import pytest_twisted
from psycopg import pq
from twisted.internet import threads

from sealgate.protocols.postgres import _binary as b
from sealgate.recording.reader import StoreReader
from tests.test_pg_proxy import _dsn, _start

CARD = "4111111111111111"
MAIL = "jane.doe@example.com"

_SETUP = f"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
DO $$ BEGIN
  CREATE TYPE mood AS ENUM ('{MAIL}', 'calm');
  CREATE TYPE pair AS (label text, n int8);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DROP TABLE IF EXISTS typed;
CREATE TABLE typed (
  id int PRIMARY KEY, i8 int8, num numeric, i8s int8[], txts text[], j jsonb, js json,
  raw bytea, ci citext, m mood, p pair, ps pair[], plain int4, at timestamptz, u uuid, hs hstore);
GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC;
INSERT INTO typed VALUES (1, {CARD}, {CARD}.25, ARRAY[{CARD}, 7], ARRAY['card {CARD}', 'x'],
  '{{"n": {CARD}, "mail": "{MAIL}"}}', '{{"n": {CARD}}}', convert_to('raw {CARD}', 'UTF8'),
  '{MAIL}', '{MAIL}', ROW('{MAIL}', 7), ARRAY[ROW('{MAIL}', 7)::pair], 7,
  '2026-12-02 07:00:00+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  hstore(ARRAY['card', '{MAIL}'], ARRAY['{CARD}', NULL]));
"""

# Values of every type the renderer knows, as the server prints them in text.
_CORPUS = [
    "1::int8", "(-9223372036854775808)::int8", "0::numeric", "-0.00100::numeric", "12345678.9::numeric",
    "'NaN'::numeric", "1e30::numeric", "'Infinity'::numeric", "ARRAY[1,NULL,3]::int8[]",
    "ARRAY[['a','b'],['c d','']]::text[]", "'[0:1]={x,y}'::text[]", "ARRAY['NULL','q\"\\\\']",
    "ROW('a b', 1::int8, NULL::text, ROW('in', true))", "'{}'::text[]", "'\\x00ff'::bytea",
    "'{\"a\": [1, 2.5]}'::jsonb", "true", "7::int2", "2.5::float8", "'2026-12-02'::date",
    "'2026-12-02 07:00:01.5'::timestamp", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid",
    "ARRAY[ROW(1::int8, 'x')]", "ARRAY['{\"k\": 1}'::jsonb]",
]


def _superuser(postgres):
    return psycopg.connect(host=postgres.host, port=postgres.port, user=postgres.superuser,
                           password=postgres.passwords[postgres.superuser], dbname="app",
                           autocommit=True)


def test_binary_renderings_match_the_servers_text_output(postgres):
    with _superuser(postgres) as c:
        c.execute("SET TimeZone = 'UTC'")
        for expr in _CORPUS:
            query = f"SELECT {expr}".encode()
            binary = c.pgconn.exec_params(query, [], result_format=1)
            text = c.pgconn.exec_params(query, [], result_format=0)
            assert binary.status == pq.ExecStatus.TUPLES_OK, expr
            oid, value = binary.ftype(0), binary.get_value(0, 0)
            assert b.toText(oid, value) == text.get_value(0, 0).decode(), expr


@pytest.fixture
def typed(postgres):
    with _superuser(postgres) as c:
        c.execute(_SETUP)
    return postgres


def _raw(g) -> bytes:
    """Every byte the gateway sent any client, as recorded."""
    out = b""
    with StoreReader(g.stateDir) as reader:
        for s in reader.sessions():
            out += b"".join(f.data or b"" for f in reader.frames(s["id"]) if f.direction == 1)
    return out


@pytest_twisted.ensureDeferred
async def test_typed_drivers_load_every_masked_row_in_text_and_binary(tmp_path, typed):
    g, key = await _start(tmp_path, typed, extra="""
[masking]
detectors = ["credit_card", "email"]
unknown_content = "refuse"
""")
    columns = "i8, num, i8s, txts, j, js, raw, ci, m, p, ps, plain, at, u, hs"
    try:
        def go():
            out = {}
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                out["text"] = c.execute(f"SELECT {columns} FROM typed").fetchall()
                out["binary"] = c.cursor(binary=True).execute(f"SELECT {columns} FROM typed").fetchall()
                out["prepared"] = c.execute("SELECT i8, ci FROM typed WHERE id = %s", (1,),
                                            prepare=True, binary=True).fetchall()
                c.execute(f"SET application_name = '{MAIL}'")
                out["appname"] = c.info.parameter_status("application_name")
                c.execute(f'LISTEN "{MAIL}"')
                c.execute(f"NOTIFY \"{MAIL}\", 'card {CARD}'")
                out["notify"] = [(n.channel, n.payload) for n in c.notifies(timeout=5, stop_after=1)]
                with pytest.raises(psycopg.errors.CheckViolation) as e:
                    c.execute(f"CREATE TEMP TABLE t (x int CONSTRAINT \"{MAIL}\" CHECK (x > 0));"
                              "INSERT INTO t VALUES (-1)")
                out["constraint"] = e.value.diag.constraint_name
            return out

        out = await threads.deferToThread(go)
    finally:
        await g.stop()
    flat = repr(out)
    assert CARD not in flat and MAIL not in flat and "jane.doe" not in flat
    text, binary = out["text"][0], out["binary"][0]
    # Columns masking touched are strings; the rest keep their types.
    assert text[0] == binary[0] == "************1111"
    assert binary[1] == "************1111.25" and isinstance(binary[2], str)
    assert binary[4] == {"n": "************1111", "mail": "********@example.com"}
    assert binary[6] == b"raw ************1111" and text[6] == b"raw ************1111"
    # citext and the enum have no psycopg loader in binary: their bytes, masked.
    assert binary[7] == b"********@example.com" and binary[8] == b"********@example.com"
    assert text[7] == text[8] == "********@example.com" and binary[11] == 7 and text[11] == 7
    assert str(binary[12]).startswith("2026-12-02") and str(binary[13]).startswith("a0eebc99")
    # hstore: masked in place in binary (still an hstore), as text in text format.
    assert b"************1111" in binary[14] and "************1111" in text[14]
    assert out["prepared"] == [("************1111", b"********@example.com")]
    assert out["appname"] == "********@example.com"
    assert out["notify"] == [("********@example.com", "card ************1111")]
    assert out["constraint"] == "********@example.com"
    raw = _raw(g)
    for secret in (CARD.encode(), MAIL.encode(), struct.pack("!q", int(CARD))):
        assert secret not in raw
