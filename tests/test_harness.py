"""The test harness's backends are the real thing, reached with real clients."""

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import time

import psycopg
import pytest_twisted

from tests.harness.httpbackend import streamBytes
from tests.harness.postgres import MD5_USER, SCRAM_USER, TRUST_USER


def authMethods(postgres) -> list[str]:
    return [line.split("method=")[1].split()[0] for line in postgres.logText().splitlines()
            if "connection authenticated" in line and "method=" in line]


def test_postgres_psql_logs_in_with_scram_md5_and_trust(postgres):
    assert postgres.psql("select current_user", user=SCRAM_USER).strip() == SCRAM_USER
    assert postgres.psql("select current_user", user=MD5_USER).strip() == MD5_USER
    assert postgres.psql("select current_user", user=TRUST_USER, password=False).strip() \
        == TRUST_USER
    methods = authMethods(postgres)
    assert "scram-sha-256" in methods and "md5" in methods
    stored = postgres.psql("select rolname || '=' || left(rolpassword, 3) from pg_authid "
                           f"where rolname in ('{SCRAM_USER}', '{MD5_USER}') order by 1")
    assert stored.split() == [f"{MD5_USER}=md5", f"{SCRAM_USER}=SCR"]


def test_postgres_refuses_a_wrong_password(postgres):
    result = postgres.psql("select 1", user=SCRAM_USER, password="wrong", check=False)
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr


def test_postgres_psycopg_reads_the_sample_table(postgres):
    with psycopg.connect(postgres.dsn(SCRAM_USER)) as conn:
        rows = conn.execute("select email, card from customers order by id").fetchall()
        assert conn.info.server_version // 10000 == 15
        assert conn.pgconn.used_password
    assert rows[0] == ("ada@example.com", "4111 1111 1111 1111")


def test_sshd_runs_a_command_for_the_real_ssh_client(sshd):
    result = sshd.ssh("echo", "sealgate-$((6*7))")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "sealgate-42\n"
    assert any("Accepted publickey for " + sshd.user in line for line in sshd.log)


def test_sshd_checks_host_key_and_refuses_unknown_client_keys(sshd, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    refused = sshd.ssh("true", key=other)
    assert refused.returncode == 255
    assert "Permission denied" in refused.stderr
    wrongHost = tmp_path / "known_hosts"
    wrongHost.write_text(f"[127.0.0.1]:{sshd.port} " + (other.with_suffix(".pub")).read_text())
    result = sshd.ssh("true", knownHosts=wrongHost)
    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True,
                          timeout=60)


def test_http_backend_echo_json_text_gzip_status(http_backend):
    url = http_backend.url
    echo = json.loads(curl("-X", "PUT", "-H", "X-Test: 1", "--data-binary", "hi",
                           f"{url}/echo/a?b=c").stdout)
    assert (echo["method"], echo["path"], echo["query"], echo["body"]) == \
        ("PUT", "/echo/a", "b=c", "hi")
    assert ["X-Test", "1"] in echo["headers"]
    assert json.loads(curl(f"{url}/json").stdout)["customer"]["card"] == "4111 1111 1111 1111"
    assert b"ada@example.com" in curl(f"{url}/text").stdout
    raw = curl("-D", "-", f"{url}/gzip").stdout
    assert b"content-encoding: gzip" in raw.lower() and b"4111" not in raw
    assert b"4111 1111 1111 1111" in curl("--compressed", f"{url}/gzip").stdout
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"{url}/status/503").stdout == b"503"


def test_http_backend_streams_and_counts_uploads(http_backend, tmp_path):
    n = 3 * 1024 * 1024 + 7
    out = curl("-D", "-", "-o", str(tmp_path / "body"), f"{http_backend.url}/stream?bytes={n}")
    assert b"transfer-encoding: chunked" in out.stdout.lower()
    assert (tmp_path / "body").read_bytes() == streamBytes(n)
    data = os.urandom(1024 * 1024)
    (tmp_path / "up").write_bytes(data)
    for how in (["--data-binary", f"@{tmp_path / 'up'}"], ["-T", str(tmp_path / "up"),
                                                           "-H", "Transfer-Encoding: chunked"]):
        doc = json.loads(curl(*how, f"{http_backend.url}/upload").stdout)
        assert doc == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_http_backend_websocket_echo(http_backend):
    with socket.create_connection((http_backend.host, http_backend.port), timeout=10) as s:
        key = base64.b64encode(os.urandom(16))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 101")
        while f.readline() not in (b"\r\n", b""):
            pass
        mask = os.urandom(4)
        payload = b"hello card 4111 1111 1111 1111"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        s.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
        head = f.read(2)
        assert head[0] == 0x81 and head[1] == len(payload)
        assert f.read(len(payload)) == payload


