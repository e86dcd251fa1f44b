"""The lean HTTP/1.1 relay on the wire: HEAD, pipelining, HTTP/1.0, chunked pass-through, idle close, backend reuse."""

import json
import socket

import pytest_twisted
from twisted.internet import threads

from sealgate.protocols.http import _wire
from tests.harness.httpbackend import streamBytes
from tests.test_http_proxy import _frames, _start


def _exchange(port: int, data: bytes, responses: int, methods: list[bytes]) -> tuple[list, bytes]:
    """Send raw bytes, read until C{responses} final responses ended (or the socket closed)."""
    s = socket.create_connection(("127.0.0.1", port), 10)
    s.settimeout(10)
    s.sendall(data)
    reader = _wire.MessageReader(responses=True)
    for m in methods:
        reader.expect(m)
    out, raw, current, closed = [], b"", None, False
    while len([r for r in out if r[0] >= 200]) < responses and not closed:
        piece = s.recv(65536)
        if not piece:
            closed = True
            if reader.closed() is not None and current is not None:
                out.append(current)
            break
        raw += piece
        reader.receive_data(piece)
        while (ev := reader.next_event()) is not _wire.NEED_DATA:
            if isinstance(ev, _wire.Head):
                current = [ev.status, ev, b""]
            elif isinstance(ev, _wire.Body):
                current[2] += ev.data
            elif isinstance(ev, _wire.End):
                out.append(current)
    if not closed:
        # Does the gateway keep the connection open afterwards?
        s.settimeout(0.5)
        try:
            closed = s.recv(1) == b""
        except socket.timeout:
            closed = False
    s.close()
    return out, closed


