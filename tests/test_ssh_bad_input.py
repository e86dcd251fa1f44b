"""The SSH listener against malformed pre-auth messages and banner scanners: one log line, no version."""

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.test_ssh_e2e import _config


@pytest.fixture(scope="module")
def gateway(sshd, tmp_path_factory):
    from sealgate.testing import startGateway

    tmp = tmp_path_factory.mktemp("sshbad")
    gw = pytest_twisted.blockon(defer.ensureDeferred(startGateway(_config(sshd, tmp), tmp)))
    yield gw
    pytest_twisted.blockon(gw.stop())


def _packet(payload: bytes) -> bytes:
    """An unencrypted SSH binary packet (RFC 4253 section 6) around C{payload}."""
    pad = 8 - (5 + len(payload)) % 8
    pad += 8 if pad < 4 else 0
    return struct.pack("!IB", 1 + len(payload) + pad, pad) + payload + b"\0" * pad


_KEXINITS = {
    "string past the end": b"\x14" + b"c" * 16 + struct.pack("!I", 1000) + b"x",
    "no name lists": b"\x14" + b"c" * 16,
    "cut in the cookie": b"\x14" + b"c" * 5,
}


def _talk(port, payload):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        banner = b""
        while not banner.endswith(b"\r\n"):
            banner += s.recv(1)
        s.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + _packet(payload))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return banner, data
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_malformed_kexinits_each_log_one_line_and_get_a_protocol_error(gateway, logs):
    port = gateway.port("web-1")
    for name, payload in _KEXINITS.items():
        banner, data = await threads.deferToThread(_talk, port, payload)
        assert b"malformed MSG_KEXINIT" in data, (name, data[-200:])
    lines = [line for line in logs if "malformed KEXINIT" in line]
    assert len(lines) == len(_KEXINITS), lines
    assert all(line.startswith("SSH client 127.0.0.1:") for line in lines), lines
    assert not [line for line in logs if "Traceback" in line or "Unhandled" in line], logs


@pytest_twisted.ensureDeferred
async def test_the_banner_names_no_software_version(gateway):
    banner, _ = await threads.deferToThread(_talk, gateway.port("web-1"), _KEXINITS["no name lists"])
    assert banner == b"SSH-2.0-sealgate\r\n"


def _send(port, payload):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        seen = b""
        while b"\r\n" not in seen:
            seen += s.recv(4096)
        s.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + _packet(payload))
        s.shutdown(socket.SHUT_WR)  # then the gateway sees the end and hangs up
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_any_pre_auth_transport_message_is_handled_or_refused_without_a_traceback(gateway, logs):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    port = gateway.port("web-1")

    @settings(max_examples=80, deadline=None)
    @given(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 20, 21, 30, 31, 50, 80, 90, 94]), st.binary(max_size=60))
    def fuzz(number, body):
        _send(port, bytes([number]) + body)

    await threads.deferToThread(fuzz)
    assert not [line for line in logs if "Traceback" in line or "Unhandled" in line], logs