@pytest_twisted.ensureDeferred
async def test_oidc_issuer_serves_discovery_and_jwks_over_http(oidc_issuer):
    import treq

    response = await treq.get(oidc_issuer.issuer + "/.well-known/openid-configuration",
                                persistent=False)
    doc = await response.json()
    assert doc["issuer"] == oidc_issuer.issuer
    jwks = await (await treq.get(doc["jwks_uri"], persistent=False)).json()
    assert sorted(k["kty"] for k in jwks["keys"]) == ["EC", "OKP", "RSA"]
    assert not any("d" in k for k in jwks["keys"]), "private parts must not be published"


def test_backends_stop_without_leaving_processes_or_files():
    from tests.harness.httpbackend import HTTPBackend
    from tests.harness.postgres import PostgresServer
    from tests.harness.sshd import SSHServer

    pg = PostgresServer().start()
    pgDir = pg.dir
    postmaster = int((pg.dataDir / "postmaster.pid").read_text().split()[0])
    ssh = SSHServer().start()
    sshDir, sshPid = ssh.dir, ssh.process.pid
    http = HTTPBackend().start()
    httpProcess = http.process
    for backend in (pg, ssh, http):
        backend.stop()
    assert not pgDir.exists() and not sshDir.exists()
    assert httpProcess.returncode is not None
    for pid in (postmaster, sshPid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # A zombie is gone for every purpose but its pid entry.
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().split(") ")[1].startswith("Z"), f"process {pid} still runs"


def test_sshd_stop_ends_open_sessions_too():
    from tests.harness.sshd import SSHServer, _children

    server = SSHServer().start()
    client = subprocess.Popen(server.sshArgs() + ["sleep", "60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        # The session is up once sshd has logged starting it.
        for _ in range(200):
            if any("Starting session" in line for line in server.log):
                break
            client.poll()
            assert client.returncode is None
            time.sleep(0.05)
        sessions = _children(server.process.pid)
        assert sessions
        server.stop()
        assert client.wait(20) == 255
        for pid in sessions:
            assert not os.path.exists(f"/proc/{pid}") or \
                open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z")
    finally:
        client.kill()
        client.wait()
        server.stop()


def test_postgres_offers_tls_that_verifies_against_its_ca(postgres):
    dsn = postgres.dsn(SCRAM_USER, sslmode="verify-full", sslrootcert=str(postgres.tls.caFile))
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == (True,)
    with psycopg.connect(postgres.dsn(SCRAM_USER, sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use


def test_https_backend_verifies_against_its_ca(https_backend):
    out = curl("--cacert", str(https_backend.tls.caFile), f"{https_backend.url}/json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["customer"]["email"] == "ada@example.com"
    untrusted = curl(f"{https_backend.url}/json")
    assert untrusted.returncode == 60  # curl: peer certificate cannot be authenticated


@pytest_twisted.ensureDeferred
async def test_https_backend_endpoint_string_works_with_twisted(https_backend):
    from twisted.internet import endpoints, reactor
    from twisted.internet.protocol import Factory, Protocol

    received = []

    class Get(Protocol):
        def connectionMade(self):
            self.transport.write(b"GET /text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")

        def dataReceived(self, data):
            received.append(data)

        def connectionLost(self, reason):
            self.factory.done.callback(b"".join(received))

    from twisted.internet.defer import Deferred

    factory = Factory.forProtocol(Get)
    factory.done = Deferred()
    endpoint = endpoints.clientFromString(reactor, https_backend.endpoint)
    await endpoint.connect(factory)
    body = await factory.done
    assert body.startswith(b"HTTP/1.1 200") and b"ada@example.com" in body
