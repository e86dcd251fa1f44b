"""Pre-login limits on every listener of a real gateway: raw sockets, psql, ssh and curl."""

import os
import socket
import struct
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from sealgate.protocols.postgres import _wire as w
from sealgate.testing import startGateway
from tests.harness.postgres import TRUST_USER

LIMITS = """
[limits]
login_timeout = "2s"
max_unauthenticated_per_source = 4
max_prelogin_bytes = 65536
login_backoff_max = "1s"
"""


def config(postgres, sshd, http_backend, limits=LIMITS) -> str:
    return f"""{limits}
[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "app"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={postgres.port}"
[connections.options]
database = "app"
username = "{TRUST_USER}"
allow_cleartext_on_loopback = true

[[connections]]
name = "web-1"
protocol = "ssh"
listen = "tcp:port=0:interface=127.0.0.1"
backend = "{sshd.endpoint}"
[connections.options]
username = "{sshd.user}"
private_key_file = "{sshd.clientKey}"
known_hosts = "{sshd.knownHosts}"

[[connections]]
name = "api"
protocol = "http"
listen = "tcp:interface=127.0.0.1:port=0"
backend = "{http_backend.endpoint}"
"""


@pytest.fixture
def gateway(tmp_path, postgres, sshd, http_backend):
    g = pytest_twisted.blockon(defer.ensureDeferred(
        startGateway(config(postgres, sshd, http_backend), tmp_path)))
    yield g
    pytest_twisted.blockon(g.stop())


def readAll(sock: socket.socket, timeout: float = 30.0) -> tuple[bytes, float]:
    """Everything the gateway sends until it hangs up, and how long that took."""
    sock.settimeout(timeout)
    start, out = time.monotonic(), b""
    try:
        while data := sock.recv(65536):
            out += data
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return out, time.monotonic() - start


def pgMessages(data: bytes) -> list:
    r = w.Reader(frontend=False)
    r.receive_data(data)
    out = []
    while (f := r.next_event()) is not w.NEED_DATA:
        out.append(w.decodeFrame(f, False))
    return out


def fatal(data: bytes) -> tuple[str, str]:
    (err,) = [m for m in pgMessages(data) if isinstance(m, w.ErrorResponse)]
    return err.get("C"), err.get("M")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def silent(port: int) -> tuple[bytes, float]:
    return readAll(connect(port))


@pytest_twisted.ensureDeferred
async def test_a_silent_postgres_client_gets_57014_at_the_login_timeout(gateway):
    data, took = await threads.deferToThread(silent, gateway.port("app"))
    assert fatal(data) == ("57014", "sealgate: no login within 2s")
    assert 1.5 < took < 20


@pytest_twisted.ensureDeferred
async def test_an_oversized_password_message_is_refused_before_its_body_arrives(gateway):
    def oversized():
        s = connect(gateway.port("app"))
        s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode())
        s.recv(65536)  # the cleartext password request
        s.sendall(b"p" + struct.pack(">I", 200 << 20) + b"x" * 1000)
        return readAll(s)

    data, took = await threads.deferToThread(oversized)
    code, message = fatal(data)
    assert code == "08P01" and "protocol violation" in message and took < 1.5


@pytest_twisted.ensureDeferred
async def test_past_the_per_source_cap_psql_gets_53300_and_a_slot_frees_on_close(gateway, postgres):
    port = gateway.port("app")

    def hold():
        held = [connect(port) for _ in range(4)]
        for s in held:  # every one of them is admitted: its startup is answered
            s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode())
            assert s.recv(65536)[:1] == b"R"
        return held

    env = dict(os.environ, PGPASSWORD="nope", PGCONNECT_TIMEOUT="10")
    argv = [postgres._bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "ci",
            "-d", "app", "-c", "select 1"]

    def psql():
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    held = await threads.deferToThread(hold)
    try:
        r = await threads.deferToThread(psql)
        assert r.returncode != 0
        assert "too many connections from your address are logging in" in r.stderr

        def raw():
            s = connect(port)
            s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode())
            return fatal(readAll(s)[0])

        code, message = await threads.deferToThread(raw)
        assert code == "53300" and "too many connections" in message
    finally:
        held.pop().close()
    # One closed: the next login is admitted (and refused for its key, not for the cap).
    r = await threads.deferToThread(psql)
    assert "login refused" in r.stderr and "too many" not in r.stderr
    for s in held:
        s.close()


