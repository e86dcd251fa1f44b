"""An HTTP(S) backend app (stdlib only, run in a subprocess) with endpoints for proxy tests.

Endpoints (any path not listed is 404):
  /echo[/...]        any method: JSON {method, path, query, headers, body, body_length, body_sha256}
  /json              JSON with a customer's e-mail and card number
  /text              text/plain with an e-mail and a card number
  /gzip              the /json document gzip-compressed (Content-Encoding: gzip)
  /stream?bytes=N    N bytes, chunked; X-Content-SHA256 is their digest; &chunk=M sets chunk size
  /upload            POST/PUT: JSON {bytes, sha256} of the (plain or chunked) request body
  /status/<code>     that status, body "status <code>"
  /ws                WebSocket echo (text and binary; ping -> pong; close -> close)
"""

import argparse
import base64
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CUSTOMER = {"name": "Ada Lovelace", "email": "ada@example.com", "card": "4111 1111 1111 1111"}
JSON_DOC = {"customer": CUSTOMER, "orders": [{"id": 1, "total": 42.5, "note": "no card here"}]}
TEXT_DOC = ("Customer: Ada Lovelace\nEmail: ada@example.com\n"
            "Card: 4111 1111 1111 1111\nThanks for your order.\n")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def streamBytes(n: int) -> bytes:
    """The deterministic payload /stream?bytes=n sends."""
    pattern = bytes(range(256))
    return (pattern * (n // 256 + 1))[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sealgate-test-backend/1"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    # -- helpers -------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, doc, code: int = 200, headers=()):
        self._send(code, json.dumps(doc).encode(), "application/json", headers)

    # -- dispatch ------------------------------------------------------------

    def _handle(self):
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        if path == "/echo" or path.startswith("/echo/"):
            body = self._body()
            doc = {"method": self.command, "path": path, "query": url.query,
                   "headers": [[k, v] for k, v in self.headers.items()],
                   "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
            try:
                doc["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                doc["body_b64"] = base64.b64encode(body).decode()
            return self._json(doc)
        self._body()
        if path == "/json":
            return self._json(JSON_DOC)
        if path == "/text":
            return self._send(200, TEXT_DOC.encode(), "text/plain; charset=utf-8")
        if path == "/gzip":
            return self._send(200, gzip.compress(json.dumps(JSON_DOC).encode()),
                              "application/json", [("Content-Encoding", "gzip")])
        if path == "/stream":
            return self._stream(int(query.get("bytes", ["1048576"])[0]),
                                int(query.get("chunk", ["16384"])[0]))
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            return self._send(code, f"status {code}\n".encode(), "text/plain")
        if path == "/ws" and self.headers.get("upgrade", "").lower() == "websocket":
            return self._websocket()
        return self._send(404, b"not found\n", "text/plain")

    def _stream(self, n: int, chunk: int):
        data = streamBytes(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Content-SHA256", hashlib.sha256(data).hexdigest())
        self.end_headers()
        for i in range(0, n, max(chunk, 1)):
            part = data[i:i + chunk]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def _upload(self):
        body = self._body()
        return self._json({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    # -- WebSocket (RFC 6455, just enough for an echo) -----------------------

    def _websocket(self):
        key = self.headers.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            frame = self._wsRead()
            if frame is None:
                break
            opcode, payload = frame
            if opcode == 0x8:
                self._wsWrite(0x8, payload[:2])
                break
            if opcode == 0x9:
                self._wsWrite(0xA, payload)
            elif opcode in (0x1, 0x2):
                self._wsWrite(opcode, payload)
        self.close_connection = True

    def _wsRead(self):
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        opcode = head[0] & 0x0F
        masked = head[1] & 0x80
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.rfile.read(8))[0]
        mask = self.rfile.read(4) if masked else b"\0\0\0\0"
        data = self.rfile.read(length)
        return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def _wsWrite(self, opcode: int, payload: bytes):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def do_POST(self):
        if urlsplit(self.path).path == "/upload":
            return self._upload()
        return self._handle()

    do_PUT = do_POST
    do_GET = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _handle


class HTTPBackend:
    """
    Runs this module as a subprocess on 127.0.0.1 (port picked by the OS).

    @ivar url: C{http://127.0.0.1:PORT}.
    @ivar endpoint: the Twisted client endpoint string for a connection's C{backend}.
    """

    host = "127.0.0.1"

    def __init__(self, tls: bool = False):
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.tlsEnabled = tls
        self.tls = None
        self._dir: str | None = None

    def start(self) -> "HTTPBackend":
        argv = [sys.executable, os.path.abspath(__file__), "--port", "0"]
        if self.tlsEnabled:
            import tempfile
            from pathlib import Path

            from tests.harness.certs import makeServerCert

            self._dir = tempfile.mkdtemp(prefix="sealgate-https-")
            self.tls = makeServerCert(Path(self._dir))
            argv += ["--cert", str(self.tls.certFile), "--key", str(self.tls.keyFile)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        if not line.startswith("LISTENING "):
            self.stop()
            raise RuntimeError(f"HTTP backend did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.tlsEnabled else 'http'}://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        if self.tlsEnabled:
            return f"tls:host={self.host}:port={self.port}:trustRoots={self.tls.caFile.parent}"
        return f"tcp:host={self.host}:port={self.port}"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        process.stdout.close()
        if self._dir:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.cert:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
