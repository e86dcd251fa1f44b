"""The PostgreSQL proxy end to end: real gateway in-process, real PostgreSQL, psql, psycopg, pgbench."""

import os
import subprocess

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from sealgate.protocols.postgres import _wire as w
from sealgate.recording.reader import StoreReader
from sealgate.testing import startGateway
from tests.harness.certs import makeServerCert
from tests.harness.postgres import MD5_USER, SCRAM_USER, TRUST_USER

_ENV = "SEALGATE_TEST_PG_PASSWORD"


def _config(postgres, user=SCRAM_USER, options: str = "", extra: str = "", name="app",
            loopback=True) -> str:
    return f"""
[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "{name}"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={postgres.port}"
[connections.options]
database = "app"
username = "{user}"
{'password_env = "' + _ENV + '"' if postgres.password(user) else ''}
allow_cleartext_on_loopback = {'true' if loopback else 'false'}
{options}

[[rules]]
name = "no-drop"
action = "deny"
statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE"]
reason = "dropping tables is not allowed"

[[rules]]
name = "grants-need-a-lead"
action = "approve"
statements = ["GRANT"]
approvers = ["leads"]
expires = "60s"

[[rules]]
name = "revokes-expire"
action = "approve"
statements = ["REVOKE"]
approvers = ["leads"]
expires = "1s"
{extra}
"""


async def _start(tmp_path, postgres, user=SCRAM_USER, **kw):
    if postgres.password(user):
        os.environ[_ENV] = postgres.password(user)
    g = await startGateway(_config(postgres, user, **kw), tmp_path)
    return g, g.createKey("ci-bot", ["eng"])


def _dsn(g, key, conn="app", **extra):
    parts = dict(host="127.0.0.1", port=g.port(conn), user="ci-bot", dbname=conn,
                 password=key, sslmode="disable", connect_timeout="10")
    parts.update(extra)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _run(argv, env=None, input=None, timeout=60):
    return threads.deferToThread(subprocess.run, argv, capture_output=True, text=True,
                                 env=env, input=input, timeout=timeout)


async def _psql(postgres, g, key, sql, conn="app", extra=()):
    env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    argv = [postgres._bin("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(g.port(conn)),
            "-U", "ci-bot", "-d", conn, *extra, "-c", sql]
    return await _run(argv, env)


def _rawLogin(port, key, dbname="app"):
    """Log in with a raw socket; return every message the gateway sent until it hung up."""
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", dbname))).encode()
              + w.PasswordMessage.cleartext(key).encode())
    r = w.Reader(frontend=False)
    out = []
    while True:
        data = s.recv(65536)
        if not data:
            break
        r.receive_data(data)
        while (f := r.next_event()) is not w.NEED_DATA:
            out.append(w.decodeFrame(f, False))
    s.close()
    return out


def _sendAfterLogin(g, key, raw: bytes):
    """Send C{raw} on a logged-in connection; return all the gateway sent until it hung up, and
    what a second session then gets for C{select 9} (the gateway lives on)."""
    import socket

    with psycopg.connect(_dsn(g, key), autocommit=True) as c:
        s = socket.socket(fileno=os.dup(c.fileno()))
        s.settimeout(30)
        s.sendall(raw)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
    with psycopg.connect(_dsn(g, key)) as c2:
        return data, c2.execute("select 9").fetchone()


def _sessions(g):
    with StoreReader(g.stateDir) as reader:
        return [(s, list(reader.frames(s["id"])), list(reader.events(s["id"])))
                for s in reader.sessions() if s["info"].get("protocol") == "postgres"]