def _get(path: str, key: str, method: str = "GET", version: str = "HTTP/1.1", extra: str = "") -> bytes:
    return (f"{method} {path} {version}\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n{extra}\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_head_then_pipelined_gets_on_one_connection(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    try:
        port = g.port("web")
        data = _get("/json", key, "HEAD") + _get("/echo/one", key) + _get("/text", key)
        out, closed = await threads.deferToThread(
            _exchange, port, data, 3, [b"HEAD", b"GET", b"GET"])
    finally:
        await g.stop()
    assert [r[0] for r in out] == [200, 200, 200] and not closed
    head, echo, text = out
    assert head[2] == b"" and head[1].get(b"content-type") == b"application/json"
    assert json.loads(echo[2])["path"] == "/echo/one"
    # The text body is masked as a stream, so it comes chunked.
    assert text[1].get(b"transfer-encoding") == b"chunked"
    assert b"Customer: Ada Lovelace" in text[2] and b"4111 1111 1111 1111" not in text[2]
    [(_session, frames)] = _frames(g)
    recorded = b"".join(f.data for f in frames if f.direction == 1)
    assert recorded.count(b"HTTP/1.1 200") == 3


@pytest_twisted.ensureDeferred
async def test_http10_client_gets_the_body_and_a_close(tmp_path, http_backend):
    # /stream is binary: a masked connection passes it only with unknown_content = "pass".
    g, key = await _start(tmp_path, http_backend, extra='unknown_content = "pass"')
    try:
        # /stream is chunked from the backend: an HTTP/1.0 client cannot
        # take chunks, so the gateway sends the plain bytes and closes.
        out, closed = await threads.deferToThread(
            _exchange, g.port("web"), _get("/stream?bytes=70000&chunk=999", key, version="HTTP/1.0"),
            1, [b"GET"])
    finally:
        await g.stop()
    [(status, head, body)] = out
    assert status == 200 and closed
    assert head.get(b"transfer-encoding") is None and body == streamBytes(70000)


@pytest_twisted.ensureDeferred
async def test_chunked_response_passes_with_its_framing(tmp_path, http_backend):
    # /stream is binary: a masked connection passes it only with unknown_content = "pass".
    g, key = await _start(tmp_path, http_backend, extra='unknown_content = "pass"')
    try:
        out, closed = await threads.deferToThread(
            _exchange, g.port("web"), _get("/stream?bytes=100000&chunk=777", key) + _get("/json", key),
            2, [b"GET", b"GET"])
    finally:
        await g.stop()
    (s1, h1, b1), (s2, _h2, b2) = out
    assert h1.get(b"transfer-encoding") == b"chunked" and b1 == streamBytes(100000)
    assert json.loads(b2)["customer"]["card"] != "4111 1111 1111 1111" and not closed


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_and_its_session_ends(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend, extra_options='idle_timeout = "1s"')
    port = g.port("web")

    def idle():
        s = socket.create_connection(("127.0.0.1", port), 10)
        s.settimeout(20)
        s.sendall(_get("/json", key))
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            data += s.recv(65536)
        # Then nothing: the gateway closes the idle connection itself.
        rest = s.recv(65536)
        s.close()
        return data, rest

    try:
        data, rest = await threads.deferToThread(idle)
        sessions = list(g.gateway.sessions.values())
    finally:
        await g.stop()
    assert data.startswith(b"HTTP/1.1 200") and rest == b""
    assert sessions == []


@pytest_twisted.ensureDeferred
async def test_backend_connections_are_reused_across_requests(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    seen = []

    def many():
        for i in range(3):
            out, _ = _exchange(g.port("web"), _get(f"/echo/{i}", key) + _get("/json", key), 2,
                               [b"GET", b"GET"])
            seen.extend(r[0] for r in out)

    try:
        await threads.deferToThread(many)
        [factory] = {id(f): f for f in _relayFactories(g)}.values()
        pool = next(iter(factory.pools.values()))
        idle = len(pool._idle)
    finally:
        await g.stop()
    assert seen == [200] * 6
    # Six requests, one at a time: one backend connection carried them all.
    assert idle == 1


def _relayFactories(g):
    from sealgate.protocols.http._relay import RelayFactory

    return [p.factory for p in g.service.ports.values() if isinstance(p.factory, RelayFactory)]


@pytest_twisted.ensureDeferred
async def test_bare_lf_in_a_header_gets_400_and_never_reaches_the_backend(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend)
    smuggle = (f"POST /echo/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
               "X-A: 1\nTransfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n"
               "0\r\n\r\nDELETE /echo/b HTTP/1.1\r\nHost: gw\r\n\r\n").encode()
    try:
        out, closed = await threads.deferToThread(_exchange, g.port("web"), smuggle, 1, [b"POST"])
    finally:
        await g.stop()
    assert [r[0] for r in out] == [400] and closed
    assert json.loads(out[0][2])["status"] == 400


@pytest_twisted.ensureDeferred
async def test_a_client_stalling_inside_its_upload_is_closed_after_the_idle_timeout(tmp_path, http_backend):
    g, key = await _start(tmp_path, http_backend, extra_options='idle_timeout = "1s"')
    port = g.port("web")

    def stall():
        s = socket.create_connection(("127.0.0.1", port), 10)
        s.settimeout(20)
        s.sendall(_get("/upload", key, "POST", extra="Content-Length: 10\r\n") + b"abc")
        rest = s.recv(65536)
        s.close()
        return rest

    try:
        rest = await threads.deferToThread(stall)
    finally:
        await g.stop()
    assert rest == b""


class _TrailingJunkBackend:
    """A backend answering every request with a 204 followed by stray bytes in the same write."""

    def __init__(self):
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        owner = self
        self.connections = 0

        class Answer(Protocol):
            def connectionMade(self):
                owner.connections += 1
                self.buf = b""

            def dataReceived(self, data):
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    _head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                    self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\nJUNK")

        self.port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
        self.endpoint = f"tcp:127.0.0.1:{self.port.getHost().port}"


@pytest_twisted.ensureDeferred
async def test_bytes_after_a_bodiless_response_head_spend_the_backend_connection(tmp_path):
    backend = _TrailingJunkBackend()
    g, key = await _start(tmp_path, backend)
    try:
        out, closed = await threads.deferToThread(
            _exchange, g.port("web"), _get("/a", key) + _get("/b", key), 2, [b"GET", b"GET"])
    finally:
        await g.stop()
        await backend.port.stopListening()
    assert [(r[0], r[2]) for r in out] == [(204, b""), (204, b"")] and not closed
    # The stray bytes belong to no response: the connection is not reused.
    assert backend.connections == 2
