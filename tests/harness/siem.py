"""Receivers a SIEM would run: RFC 5424 syslog over TCP (octet counting) and a signed-JSON webhook, in threads."""

import http.server
import json
import re
import socket
import socketserver
import threading
import time

_HEAD = re.compile(rb"^<(\d+)>1 (\S+) (\S+) sealgate (\d+) (\S+) \[sealgate@32473 index=\"(\d+)\"")


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


class SyslogReceiver:
    """Parses RFC 6587 octet-counted RFC 5424 messages; C{messages} is (index, msgid, json)."""

    def __init__(self, port: int = 0):
        self.port = port
        self.messages: list[tuple[int, str, dict]] = []
        self.raw: list[bytes] = []
        self._server = None
        self._conns: list[socket.socket] = []

    def start(self) -> "SyslogReceiver":
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                receiver._conns.append(self.request)
                buf = b""
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    buf += data
                    while b" " in buf:
                        length, rest = buf.split(b" ", 1)
                        if len(rest) < int(length):
                            break
                        message, buf = rest[: int(length)], rest[int(length):]
                        receiver._got(message)

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _got(self, message: bytes) -> None:
        self.raw.append(message)
        m = _HEAD.match(message)
        assert m, message[:200]
        body = json.loads(message.split(b"] \xef\xbb\xbf", 1)[1])
        self.messages.append((int(m.group(6)), m.group(5).decode(), body))

    def stop(self) -> None:
        """Stop listening and drop every open connection (a receiver restart)."""
        self._server.shutdown()
        self._server.server_close()
        # Connections the handler threads still hold: reset them, so the
        # sender sees the loss the way a crashed receiver shows it.
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conns.clear()

    def indices(self) -> list[int]:
        return [i for i, _, _ in self.messages]


class WebhookReceiver:
    """Records signed event batches; answers 500 to the first C{failFirst} POSTs."""

    def __init__(self, failFirst: int = 0):
        self.failFirst = failFirst
        self.batches: list[tuple[dict, dict]] = []
        self.attempts = 0

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failFirst:
                    self.send_response(500)
                else:
                    receiver.batches.append((dict(self.headers.items()), json.loads(body)))
                    receiver.bodies.append(body)
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.bodies: list[bytes] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/events"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def indices(self) -> list[int]:
        return [e["index"] for _, b in self.batches for e in b["events"]]


def waitFor(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
