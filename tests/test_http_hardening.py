"""The HTTP listener against a real gateway, curl and raw sockets: normalized targets, one Host, strict framing, auth before the body, body and backend limits."""

import json
import os
import socket

import pytest_twisted
from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol

from sealgate.recording.reader import StoreReader
from tests.test_http_proxy import _curl, _sharedListener, _start

_DENY_SECRET = """
[[rules]]
name = "no-secret"
action = "deny"
paths = ["^/echo/secret"]
reason = "the secret area is off limits"
"""


def _raw(port: int, data: bytes, until_close: bool = True) -> bytes:
    """Send raw bytes; read until the gateway closes (or, with C{until_close=False}, one response head)."""
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(15)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                piece = s.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            out += piece
            if not until_close and b"\r\n\r\n" in out:
                break
        return out
    finally:
        s.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def _code(*args: str) -> tuple[int, bytes]:
    r = await _curl("-o", "-", "-w", "\n%{http_code}", *args)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code), body


@pytest_twisted.ensureDeferred
async def test_dotted_encoded_and_absolute_targets_cannot_pass_a_deny_rule(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend, extra=_DENY_SECRET)
    base = f"http://127.0.0.1:{g.port('web')}"
    auth = ("-H", f"Authorization: Bearer {key}")
    try:
        seen = {}
        for target in ["/echo/x/../secret", "/echo/./secret", "/echo//secret", "//echo/secret",
                       "/%65cho/secret", "/echo/%73ecret/a", "/echo/x/..//secret", "/echo/secret/./"]:
            seen[target] = (await _code(*auth, "--path-as-is", base + target))[0]
        seen["absolute-form"] = (await _code(*auth, "--request-target",
                                             "http://gw/echo/x/../secret", base + "/"))[0]
        # What the rule did not name still passes, normalized.
        code, body = await _code(*auth, "--path-as-is", base + "/echo/secret-not/../open")
    finally:
        await g.stop()
    assert seen == {t: 403 for t in seen}
    assert code == 200 and json.loads(body)["path"] == "/echo/open"


