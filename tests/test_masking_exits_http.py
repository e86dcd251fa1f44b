"""
Every HTTP exit path of docs/masking.md through a real twistd gateway and a
scripted real backend, with curl, http.client and the websockets library:
the raw value (a card number, an e-mail) reaches neither the client's raw
wire bytes (read through a TCP tap) nor the sealed log, and the protocol
stays valid (statuses, one framing per response, kept-alive connections
reused, WebSocket messages read by a strict client).
"""

import codecs
import gzip
import http.client
import json
import subprocess
import time
import zlib

import brotli
import pytest

from sealgate.flow import TO_CLIENT
from sealgate.identity.apikeys import APIKeyStore
from sealgate.recording.reader import StoreReader
from tests.harness.scripted import ScriptedBackend, Tap, WebSocketScript, wsFrame
from tests.harness.twistd import GatewayProcess

CARD = "4111 1111 1111 1111"
CARD_PLAIN = "4111111111111111"
EMAIL = "ada@example.com"
MASKED_CARD = b"**** **** **** 1111"
MASKED_PLAIN = b"************1111"
MASKED_EMAIL = b"***@example.com"
VALUE = f"card {CARD} mail {EMAIL} card2 {CARD_PLAIN}"
#: Every spelling of the raw values that must not leave: plain and in the wide charsets.
RAW = [v.encode(c) for v in (CARD, CARD_PLAIN, EMAIL)
       for c in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")]


def _resp(status: str, headers: list[tuple[str, str]], body: bytes = b"", head_only=False) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{n}: {v}" for n, v in headers]
    if not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _chunked(status: str, headers, pieces: list[bytes], trailers: list[tuple[str, str]] = ()) -> bytes:
    head = _resp(status, [*headers, ("Transfer-Encoding", "chunked")])
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    tail = b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in trailers) + b"\r\n"
    return head + body + tail


def _body(ctype: str | None, body: bytes, coding: str | None = None):
    headers = [("Content-Type", ctype)] if ctype else []
    if coding:
        headers.append(("Content-Encoding", coding))
    return lambda method: _resp("200 OK", headers, body, head_only=method == b"HEAD")


_DOC = json.dumps({"customer": {"card": CARD, "email": EMAIL}, "id": 7}).encode()
_TEXT = f"Customer card: {CARD}\nEmail: {EMAIL}\nPlain: {CARD_PLAIN}\n".encode()
_BOUNDARY = "xYz0b"
_MULTIPART = (f"--{_BOUNDARY}\r\nContent-Type: text/csv\r\n\r\nid,card\r\n1,{CARD}\r\n"
              f"--{_BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{\"mail\": \"{EMAIL}\"}}\r\n"
              f"--{_BOUNDARY}\r\nContent-Disposition: attachment; filename=\"{EMAIL}.txt\"\r\n\r\n"
              f"{VALUE}\r\n--{_BOUNDARY}--\r\n").encode()
_BIG = json.dumps([{"id": i, "card": CARD if i % 10 == 0 else "none", "mail": EMAIL}
                   for i in range(3000)]).encode()

#: What /c/poll answers in turn (a kept-alive client polling one resource): the same head
#: but for its length, the same document twice, a head that carries a value, clean documents
#: around them.  The relay's head, plan and body caches see each: none may pass a value.
_CLEAN = json.dumps({"id": 1, "note": "nothing here"}).encode()
_POLLS = [([], _CLEAN), ([], _DOC), ([], _DOC), ([("X-Customer", VALUE)], _DOC), ([], _CLEAN),
          ([], json.dumps({"customer": {"card": CARD, "email": EMAIL}, "id": 12345}).encode()), ([], _CLEAN)]
#: Which of L{_POLLS} each /c/poll answered, in order.
POLLED: list[int] = []


def _poll(method: bytes) -> bytes:
    POLLED.append(len(POLLED) % len(_POLLS))
    headers, body = _POLLS[POLLED[-1]]
    return _resp("200 OK", [("Content-Type", "application/json"), *headers], body)