@pytest_twisted.ensureDeferred
async def test_psql_runs_queries_through_the_gateway(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        r = await _psql(postgres, g, key, "select current_user, current_setting('application_name')")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"{SCRAM_USER}|sealgate:apikey:ci-bot (psql)"
    finally:
        await g.stop()


@pytest.mark.parametrize("user", [MD5_USER, TRUST_USER])
@pytest_twisted.ensureDeferred
async def test_backend_login_with_md5_and_trust(tmp_path, postgres, user):
    g, key = await _start(tmp_path, postgres, user=user)
    try:
        r = await _psql(postgres, g, key, "select current_user")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == user
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_key_gets_a_fatal_28P01(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        r = await _psql(postgres, g, "not-a-key", "select 1")
        assert r.returncode == 2
        assert "login refused" in r.stderr
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_connection_name_is_refused_with_the_known_ones(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            with pytest.raises(psycopg.OperationalError) as e:
                psycopg.connect(_dsn(g, key, dbname="nope"))
            return str(e.value)
        msg = await threads.deferToThread(go)
        assert 'no connection named "nope"' in msg and "app" in msg
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_down_backend_gets_a_fatal_08001_not_a_dropped_socket(tmp_path, postgres):
    from tests.harness._proc import freePort

    class Down:
        port = freePort()

        def password(self, user):
            return postgres.password(user)

    g, key = await _start(tmp_path, Down())
    try:
        msgs = await threads.deferToThread(_rawLogin, g.port("app"), key)
        err = msgs[-1]
        assert isinstance(err, w.ErrorResponse)
        assert err.get("S") == "FATAL" and err.get("C") == "08001"
        assert "cannot reach the database behind connection app" in err.get("M")
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_a_backend_that_accepts_and_never_answers_gets_a_fatal_08001_after_connect_timeout(
        tmp_path, postgres):
    from tests.harness._proc import SilentServer

    with SilentServer() as silent:
        class Silent:
            port = silent.port

            def password(self, user):
                return postgres.password(user)

        g, key = await _start(tmp_path, Silent(), options='connect_timeout = "1s"')
        try:
            msgs = await threads.deferToThread(_rawLogin, g.port("app"), key)
            err = msgs[-1]
            assert isinstance(err, w.ErrorResponse)
            assert err.get("S") == "FATAL" and err.get("C") == "08001"
            assert err.get("M") == ("sealgate: the database behind connection app did not answer within "
                                    "1 s (connect_timeout); try again later or tell the operator")
            r = await _psql(postgres, g, key, "SELECT 1")
            assert r.returncode == 2 and "did not answer within 1 s (connect_timeout)" in r.stderr, r.stderr
            # The refusal is what the client saw, so it is recorded.
            [*_, (_, frames, _)] = _sessions(g)
            assert b"connect_timeout" in b"".join(f.data for f in frames if f.direction == 1)
        finally:
            await g.stop()


@pytest_twisted.ensureDeferred
async def test_denied_statement_gets_42501_and_the_session_goes_on(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            out = {}
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                c.execute("CREATE TABLE IF NOT EXISTS victims (id int)")
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute("select 1; /* hidden */ dRoP TABLE victims")
                out["simple"] = str(e.value)
                assert c.execute("select 41 + 1").fetchone() == (42,)
                # Extended query with parameters: the Execute reports it.
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute("WITH d AS (DELETE FROM victims RETURNING %s::int) SELECT * FROM d", (1,))
                out["extended"] = str(e.value)
                assert c.execute("select %s::int", (7,)).fetchone() == (7,)
                # In a transaction block the denial aborts it, as an error would.
                c.execute("BEGIN")
                c.execute("INSERT INTO victims VALUES (1)")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute("TRUNCATE victims")
                out["status"] = c.info.transaction_status.name
                with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                    c.execute("select 1")
                c.execute("ROLLBACK")
                out["after"] = c.execute("select count(*) from victims").fetchone()[0]
                # Pipeline mode: the denied statement fails its part only.
                with c.pipeline() as p:
                    first = c.execute("select 1")
                    c.execute("DROP TABLE victims")
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        p.sync()
                    ok = c.execute("select 2")
                out["pipeline"] = (first.fetchone(), ok.fetchone())
            return out
        out = await threads.deferToThread(go)
        assert "denied by rule no-drop: dropping tables is not allowed" in out["simple"]
        assert "CONTEXT" not in out["simple"]
        assert "no-drop" in out["extended"]
        assert out["status"] == "INERROR"
        assert out["after"] == 0
        assert out["pipeline"] == ((1,), (2,))
    finally:
        await g.stop()


async def _waitTicket(g):
    from twisted.internet import reactor, task

    for _ in range(500):
        pending = g.gateway.approvals.pending()
        if pending:
            return pending[0]
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("no ticket appeared")


def _lead():
    from sealgate.identity import Identity

    return Identity("lead", frozenset({"leads"}))


@pytest_twisted.ensureDeferred
async def test_held_statement_runs_after_approval_and_fails_after_denial(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            notices = []
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                c.add_notice_handler(lambda d: notices.append((d.message_primary, d.message_hint)))
                c.execute("CREATE TABLE IF NOT EXISTS held (id int)")
                c.execute("GRANT SELECT ON held TO PUBLIC")
                approved = c.execute("select has_table_privilege('public', 'held', 'select')").fetchone()
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute("GRANT INSERT ON held TO PUBLIC")
                after = c.execute("select 1").fetchone()
            return notices, approved, str(e.value), after

        d = threads.deferToThread(go)
        t1 = await _waitTicket(g)
        assert t1.command == "GRANT SELECT ON held TO PUBLIC"
        g.gateway.approvals.approve(t1.id, _lead(), "ok")
        t2 = await _waitTicket(g)
        g.gateway.approvals.deny(t2.id, _lead(), "no writes")
        notices, approved, denied, after = await d
        assert approved == (True,)
        assert any(t1.id in (m or "") + (h or "") for m, h in notices)
        assert "denied by oidc:sealgate#lead: no writes" in denied
        assert after == (1,)
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_held_statement_expires_into_an_error(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                    c.execute("REVOKE ALL ON customers FROM PUBLIC")
                return str(e.value), c.execute("select 3").fetchone()
        msg, after = await threads.deferToThread(go)
        assert "expired" in msg
        assert after == (3,)
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_cancel_reaches_the_real_backend(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            import threading

            with psycopg.connect(_dsn(g, key)) as c:
                # cancel() holds the GIL in libpq while it waits for the gateway,
                # which runs in this process: cancel_safe() waits in Python.
                t = threading.Timer(0.5, c.cancel_safe)
                t.start()
                with pytest.raises(psycopg.errors.QueryCanceled):
                    c.execute("select pg_sleep(8)")
                c.rollback()
                return c.execute("select 5").fetchone()
        assert await threads.deferToThread(go) == (5,)
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_copy_both_ways_listen_notify_and_binary_results(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            out = {}
            with psycopg.connect(_dsn(g, key), autocommit=True) as c, \
                    psycopg.connect(_dsn(g, key), autocommit=True) as other:
                c.execute("CREATE TABLE IF NOT EXISTS copied (id int, t text)")
                with c.cursor().copy("COPY copied FROM STDIN") as cp:
                    for i in range(1000):
                        cp.write_row((i, f"row {i}"))
                buf = bytearray()
                with c.cursor().copy("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT") as cp:
                    for chunk in cp:
                        buf += chunk
                out["copy"] = bytes(buf).splitlines()
                cur = c.cursor(binary=True)
                out["binary"] = cur.execute("select %s::int8, 'x'::text, now() is not null, %s::bytea",
                                            (2**40, b"\x00\x01")).fetchone()
                c.execute("LISTEN ch")
                other.execute("NOTIFY ch, 'hello'")
                out["notify"] = [(n.channel, n.payload) for n in c.notifies(timeout=5, stop_after=1)]
                c.execute("DROP TABLE IF EXISTS copied_never")  # denied? no: DROP is denied
            return out
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await threads.deferToThread(go)

        def go2():
            out = {}
            with psycopg.connect(_dsn(g, key), autocommit=True) as c, \
                    psycopg.connect(_dsn(g, key), autocommit=True) as other:
                buf = bytearray()
                with c.cursor().copy("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT") as cp:
                    for chunk in cp:
                        buf += chunk
                out["copy"] = bytes(buf).splitlines()
                cur = c.cursor(binary=True)
                out["binary"] = cur.execute("select %s::int8, 'x'::text, %s::bytea",
                                            (2**40, b"\x00\x01")).fetchone()
                c.execute("LISTEN ch")
                other.execute("NOTIFY ch, 'hello'")
                out["notify"] = [(n.channel, n.payload) for n in c.notifies(timeout=5, stop_after=1)]
            return out
        out = await threads.deferToThread(go2)
        assert len(out["copy"]) == 1000 and out["copy"][7] == b"7\trow 7"
        assert out["binary"] == (2**40, "x", b"\x00\x01")
        assert out["notify"] == [("ch", "hello")]
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_pgbench_select_only_through_the_gateway(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        env = dict(os.environ, PGPASSWORD=postgres.password(SCRAM_USER), PGSSLMODE="disable")
        init = await _run([postgres._bin("pgbench"), "-i", "-s", "1", "-q", "-h", "127.0.0.1",
                           "-p", str(postgres.port), "-U", SCRAM_USER, "app"], env, timeout=120)
        assert init.returncode == 0, init.stderr
        env["PGPASSWORD"] = key
        r = await _run([postgres._bin("pgbench"), "-S", "-c", "4", "-t", "50", "-n", "-h", "127.0.0.1",
                        "-p", str(g.port("app")), "-U", "ci-bot", "app"], env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "number of transactions actually processed: 200/200" in r.stdout
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_garbage_after_login_ends_only_that_session(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres)
    try:
        data, after = await threads.deferToThread(_sendAfterLogin, g, key, b"\x01\x00\x00\x00\x08junk")
        assert data.startswith(b"E") and b"08P01" in data
        assert after == (9,)
    finally:
        await g.stop()


def _makeCA(directory):
    """A throwaway CA and a certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = makeServerCert(directory)
    return tls.caFile, tls.certFile, tls.keyFile


@pytest_twisted.ensureDeferred
async def test_client_tls_verify_full_and_required(tmp_path, postgres):
    ca, cert, key_ = _makeCA(tmp_path / "tls")
    g, key = await _start(tmp_path, postgres, options=(
        f'tls_cert = "{cert}"\ntls_key = "{key_}"\nrequire_tls = true'))
    try:
        r = await _psql(postgres, g, key, "select 'over tls'", extra=())
        assert r.returncode == 2 and "requires TLS" in r.stderr

        def go():
            with psycopg.connect(_dsn(g, key, sslmode="verify-full", sslrootcert=ca)) as c:
                return c.info.pgconn.ssl_in_use, c.execute("select 'over tls'").fetchone()
        inUse, row = await threads.deferToThread(go)
        assert inUse and row == ("over tls",)
        env = dict(os.environ, PGPASSWORD=key, PGSSLMODE="verify-full", PGSSLROOTCERT=str(ca))
        r = await _run([postgres._bin("psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p",
                        str(g.port("app")), "-U", "ci-bot", "-d", "app", "-c", "select 6"], env)
        assert r.returncode == 0 and r.stdout.strip() == "6", r.stderr
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_cleartext_token_refused_without_tls_unless_loopback_allowed(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres, loopback=False)
    try:
        r = await _psql(postgres, g, key, "select 1")
        assert r.returncode == 2 and "accepted only over TLS" in r.stderr
        # The message names the settings that would let this client in.
        assert "tls_cert and tls_key" in r.stderr and "allow_cleartext_on_loopback = true" in r.stderr
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_backend_tls_verify_full_against_the_servers_ca(tmp_path, postgres):
    # The harness's server offers TLS with a certificate from its own throwaway CA.
    ca = postgres.tls.caFile
    g, key = await _start(tmp_path, postgres, options=f'backend_tls = "verify-full"\nbackend_ca = "{ca}"')
    try:
        r = await _psql(postgres, g, key, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        assert r.stdout.strip() == "t", r.stderr
    finally:
        await g.stop()
    other, _, _ = _makeCA(tmp_path / "wrongca")
    g, key = await _start(tmp_path / "2", postgres,
                          options=f'backend_tls = "verify-full"\nbackend_ca = "{other}"')
    try:
        msgs = await threads.deferToThread(_rawLogin, g.port("app"), key)
        assert msgs[-1].get("S") == "FATAL" and msgs[-1].get("C", "").startswith("08")
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_masking_text_binary_copy_and_error_detail(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres, extra="""
[masking]
detectors = ["credit_card", "email"]
columns = ["secret_*"]
""")
    try:
        def go():
            out = {}
            with psycopg.connect(_dsn(g, key), autocommit=True) as c:
                out["text"] = c.execute("select card, email, name from customers order by id").fetchall()
                out["binary"] = c.cursor(binary=True).execute(
                    "select card, 123456789::int8 as secret_num, 7::int4 from customers where id = 1"
                ).fetchone()
                named = "select name as secret_name, name::varchar as secret_v, name from customers where id = 1"
                out["named"] = [c.execute(named).fetchone(), c.cursor(binary=True).execute(named).fetchone()]
                # COPY has no column names to redact by: refused, and the session goes on.
                with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
                    with c.cursor().copy("COPY (SELECT card FROM customers ORDER BY id) TO STDOUT") as cp:
                        for _chunk in cp:
                            pass
                out["copy"] = str(refused.value)
                c.execute("CREATE TABLE IF NOT EXISTS cards (c text PRIMARY KEY)")
                c.execute("DELETE FROM cards WHERE c > ''")  # a real predicate: the rule allows it
                c.execute("INSERT INTO cards VALUES ('4111 1111 1111 1111')")
                with pytest.raises(psycopg.errors.UniqueViolation) as e:
                    c.execute("INSERT INTO cards VALUES ('4111 1111 1111 1111')")
                out["detail"] = e.value.diag.message_detail
            return out
        out = await threads.deferToThread(go)
        flat = repr(out)
        for secret in ("4111 1111 1111 1111", "5500-0000-0000-0004", "340000000000009",
                       "ada@example.com", "123456789"):
            assert secret not in flat
        assert out["text"][0][2] == "Ada Lovelace"
        # Text columns under a redacted name are redacted whole, in both formats.
        assert out["named"] == [("********", "********", "Ada Lovelace")] * 2
        assert len(out["text"][0][0]) == len("4111 1111 1111 1111")
        assert out["binary"][2] == 7 and isinstance(out["binary"][1], str)
        assert "COPY carries no column names" in out["copy"]
        assert out["detail"].startswith("Key (c)=(")
    finally:
        await g.stop()
    # What the client saw is what was recorded: the store holds no card either.
    with StoreReader(g.stateDir) as reader:
        for s in reader.sessions():
            for f in reader.frames(s["id"]):
                assert b"4111 1111 1111 1111" not in (f.data or b"") or f.direction == 0


@pytest_twisted.ensureDeferred
async def test_recording_audit_replay_and_no_secret_anywhere(tmp_path, postgres, logs):
    import io

    from sealgate.protocols.postgres.replay import replay

    g, key = await _start(tmp_path, postgres)
    outputs = []
    try:
        r = await _psql(postgres, g, key, "select id, name from customers order by id; select 1/0")
        outputs += [r.stdout, r.stderr]
        assert "division by zero" in r.stderr
        r = await _psql(postgres, g, key, "drop table customers")
        outputs += [r.stdout, r.stderr]
        r = await _psql(postgres, g, "wrong-" + key[:4], "select 1")
        outputs += [r.stdout, r.stderr]

        def go():
            with psycopg.connect(_dsn(g, key)) as c:
                return c.execute("select %s::int + 1", (41,)).fetchone()
        assert await threads.deferToThread(go) == (42,)
    finally:
        await g.stop()
    sessions = _sessions(g)
    assert len(sessions) == 3
    def sent(s):
        return b"".join(f.data for f in s[1] if f.direction == 0)
    first = next(s for s in sessions if b"select id, name" in sent(s))
    third = next(s for s in sessions if b"$1::int" in sent(s))
    toClient = b"".join(f.data for f in first[1] if f.direction == 1)
    fromClient = b"".join(f.data for f in first[1] if f.direction == 0)
    assert b"Ada Lovelace" in toClient and b"select id, name" in fromClient
    statements = [e for e in first[2] if "statement" in repr(e)]
    text = repr(statements)
    assert "'rows': 3" in text and "22012" in text, text

    out = io.BytesIO()
    replay(first[1], out, None)
    transcript = out.getvalue().decode()
    assert "=> select id, name from customers order by id; select 1/0" in transcript
    assert "Grace Hopper" in transcript and "-- SELECT 3" in transcript
    assert "division by zero (22012)" in transcript

    out = io.BytesIO()
    replay(third[1], out, None)
    assert "=> select $1::int + 1" in out.getvalue().decode()

    # The backend password and the client's key: in no recording, store
    # file, log line or client-visible error.
    secrets = [postgres.password(SCRAM_USER).encode(), key.encode()]
    store = b""
    for root, _dirs, files in os.walk(g.stateDir):
        for f in files:
            if f.endswith((".sqlite", ".sqlite-wal")) and "identity" in f:
                continue  # the API key store holds hashes, checked by its own tests
            with open(os.path.join(root, f), "rb") as fh:
                store += fh.read()
    assert len(store) > 1000
    seen = "\n".join(logs + outputs).encode() + transcript.encode() + toClient + fromClient
    for s in secrets:
        assert s not in store
        assert s not in seen


@pytest_twisted.ensureDeferred
async def test_newer_protocol_minor_is_negotiated_down_to_3_0(tmp_path, postgres):
    import socket

    g, key = await _start(tmp_path, postgres)
    try:
        def go():
            s = socket.create_connection(("127.0.0.1", g.port("app")), timeout=10)
            s.sendall(w.StartupMessage((("user", "ci-bot"), ("database", "app"),
                                        ("_pq_.fancy", "1")), version=(3 << 16) | 2).encode())
            r = w.Reader(frontend=False)
            msgs = []
            while len(msgs) < 2:
                r.receive_data(s.recv(4096))
                while (f := r.next_event()) is not w.NEED_DATA:
                    msgs.append(w.decodeFrame(f, False))
            s.sendall(w.PasswordMessage.cleartext(key).encode())
            while not any(isinstance(m, w.ReadyForQuery) for m in msgs):
                r.receive_data(s.recv(4096))
                while (f := r.next_event()) is not w.NEED_DATA:
                    msgs.append(w.decodeFrame(f, False))
            s.close()
            return msgs
        msgs = await threads.deferToThread(go)
        assert msgs[0] == w.NegotiateProtocolVersion(0, ("_pq_.fancy",))
        assert msgs[1] == w.Authentication(w.AUTH_CLEARTEXT)
        assert any(isinstance(m, w.BackendKeyData) for m in msgs)
    finally:
        await g.stop()


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_then_ends_open_sessions_with_57P01(tmp_path, postgres):
    g, key = await _start(tmp_path, postgres, extra='[gateway]\ndrain_timeout = "1s"\n')
    conn = await threads.deferToThread(psycopg.connect, _dsn(g, key), autocommit=True)
    try:
        row = await threads.deferToThread(lambda: conn.execute("select 'before'").fetchone())
        assert row == ("before",)
        await g.stop()  # drains for a second, then closes the idle session

        def after():
            with pytest.raises(psycopg.OperationalError) as e:
                conn.execute("select 'after'")
            return str(e.value)
        message = await threads.deferToThread(after)
        assert "the gateway is shutting down" in message
    finally:
        await threads.deferToThread(conn.close)
    with StoreReader(g.stateDir) as reader:
        [session] = reader.sessions()
        assert session["state"] == "closed", session


@pytest.mark.parametrize("message", [
    b"B\x00\x00\x00\x0aportal",              # Bind, unterminated portal name
    b"E\x00\x00\x00\x08abcd",                # Execute, unterminated portal name
    b"C\x00\x00\x00\x09Sabcd",               # Close, unterminated statement name
    b"B\x00\x00\x00\x08\x00\x00\x00\x05",    # Bind, parameter formats past the end
], ids=["bind", "execute", "close", "bind-short"])
@pytest_twisted.ensureDeferred
async def test_malformed_extended_query_message_gets_08P01_and_a_recorded_close(tmp_path, postgres, message):
    g, key = await _start(tmp_path, postgres)
    try:
        data, after = await threads.deferToThread(_sendAfterLogin, g, key, message)
        r = w.Reader(frontend=False)
        r.receive_data(data)
        err = w.decodeFrame(r.next_event(), False)
        assert isinstance(err, w.ErrorResponse) and err.get("C") == "08P01", err
        assert "malformed" in err.get("M"), err
        assert after == (9,)
    finally:
        await g.stop()
    sessions = _sessions(g)
    broken = [(s, frames) for s, frames, _ in sessions if any(f.data == message for f in frames)]
    assert len(broken) == 1
    s, frames = broken[0]
    assert s["state"] == "closed"
    assert s["reason"].startswith("08P01: sealgate: protocol violation: malformed"), s["reason"]
    assert frames[-1].direction == 1 and b"08P01" in frames[-1].data


@pytest_twisted.ensureDeferred
async def test_malformed_message_sent_while_a_statement_is_held_gets_08P01_once_it_is_decided(
        tmp_path, postgres, logs):
    import socket

    g, key = await _start(tmp_path, postgres)
    try:
        c = await threads.deferToThread(psycopg.connect, _dsn(g, key), autocommit=True)
        await threads.deferToThread(c.execute, "CREATE TABLE IF NOT EXISTS heldbad (id int)")
        s = socket.socket(fileno=os.dup(c.fileno()))
        s.settimeout(30)

        def hold():
            s.sendall(w.Query("GRANT SELECT ON heldbad TO PUBLIC").encode())
            data = b""
            while b"NOTICE" not in data:
                data += s.recv(4096)
            s.sendall(b"E\x00\x00\x00\x08abcd")  # Execute, unterminated portal name: read after the hold
        await threads.deferToThread(hold)
        ticket = await _waitTicket(g)
        g.gateway.approvals.approve(ticket.id, _lead(), "ok")

        def rest():
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data
        data = await threads.deferToThread(rest)
        s.close()
        c.close()
        r = w.Reader(frontend=False)
        r.receive_data(data)
        errors = []
        while (f := r.next_event()) is not w.NEED_DATA:
            m = w.decodeFrame(f, False)
            if isinstance(m, w.ErrorResponse):
                errors.append(m.get("C"))
        assert errors[-1:] == ["08P01"], data
        assert not [line for line in logs if "Unhandled" in line or "Traceback" in line], logs
    finally:
        await g.stop()