@pytest_twisted.ensureDeferred
async def test_the_backend_gets_the_normalized_target(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    try:
        code, body = await _code("-H", f"Authorization: Bearer {key}", "--path-as-is",
                                 f"http://127.0.0.1:{g.port('web')}/echo/a/./b/../%63?x=%41&y=%2f")
    finally:
        await g.stop()
    doc = json.loads(body)
    assert code == 200 and (doc["path"], doc["query"]) == ("/echo/a/c", "x=A&y=%2F")


@pytest_twisted.ensureDeferred
async def test_encoded_slashes_dots_backslashes_and_controls_are_refused_unless_lenient(
        tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    refused = {}
    try:
        port = g.port("web")
        for target in ["/echo/%2e%2e/secret", "/echo/a%2Fb", "/echo/a\\b", "/echo/a%00b", "/echo/a%5Cb",
                       "/echo/%", "/echo/a#frag", "echo/relative"]:
            out = await threads.deferToThread(_raw, port, (
                f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n\r\n").encode(), False)
            refused[target] = _status(out)
    finally:
        await g.stop()
    assert refused == {t: 400 for t in refused}

    lenient = tmp_path / "lenient"
    lenient.mkdir()
    g, key = await _start(lenient, http_backend, extra_options="lenient_targets = true")
    try:
        code, body = await _code("-H", f"Authorization: Bearer {key}",
                                 f"http://127.0.0.1:{g.port('web')}/echo/a%2Fb")
    finally:
        await g.stop()
    assert code == 200 and json.loads(body)["path"] == "/echo/a%2Fb"


@pytest_twisted.ensureDeferred
async def test_routing_uses_the_normalized_path_and_the_absolute_form_authority(tmp_path, http_backend):
    g, port = await _sharedListener(tmp_path, http_backend, [
        ("web-public", 'path_prefix = "/echo/public"', "X-Public-Key"),
        ("web-host", 'hosts = ["admin.internal"]', "X-Host-Key")])
    key = g.createKey("ci-bot", ["eng"])

    def echo(target: str, host: str = "gw") -> dict:
        out = _raw(port, (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                          "Connection: close\r\n\r\n").encode())
        doc = json.loads(out.split(b"\r\n\r\n", 1)[1])
        return {"path": doc["path"], "headers": {k.lower() for k, _ in doc["headers"]}}

    try:
        escaped = await threads.deferToThread(echo, "/echo/public/../private")
        public = await threads.deferToThread(echo, "/echo/public/x")
        absolute = await threads.deferToThread(echo, "http://Admin.Internal./echo/x", "gw")
    finally:
        await g.stop()
    # Out of the prefix once normalized: the public connection's credential stays out.
    assert escaped["path"] == "/echo/private" and "x-public-key" not in escaped["headers"]
    assert "x-public-key" in public["headers"]
    assert absolute["path"] == "/echo/x" and "x-host-key" in absolute["headers"]


@pytest_twisted.ensureDeferred
async def test_exactly_one_host_and_strict_framing_or_400(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    auth = f"Authorization: Bearer {key}\r\n"
    heads = {
        "two hosts": f"GET /echo/x HTTP/1.1\r\nHost: gw\r\nHost: admin.internal\r\n{auth}\r\n",
        "no host": f"GET /echo/x HTTP/1.1\r\n{auth}\r\n",
        "no host, 1.0": f"GET /echo/x HTTP/1.0\r\n{auth}\r\n",
        "bad host": f"GET /echo/x HTTP/1.1\r\nHost: gw/evil\r\n{auth}\r\n",
        "xchunked": f"POST /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}Transfer-Encoding: xchunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\n\r\n",
        "te and length": f"POST /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}Transfer-Encoding: chunked\r\n"
                         "Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "nul in a value": f"GET /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}X-A: a\0b\r\n\r\n",
        "space in a name": f"GET /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}X A: 1\r\n\r\n",
        "gzip, chunked": f"POST /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}Transfer-Encoding: gzip, chunked\r\n"
                         "\r\n3\r\nabc\r\n0\r\n\r\n",
    }
    try:
        port = g.port("web")
        statuses = {}
        for name, head in heads.items():
            out = await threads.deferToThread(_raw, port, head.encode())
            statuses[name] = _status(out)
            assert b"Connection: close" in out.split(b"\r\n\r\n")[0], name
        ok = await threads.deferToThread(_raw, port, (
            f"GET /echo/x HTTP/1.1\r\nHost: gw\r\n{auth}Connection: close\r\n\r\n").encode())
    finally:
        await g.stop()
    assert statuses == {**{n: 400 for n in heads}, "gzip, chunked": 501}
    assert _status(ok) == 200


@pytest_twisted.ensureDeferred
async def test_an_anonymous_body_is_never_read_nor_continued(tmp_path, http_backend):
    g, _key = await _start(tmp_path, http_backend)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    try:
        port = g.port("web")
        # Two gigabytes announced, none sent: the answer comes at once.
        out = await threads.deferToThread(_raw, port, (
            "POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 2000000000\r\n\r\n").encode())
        r = await _curl("-v", "--data-binary", f"@{big}", f"http://127.0.0.1:{port}/upload")
    finally:
        await g.stop()
    head = out.split(b"\r\n\r\n")[0]
    assert _status(out) == 401 and b"Connection: close" in head
    assert b"HTTP/1.1 401" in r.stderr and b"100 Continue" not in r.stderr


@pytest_twisted.ensureDeferred
async def test_bodies_over_max_body_get_413_and_smaller_ones_pass(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend, extra_options="max_body = 1048576")
    over, under = tmp_path / "over.bin", tmp_path / "under.bin"
    over.write_bytes(os.urandom((1 << 20) + 1))
    under.write_bytes(os.urandom(1 << 20))
    auth = ("-H", f"Authorization: Bearer {key}")
    try:
        url = f"http://127.0.0.1:{g.port('web')}/upload"
        length = await _code(*auth, "--data-binary", f"@{over}", url)
        chunked = await _code(*auth, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{over}", url)
        fits = await _code(*auth, "--data-binary", f"@{under}", url)
    finally:
        await g.stop()
    assert length[0] == 413 and json.loads(length[1])["max_body"] == 1 << 20
    assert chunked[0] == 413
    assert fits[0] == 200 and json.loads(fits[1])["bytes"] == 1 << 20


class _StallingBackend:
    """Accepts and reads; answers C{/half} with half a body, everything else never."""

    def __init__(self):
        from twisted.internet import reactor

        class Stall(Protocol):
            def dataReceived(self, data):
                if b"/half" in data:
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                         b"Content-Length: 100\r\n\r\n" + b"x" * 10)

        self.port = reactor.listenTCP(0, Factory.forProtocol(Stall), interface="127.0.0.1")
        self.endpoint = f"tcp:host=127.0.0.1:port={self.port.getHost().port}"


@pytest_twisted.ensureDeferred
async def test_a_silent_backend_gets_504_and_one_stalling_mid_body_a_cut(tmp_path):
    backend = _StallingBackend()
    # Unmasked (the key's group is exempt): a masked connection holds a
    # binary body back until it can vet it, so it could not stall mid-body.
    g, key = await _start(tmp_path, backend, extra_options='backend_timeout = "1s"',
                          extra='exempt_groups = ["eng"]')
    try:
        base = f"http://127.0.0.1:{g.port('web')}"
        silent = await _curl("-i", "-H", f"Authorization: Bearer {key}", f"{base}/never")
        half = await _curl("-i", "-H", f"Authorization: Bearer {key}", f"{base}/half")
    finally:
        await g.stop()
        await backend.port.stopListening()
    head, _, body = silent.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504") and json.loads(body)["status"] == 504
    # Cut, not completed: curl sees the body end early (18) or the connection reset (56).
    assert half.stdout.endswith(b"\r\n\r\n" + b"x" * 10) and half.returncode in (18, 56)
    with StoreReader(g.stateDir) as reader:
        cuts = [e for s in reader.sessions() for e in reader.events(s["id"])
                if e.get("event") == "http_response_cut"]
    assert cuts


class _Rewriter:
    """An interceptor that rewrites one request (HTTP cannot apply it)."""

    name = "rewriter"

    def appliesTo(self, session):
        return True

    def command(self, hook):
        from sealgate.chain.verdicts import Rewrite

        return Rewrite("GET /echo/rewritten") if "/echo/original" in hook.text else None


@pytest_twisted.ensureDeferred
async def test_a_rewrite_is_an_audited_deny_end_to_end_not_a_silent_pass(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    g.gateway.chain = type(g.gateway.chain)([_Rewriter(), *g.gateway.chain.interceptors])
    try:
        code, body = await _code("-H", f"Authorization: Bearer {key}",
                                 f"http://127.0.0.1:{g.port('web')}/echo/original")
    finally:
        await g.stop()
    assert code == 403 and json.loads(body)["rule"] == "rewriter"
    with StoreReader(g.stateDir) as reader:
        verdicts = [e["fields"]["verdict"] for s in reader.sessions() for e in reader.events(s["id"])
                    if e.get("event") == "command"]
    assert verdicts == ["deny"]