ROUTES = {
    "/c/poll": _poll,
    # -- heads -----------------------------------------------------------------------
    "/h/custom": lambda m: _resp("200 OK", [("X-Customer", VALUE), ("Content-Type", "text/plain")], b"ok"),
    "/h/cookie": lambda m: _resp("200 OK", [("Set-Cookie", f"who={EMAIL}; Path=/"),
                                            ("Content-Type", "text/plain")], b"ok"),
    "/h/location": lambda m: _resp("302 Found", [("Location", f"/users/{EMAIL}/card/{CARD_PLAIN}")]),
    "/h/disposition": lambda m: _resp("200 OK", [("Content-Disposition", f'attachment; filename="{EMAIL}.csv"'),
                                                 ("Content-Type", "text/csv")], b"a,b\n"),
    "/h/head": lambda m: _resp("200 OK", [("X-Card", CARD), ("Content-Type", "application/json")],
                               _DOC, head_only=m == b"HEAD"),
    "/h/reason": lambda m: _resp(f"404 No user {EMAIL} with card {CARD}", [("Content-Type", "text/plain")], b"no"),
    "/h/early": lambda m: (b"HTTP/1.1 103 Early Hints for " + EMAIL.encode() + b"\r\nLink: </" + EMAIL.encode()
                           + b".css>; rel=preload\r\n\r\n" + _resp("200 OK", [("Content-Type", "text/plain")], b"hi")),
    "/h/trailers": lambda m: _chunked("200 OK", [("Content-Type", "text/plain"), ("Trailer", "X-Audit")],
                                      [b"line one\n", _TEXT], [("X-Audit", VALUE)]),
    # -- bodies ----------------------------------------------------------------------
    "/b/json": _body("application/json", _DOC),
    "/b/json-chunked": lambda m: _chunked("200 OK", [("Content-Type", "application/json")],
                                          [_DOC[:20], _DOC[20:45], _DOC[45:]]),
    "/b/json-chunked-gzip": lambda m: _chunked(
        "200 OK", [("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
        [gzip.compress(_DOC, mtime=0)]),
    "/b/json-big-chunked": lambda m: _chunked("200 OK", [("Content-Type", "application/json")],
                                              [_BIG[i:i + 8192] for i in range(0, len(_BIG), 8192)]),
    "/b/vnd-json": _body("application/vnd.api+json", _DOC),
    "/b/json-field": lambda m: _chunked("200 OK", [("Content-Type", "application/json")],
                                        [b'{"token": "', f'{EMAIL}", "n": 1}}'.encode()]),
    "/b/problem": lambda m: _resp("400 Bad Request", [("Content-Type", "application/problem+json")],
                                  json.dumps({"title": "bad", "detail": VALUE}).encode()),
    "/b/text": _body("text/plain; charset=utf-8", _TEXT),
    "/b/text-chunked": lambda m: _chunked("200 OK", [("Content-Type", "text/plain")],
                                          [_TEXT[:22], _TEXT[22:40], _TEXT[40:]]),
    "/b/html": _body("text/html", b"<p>" + _TEXT + b"</p>"),
    "/b/yaml": _body("application/yaml", f"card: {CARD}\nmail: {EMAIL}\n".encode()),
    "/b/csv": _body("text/csv", f"id,card,mail\n1,{CARD},{EMAIL}\n".encode()),
    "/b/sql": _body("application/sql", f"INSERT INTO t VALUES ('{CARD}', '{EMAIL}');\n".encode()),
    "/b/ndjson": _body("application/x-ndjson", f'{{"c": "{CARD}"}}\n{{"m": "{EMAIL}"}}\n'.encode()),
    "/b/jsonl": _body("application/jsonl", f'{{"c": "{CARD_PLAIN}"}}\n{{"m": "{EMAIL}"}}\n'.encode()),
    "/b/form": _body("application/x-www-form-urlencoded", f"card={CARD_PLAIN}&mail={EMAIL}".encode()),
    "/b/xml": _body("application/xml", f"<c><card>{CARD}</card><m>{EMAIL}</m></c>".encode()),
    "/b/utf16-bom": _body("text/plain; charset=utf-16", codecs.BOM_UTF16_BE + VALUE.encode("utf-16-be")),
    "/b/utf16-nobom": _body("text/plain; charset=utf-16", VALUE.encode("utf-16-le")),
    "/b/utf32": _body("text/plain; charset=utf-32", codecs.BOM_UTF32_LE + VALUE.encode("utf-32-le")),
    "/b/multipart": _body(f"multipart/mixed; boundary={_BOUNDARY}", _MULTIPART),
    "/b/untyped-text": _body(None, _TEXT),
    "/b/untyped-binary": _body(None, b"\x00\x01\x02\xff" + _TEXT),
    "/b/gzip": _body("application/json", gzip.compress(_DOC, mtime=0), "gzip"),
    "/b/br": _body("text/plain", brotli.compress(_TEXT), "br"),
    "/b/deflate": _body("text/csv", zlib.compress(f"1,{CARD},{EMAIL}\n".encode()), "deflate"),
    "/b/bomb": lambda m: _chunked("200 OK", [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
                                  [gzip.compress(b"A" * (24 << 20) + _TEXT, mtime=0)]),
    # -- WebSocket ---------------------------------------------------------------------
    "/ws/text": WebSocketScript(wsFrame(1, VALUE.encode()), b"X-Peer: " + EMAIL.encode() + b"\r\n"),
    "/ws/fragmented": WebSocketScript(wsFrame(1, b"card 4111 11", fin=False) + wsFrame(0, b"11 1111 ", fin=False)
                                      + wsFrame(9, b"mid") + wsFrame(0, b"1111 mail " + EMAIL.encode())),
    "/ws/close": WebSocketScript(wsFrame(8, b"\x03\xe8bye " + EMAIL.encode())),
    "/ws/ping": WebSocketScript(wsFrame(9, CARD.encode()) + wsFrame(1, b"after the ping")),
    "/ws/binary-text": WebSocketScript(wsFrame(2, VALUE.encode())),
    "/ws/binary": WebSocketScript(wsFrame(2, b"\x00\x01\x02" + CARD.encode())),
    "/ws/too-big": WebSocketScript(wsFrame(1, b"x" * (2 << 20))),
}

CONFIG = """
[gateway]
admin = "tcp:0:interface=127.0.0.1"
state_dir = "{state}"

[[roles]]
name = "eng"
groups = ["eng"]
connections = ["*"]

[[connections]]
name = "web"
protocol = "http"
listen = "tcp:0:interface=127.0.0.1"
backend = "{backend}"
[connections.options]
max_masked_body = 1048576
secret_headers = ["set-cookie"]

[[rules]]
name = "no-delete"
action = "deny"
methods = ["DELETE"]
reason = "deleting through the gateway is not allowed"

[masking]
detectors = ["credit_card", "email"]
json_fields = ["token"]
"""


class Env:
    def __init__(self, gw, tap, key):
        self.gw, self.tap, self.key = gw, tap, key
        self.state = gw.directory / "state"

    def wire(self, mark: int) -> bytes:
        """What every client connection since C{mark} read, once each is closed."""
        conns = self.tap.since(mark)
        assert conns, "the client never connected"
        for c in conns:
            assert c.closed.wait(30), "the connection stayed open"
        return b"".join(bytes(c.toClient) for c in conns)

    def sealed(self, mark: int) -> bytes:
        """
        What the sealed log holds of the sessions of the connections since
        C{mark}, once closed: every frame the client was sent and every log
        leaf (audit events).  The client's own frames stay recorded raw as
        evidence (docs/masking.md, "The sealed log").
        """
        peers = {c.gatewayPeer for c in self.tap.since(mark)}
        deadline = time.monotonic() + 30
        while True:
            with StoreReader(self.state) as reader:
                mine = [s for s in reader.sessions() if s["info"].get("client") in peers]
                if mine and all(s["state"] != "open" for s in mine):
                    out = b""
                    for s in mine:
                        out += b"".join(f.data or b"" for f in reader.frames(s["id"])
                                        if f.direction == TO_CLIENT)
                        out += repr(reader.events(s["id"])).encode()
                    return out
            assert time.monotonic() < deadline, f"no closed session for {peers}"
            time.sleep(0.05)

    def clean(self, mark: int) -> bytes:
        """The raw values reach neither the wire nor the sealed log; returns the wire bytes."""
        wire = self.wire(mark)
        sealed = self.sealed(mark)
        for raw in RAW:
            assert raw not in wire, (raw, wire[:3000])
            assert raw not in sealed, (raw, sealed[:3000])
        return wire


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    directory = tmp_path_factory.mktemp("exits-http")
    backend = ScriptedBackend(ROUTES)
    gw = GatewayProcess(directory, CONFIG.format(state=directory / "state", backend=backend.endpoint))
    (directory / "state").mkdir()
    key = APIKeyStore(directory / "state" / "identity.sqlite").create("ci-bot", ["eng"], None)
    gw.start()
    tap = Tap(gw.port("web"))
    try:
        yield Env(gw, tap, key)
    finally:
        tap.stop()
        gw.stop()
        backend.stop()


def curl(env: Env, *args: str, paths=("",)) -> tuple[Env, int, subprocess.CompletedProcess]:
    mark = len(env.tap.connections)
    argv = ["curl", "-sS", "--raw", "-i", "--max-time", "30", "-H", f"Authorization: Bearer {env.key}", *args]
    for i, p in enumerate(paths):
        if i:
            argv += ["--next", "-sS", "--raw", "-i", "-H", f"Authorization: Bearer {env.key}", *args]
        argv.append(f"http://127.0.0.1:{env.tap.port}{p}")
    r = subprocess.run(argv, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return env, mark, r


def responses(wire: bytes, methods: list[bytes]) -> list[tuple[bytes, bytes]]:
    """
    The responses in a connection's raw bytes, as (head, body), read
    strictly by their framing: never both Content-Length and chunked, each
    body ends exactly where the next response starts, nothing left over.
    """
    out, pos, left = [], 0, list(methods)
    while pos < len(wire):
        end = wire.index(b"\r\n\r\n", pos)
        head, pos = wire[pos:end], end + 4
        status = int(head.split(b" ", 2)[1])
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            assert name.lower() not in fields or name.lower() == b"link", head
            fields[name.lower()] = value.strip()
        if 100 <= status < 200 and status != 101:
            out.append((head, b""))
            continue
        method = left.pop(0)
        chunked = fields.get(b"transfer-encoding", b"").lower() == b"chunked"
        assert not (chunked and b"content-length" in fields), head
        if method == b"HEAD" or status in (204, 304) or status == 101:
            body = b""
        elif chunked:
            parts = []
            while True:
                nl = wire.index(b"\r\n", pos)
                size = int(wire[pos:nl].split(b";")[0], 16)
                pos = nl + 2
                if not size:
                    break
                parts.append(wire[pos:pos + size])
                assert wire[pos + size:pos + size + 2] == b"\r\n"
                pos += size + 2
            trailer_end = wire.index(b"\r\n", pos)
            while trailer_end != pos:
                pos = trailer_end + 2
                trailer_end = wire.index(b"\r\n", pos)
            pos += 2
            body = b"".join(parts)
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            body, pos = wire[pos:pos + n], pos + n
            assert len(body) == n, head
        else:
            body, pos = wire[pos:], len(wire)
        out.append((head, body))
    assert not left, f"{len(left)} responses missing"
    return out


# -- heads, through curl (two requests on one connection) ---------------------------------

HEADER_CASES = {
    "/h/custom": (b"200", [b"X-Customer: card " + MASKED_CARD]),
    "/h/cookie": (b"200", [b"Set-Cookie: who=" + MASKED_EMAIL]),
    "/h/location": (b"302", [b"Location: /users/" + MASKED_EMAIL + b"/card/" + MASKED_PLAIN]),
    "/h/disposition": (b"200", [b'Content-Disposition: attachment; filename="' + MASKED_EMAIL + b'.csv"']),
    "/h/reason": (b"404", [b"404 No user " + MASKED_EMAIL + b" with card " + MASKED_CARD + b"\r\n"]),
    "/h/trailers": (b"200", [b"X-Audit: card " + MASKED_CARD, b"Customer card: " + MASKED_CARD]),
}


@pytest.mark.parametrize("path", list(HEADER_CASES))
def test_header_values_and_reason_phrases_are_masked_and_the_connection_reused(env, path):
    status, expected = HEADER_CASES[path]
    env, mark, r = curl(env, "-w", "<%{http_code} %{num_connects}>", paths=(path, path))
    wire = env.clean(mark)
    assert len(env.tap.since(mark)) == 1, "curl reconnected: the first response left the connection unusable"
    got = responses(wire, [b"GET", b"GET"])
    assert [h.split(b" ")[1] for h, _ in got] == [status, status]
    for piece in expected:
        assert wire.count(piece) == 2, (piece, wire)
    assert r.stdout.count(b"<" + status) == 2


def test_head_response_headers_are_masked_then_a_get_on_the_same_connection(env):
    mark = len(env.tap.connections)
    argv = ["curl", "-sS", "-i", "--max-time", "30", "-H", f"Authorization: Bearer {env.key}", "-I",
            f"http://127.0.0.1:{env.tap.port}/h/head", "--next", "-sS", "--raw", "-i",
            "-H", f"Authorization: Bearer {env.key}", f"http://127.0.0.1:{env.tap.port}/h/head"]
    r = subprocess.run(argv, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wire = env.clean(mark)
    assert len(env.tap.since(mark)) == 1
    (h1, b1), (h2, b2) = responses(wire, [b"HEAD", b"GET"])
    assert b"X-Card: " + MASKED_CARD in h1 and b"X-Card: " + MASKED_CARD in h2
    assert b1 == b"" and MASKED_CARD in b2 and json.loads(b2)["customer"]["email"] == MASKED_EMAIL.decode()


def test_early_hints_are_relayed_masked_before_the_final_response(env):
    env, mark, r = curl(env, paths=("/h/early",))
    wire = env.clean(mark)
    (hint, _), (final, body) = responses(wire, [b"GET"])
    assert hint.startswith(b"HTTP/1.1 103 Early Hints for " + MASKED_EMAIL)
    assert b"Link: </" + MASKED_EMAIL + b".css>; rel=preload" in hint
    assert final.startswith(b"HTTP/1.1 200") and body == b"hi"


def test_a_gateway_problem_echoing_the_target_is_masked(env):
    path = f"/users/{CARD_PLAIN}?mail={EMAIL}"
    env, mark, r = curl(env, "-X", "DELETE", paths=(path,))
    wire = env.clean(mark)
    [(head, body)] = responses(wire, [b"DELETE"])
    assert head.startswith(b"HTTP/1.1 403")
    problem = json.loads(body)
    assert problem["instance"] == f"/users/{MASKED_PLAIN.decode()}?mail={MASKED_EMAIL.decode()}"


# -- bodies, through http.client (two requests on one connection) ----------------------------

def _u16(b: bytes, enc: str) -> bytes:
    return b.decode().encode(enc)


BODY_CASES = {
    "/b/json": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/json-chunked": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/json-chunked-gzip": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/json-big-chunked": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/vnd-json": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/json-field": (200, [b'{"token": "********", "n": 1}']),   # redacted: another length
    "/b/problem": (400, [MASKED_CARD, MASKED_EMAIL, MASKED_PLAIN]),
    "/b/text": (200, [MASKED_CARD, MASKED_EMAIL, MASKED_PLAIN]),
    "/b/text-chunked": (200, [MASKED_CARD, MASKED_EMAIL, MASKED_PLAIN]),
    "/b/html": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/yaml": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/csv": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/sql": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/ndjson": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/jsonl": (200, [MASKED_PLAIN, MASKED_EMAIL]),
    "/b/form": (200, [MASKED_PLAIN, MASKED_EMAIL]),
    "/b/xml": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/utf16-bom": (200, [_u16(MASKED_CARD, "utf-16-be"), _u16(MASKED_EMAIL, "utf-16-be")]),
    "/b/utf16-nobom": (200, [_u16(MASKED_CARD, "utf-16-le"), _u16(MASKED_EMAIL, "utf-16-le")]),
    "/b/utf32": (200, [_u16(MASKED_CARD, "utf-32-le"), _u16(MASKED_EMAIL, "utf-32-le")]),
    "/b/multipart": (200, [MASKED_CARD, MASKED_EMAIL, b'filename="' + MASKED_EMAIL + b'.txt"']),
    "/b/untyped-text": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/untyped-binary": (502, [b"Response cannot be masked"]),
    "/b/gzip": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/br": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/deflate": (200, [MASKED_CARD, MASKED_EMAIL]),
    "/b/bomb": (502, [b"Response cannot be masked"]),
}


@pytest.mark.parametrize("path", list(BODY_CASES))
def test_bodies_are_masked_framed_once_and_the_connection_reused(env, path):
    status, expected = BODY_CASES[path]
    mark = len(env.tap.connections)
    conn = http.client.HTTPConnection("127.0.0.1", env.tap.port, timeout=30)
    got = []
    try:
        for p in (path, "/b/json"):
            conn.request("GET", p, headers={"Authorization": f"Bearer {env.key}"})
            resp = conn.getresponse()
            got.append((resp.status, resp.getheaders(), resp.read()))
    finally:
        conn.close()
    wire = env.clean(mark)
    assert len(env.tap.since(mark)) == 1, "http.client had to reconnect"
    (s1, h1, b1), (s2, _h2, b2) = got
    assert (s1, s2) == (status, 200)
    for piece in expected:
        assert piece in b1, (piece, b1[:2000])
    if status == 200:
        assert not any(n.lower() == "content-encoding" for n, _ in h1), h1
    if status == 502:
        # Refused before a byte of it went out: a problem, and the connection lives on.
        assert ("Content-Type", "application/problem+json") in h1, h1
    assert json.loads(b2)["customer"]["card"] == MASKED_CARD.decode()
    raw = responses(wire, [b"GET", b"GET"])
    assert [body for _, body in raw] == [b1, b2]


# -- WebSocket, through the websockets library --------------------------------------------------

def _ws(env, path: str, talk):
    from websockets.sync.client import connect

    mark = len(env.tap.connections)
    with connect(f"ws://127.0.0.1:{env.tap.port}{path}", additional_headers={
            "Authorization": f"Bearer {env.key}"}, open_timeout=10, max_size=None) as ws:
        result = talk(ws)
    return env.clean(mark), result


def _closed(ws):
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as e:
        return e.rcvd


def test_websocket_text_message_and_upgrade_headers_are_masked(env):
    wire, got = _ws(env, "/ws/text", lambda ws: (ws.response.headers["X-Peer"], ws.recv(timeout=10)))
    assert got == (MASKED_EMAIL.decode(), VALUE.replace(CARD, MASKED_CARD.decode()).replace(
        EMAIL, MASKED_EMAIL.decode()).replace(CARD_PLAIN, MASKED_PLAIN.decode()))


def test_websocket_fragmented_text_is_joined_masked_and_sent_whole(env):
    wire, got = _ws(env, "/ws/fragmented", lambda ws: ws.recv(timeout=10))
    assert got == f"card {MASKED_CARD.decode()} mail {MASKED_EMAIL.decode()}"
    assert b"\x89\x03mid" in wire   # the ping between the fragments went on at once


def test_websocket_close_reason_is_masked(env):
    wire, rcvd = _ws(env, "/ws/close", _closed)
    assert rcvd.code == 1000 and rcvd.reason == f"bye {MASKED_EMAIL.decode()}"


def test_websocket_ping_payload_is_masked(env):
    wire, got = _ws(env, "/ws/ping", lambda ws: ws.recv(timeout=10))
    assert got == "after the ping"
    assert b"\x89\x13" + MASKED_CARD in wire


def test_websocket_binary_that_reads_as_text_is_masked_as_text(env):
    wire, got = _ws(env, "/ws/binary-text", lambda ws: ws.recv(timeout=10))
    assert isinstance(got, bytes) and MASKED_CARD in got and MASKED_EMAIL in got


def test_websocket_binary_that_cannot_be_vetted_closes_1008_and_is_sealed(env):
    mark = len(env.tap.connections)
    wire, rcvd = _ws(env, "/ws/binary", _closed)
    assert rcvd.code == 1008 and "refused" in rcvd.reason
    assert b"websocket_refused" in env.sealed(mark)


def test_websocket_message_over_the_bound_closes_1009(env):
    wire, rcvd = _ws(env, "/ws/too-big", _closed)
    assert rcvd.code == 1009
    assert len(wire) < 1 << 20


@pytest.mark.parametrize("path,expected", [
    ("/b/json-chunked", MASKED_CARD), ("/b/json-field", b'"********"'), ("/b/text-chunked", MASKED_CARD),
    ("/h/trailers", MASKED_CARD),
])
def test_an_http10_client_gets_masked_bodies_without_chunking(env, path, expected):
    env, mark, r = curl(env, "--http1.0", paths=(path,))
    wire = env.clean(mark)
    [(head, body)] = responses(wire, [b"GET"])
    assert b"Transfer-Encoding" not in head and expected in body
    if b"json" in head:
        assert b"\r\nContent-Length: %d\r\n" % len(body) in head + b"\r\n"
    else:
        assert b"Connection: close" in head   # close-delimited


def test_a_client_polling_one_resource_gets_every_answer_masked_as_it_is(env):
    """
    The same request head again and again on one connection (the relay
    parses it once), answers whose heads differ only in length or in a
    header that carries a value, the same document twice: each answer is
    masked as itself, clean ones pass byte for byte (tests/test_http_caches.py
    proves the relay's caches equal to no caches; this is through a real client).
    """
    mark, first = len(env.tap.connections), len(POLLED)
    conn = http.client.HTTPConnection("127.0.0.1", env.tap.port, timeout=30)
    got = []
    try:
        for _ in range(2 * len(_POLLS)):
            conn.request("GET", "/c/poll", headers={"Authorization": f"Bearer {env.key}"})
            resp = conn.getresponse()
            got.append((resp.status, resp.getheader("X-Customer"), resp.read()))
    finally:
        conn.close()
    env.clean(mark)
    assert len(env.tap.since(mark)) == 1, "http.client had to reconnect"
    served = POLLED[first:]
    assert len(served) == len(got) and set(served) == set(range(len(_POLLS)))
    for i, (status, customer, body) in zip(served, got, strict=True):
        headers, sent = _POLLS[i]
        assert status == 200
        if sent == _CLEAN:
            assert body == _CLEAN
        else:
            doc = json.loads(body)
            assert doc["customer"] == {"card": MASKED_CARD.decode(), "email": MASKED_EMAIL.decode()}
            assert doc["id"] == json.loads(sent)["id"]
        assert customer == (None if not headers else "card " + MASKED_CARD.decode() + " mail "
                            + MASKED_EMAIL.decode() + " card2 " + MASKED_PLAIN.decode())