@pytest_twisted.ensureDeferred
async def test_a_silent_ssh_client_is_disconnected_with_the_reason(gateway):
    def sshSilent():
        s = connect(gateway.port("web-1"))
        return readAll(s)

    data, took = await threads.deferToThread(sshSilent)
    assert data.startswith(b"SSH-2.0-")
    assert b"sealgate: no login within 2s" in data and 1.5 < took < 20


@pytest_twisted.ensureDeferred
async def test_ssh_with_a_huge_user_name_is_cut_at_the_pre_login_allowance(gateway, sshd):
    # The user-auth request carries the name: 100 KB of it is more than a login may send.
    argv = ["ssh", "-p", str(gateway.port("web-1")), "-l", "u" * 100_000, "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-i", str(sshd.clientKey), "127.0.0.1", "true"]
    start = time.monotonic()
    r = await threads.deferToThread(subprocess.run, argv, capture_output=True, text=True,
                                    timeout=60)
    assert r.returncode == 255
    assert "sealgate: more than 65536 bytes sent before logging in" in r.stderr
    assert time.monotonic() - start < 10


@pytest_twisted.ensureDeferred
async def test_a_silent_http_client_gets_a_408_problem(gateway):
    data, took = await threads.deferToThread(silent, gateway.port("api"))
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"application/problem+json" in data and b"no login within 2s" in data


@pytest_twisted.ensureDeferred
async def test_curl_is_refused_with_429_past_the_per_source_cap(gateway):
    held = [connect(gateway.port("api")) for _ in range(4)]
    try:
        r = await threads.deferToThread(subprocess.run, [
            "curl", "-sS", "-i", "--max-time", "20", f"http://127.0.0.1:{gateway.port('api')}/"],
            capture_output=True, text=True, timeout=60)
        assert r.stdout.startswith("HTTP/1.1 429 Too Many Requests")
        assert "Retry-After: 5" in r.stdout and "too many connections from your address" in r.stdout
    finally:
        for s in held:
            s.close()


@pytest_twisted.ensureDeferred
async def test_a_silent_admin_client_gets_a_408_and_the_api_still_answers(gateway):
    data, _ = await threads.deferToThread(silent, gateway.adminPort)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    r = await threads.deferToThread(subprocess.run, [
        "curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{gateway.adminPort}/healthz"],
        capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == '{"status": "ok"}'


@pytest_twisted.ensureDeferred
async def test_the_browser_login_listener_is_guarded_too(tmp_path, http_backend, oidc_issuer):
    g = await startGateway(f"""
[identity]
oidc_issuer = "{oidc_issuer.issuer}"

[limits]
login_timeout = "2s"
login_backoff_max = "1s"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "web"
protocol = "http"
listen = "tcp:0:interface=127.0.0.1"
backend = "{http_backend.endpoint}"
[connections.options]
browser_login = true
""", tmp_path)
    try:
        data, took = await threads.deferToThread(silent, g.port("web"))
    finally:
        await g.stop()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and 1.5 < took < 20


@pytest_twisted.ensureDeferred
async def test_a_flood_from_one_address_leaves_other_addresses_and_the_admin_api_served(gateway):
    key = gateway.createKey("ci", ["eng"])
    port = gateway.port("app")

    def flood():
        return [connect(port) for _ in range(200)]

    def loginFrom(host):
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(host, 0))
        s.sendall(w.StartupMessage((("user", "ci"), ("database", "app"))).encode()
                  + w.PasswordMessage.cleartext(key).encode())
        seen, r = [], w.Reader(frontend=False)
        while not any(isinstance(m, (w.ReadyForQuery, w.ErrorResponse)) for m in seen):
            r.receive_data(s.recv(65536))
            while (f := r.next_event()) is not w.NEED_DATA:
                seen.append(w.decodeFrame(f, False))
        s.close()
        return seen

    held = await threads.deferToThread(flood)
    try:
        seen = await threads.deferToThread(loginFrom, "127.0.0.2")
        assert isinstance(seen[-1], w.ReadyForQuery), seen
        r = await threads.deferToThread(subprocess.run, [
            "curl", "-sS", "--max-time", "20", "--interface", "127.0.0.2",
            f"http://127.0.0.1:{gateway.adminPort}/healthz"], capture_output=True, text=True,
            timeout=60)
        assert r.stdout.strip() == '{"status": "ok"}'
        # The flooding address holds at most its four slots (fewer once the
        # login timeout frees some on a slow machine); the rest were refused at once.
        assert gateway.gateway.prelogin.perSource.get("127.0.0.1", 0) <= 4
        assert gateway.gateway.prelogin.refusals["source_busy"] > 0
    finally:
        for s in held:
            s.close()
