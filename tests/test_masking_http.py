"""HTTP bodies through a real gateway and curl: every text type, charsets, multipart, sniffing,
unknown_content, and a compressed bomb that fails closed with a 502 problem."""

import codecs
import gzip
import json
import subprocess

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import resource, server

from sealgate.recording.reader import StoreReader
from tests.test_http_proxy import _start

CARD = "4111111111111111"
MASKED = "************1111"

_BOUNDARY = "b0und4ry"
_MULTIPART = (f"--{_BOUNDARY}\r\nContent-Type: text/csv\r\n\r\nid,card\r\n1,{CARD}\r\n"
              f"--{_BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{\"c\": \"{CARD}\"}}\r\n"
              f"--{_BOUNDARY}--\r\n").encode()

#: path -> (Content-Type or None, Content-Encoding or None, body)
BODIES = {
    b"yaml": ("application/yaml", None, f"card: {CARD}\n".encode()),
    b"csv-gzip": ("text/csv", "gzip", gzip.compress(f"a,{CARD}\n".encode(), mtime=0)),
    b"sql": ("application/sql", None, f"INSERT INTO t VALUES ('{CARD}');\n".encode()),
    b"jsonl": ("application/x-ndjson", None, f'{{"c": "{CARD}"}}\n{{"c": 1}}\n'.encode()),
    b"untyped": (None, None, f"card {CARD}\n".encode()),
    b"utf16": ("text/plain; charset=utf-16", None, codecs.BOM_UTF16_LE + f"card {CARD}".encode("utf-16-le")),
    b"multipart": (f"multipart/mixed; boundary={_BOUNDARY}", None, _MULTIPART),
    b"octet-text": ("application/octet-stream", None, f"card {CARD}\n".encode()),
    b"png": ("image/png", None, b"\x89PNG\r\n\x1a\n\x00\x00" + CARD.encode()),
    b"bomb": ("application/json", "gzip", gzip.compress(b" " * (40 << 20), mtime=0)),
    b"json": ("application/json", None, json.dumps({"card": CARD}).encode()),
}


class _Bodies(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        ctype, coding, body = BODIES[request.path.strip(b"/")]
        request.defaultContentType = None
        if ctype is not None:
            request.setHeader(b"content-type", ctype.encode())
        if coding is not None:
            request.setHeader(b"content-encoding", coding.encode())
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


class _Backend:
    def __init__(self, port):
        self.endpoint = f"tcp:host=127.0.0.1:port={port}"


def _curl(port: int, key: str, paths: list[bytes]) -> subprocess.CompletedProcess:
    """One curl, one connection, every path in turn: each response's status, headers and raw body."""
    argv = ["curl", "-sS", "--raw", "--max-time", "60", "-H", f"Authorization: Bearer {key}"]
    for i, p in enumerate(paths):
        if i:
            argv.append("--next")
            argv += ["-H", f"Authorization: Bearer {key}", "--raw"]
        argv += ["-D", "-", "-o", "-", "-w", "\n<<%{http_code}>>\n", f"http://127.0.0.1:{port}/{p.decode()}"]
    return subprocess.run(argv, capture_output=True, timeout=120)


@pytest_twisted.ensureDeferred
async def test_every_body_kind_is_masked_or_refused_through_the_gateway(tmp_path):
    site = reactor.listenTCP(0, server.Site(_Bodies()), interface="127.0.0.1")
    g, key = await _start(tmp_path, _Backend(site.getHost().port),
                          extra_options="max_masked_body = 16777216")
    try:
        paths = list(BODIES)
        r = await threads.deferToThread(_curl, g.port("web"), key, paths)
    finally:
        await g.stop()
        await site.stopListening()
    out = r.stdout
    codes = [line[2:5] for line in out.split(b"\n") if line.startswith(b"<<")]
    assert codes == [b"502" if p in (b"png", b"bomb") else b"200" for p in paths], codes
    assert CARD.encode() not in out and CARD.encode("utf-16-le") not in out, out[:2000]
    assert MASKED.encode() in out and MASKED.encode("utf-16-le") in out
    assert b"************1111\n" in out  # the gzip csv came back decoded, masked
    assert out.count(b"Response cannot be masked") == 2, out   # the png and the bomb
    assert b"Content-Length: 154\r\n" in out   # the multipart body, masked whole, framed once
    with StoreReader(g.stateDir) as reader:
        for s in reader.sessions():
            for f in reader.frames(s["id"]):
                if f.direction == 1:
                    assert CARD.encode() not in (f.data or b"")
