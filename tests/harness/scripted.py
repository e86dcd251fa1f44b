"""A scripted raw HTTP/1.1 backend (exact response bytes per path, WebSocket scripts) and a TCP tap that keeps what a client read."""

import base64
import hashlib
import socket
import struct
import threading
import time

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def wsFrame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One unmasked (server) frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", b0, n) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


class WebSocketScript:
    """A route answering an upgrade with 101 (plus C{headers}), then sending C{frames}, then echoing until a close."""

    def __init__(self, frames: bytes, headers: bytes = b""):
        self.frames = frames
        self.headers = headers

    def run(self, sock: socket.socket, head: dict) -> None:
        key = head.get(b"sec-websocket-key", b"")
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n" + self.headers + b"\r\n")
        sock.sendall(self.frames)
        reader = sock.makefile("rb")
        while True:
            first = reader.read(2)
            if len(first) < 2:
                return
            opcode, n = first[0] & 0x0F, first[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", reader.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", reader.read(8))[0]
            mask = reader.read(4) if first[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(reader.read(n)))
            if opcode == 0x8:
                sock.sendall(wsFrame(0x8, payload[:2]))
                return
            if opcode in (0x1, 0x2):
                sock.sendall(wsFrame(opcode, payload))


class ScriptedBackend:
    """
    Answers each request by its path (query ignored) with the route's
    bytes, exactly: C{routes[path](method)} returns the whole response, or
    a L{WebSocketScript} takes the connection over.  Keeps connections
    alive until a response says C{Connection: close}.
    """

    def __init__(self, routes: dict):
        self.routes = routes
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"tcp:host=127.0.0.1:port={self.port}"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    buf += piece
                raw, buf = buf.split(b"\r\n\r\n", 1)
                lines = raw.split(b"\r\n")
                method, target, _ = lines[0].split(b" ", 2)
                head = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    head[name.strip().lower()] = value.strip()
                length = int(head.get(b"content-length", b"0"))
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                route = self.routes.get(target.split(b"?")[0].decode())
                if isinstance(route, WebSocketScript):
                    route.run(conn, head)
                    return
                if route is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                out = route(method)
                conn.sendall(out)
                if b"\r\nconnection: close\r\n" in out.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                    return
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self._threads:
            t.join(10)


class TapConnection:
    """One client connection through the tap: C{toClient} is every byte the client was sent."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        #: The tap's own port towards the gateway: the "client" the gateway records.
        self.gatewayPeer = "127.0.0.1:%d" % upstream.getsockname()[1]
        self.toClient = bytearray()
        self.closed = threading.Event()


class Tap:
    """
    A TCP relay in front of the gateway: clients connect to C{port}; each
    connection's bytes from the gateway are kept as they passed, so a test
    reads the raw wire bytes a stock client (curl, http.client, websockets)
    got, whatever the client shows of them.
    """

    def __init__(self, targetPort: int):
        self.targetPort = targetPort
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections: list[TapConnection] = []
        self._threads: list[threading.Thread] = []
        self._taken = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.targetPort), 10)
            tc = TapConnection(client, upstream)
            self.connections.append(tc)
            for args in ((client, upstream, None), (upstream, client, tc)):
                t = threading.Thread(target=self._pump, args=(*args, tc), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src, dst, record, tc) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    record.toClient += data
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if record is not None:
            tc.closed.set()

    def since(self, mark: int) -> list[TapConnection]:
        return self.connections[mark:]

    def take(self, timeout: float = 30.0) -> tuple[bytes, int]:
        """
        What the clients were sent on the connections made since the last
        take, once each of them ended, and how many connections that was.
        """
        new = self.connections[self._taken:]
        deadline = time.monotonic() + timeout
        for tc in new:
            assert tc.closed.wait(max(0.0, deadline - time.monotonic())), \
                "a client connection through the tap is still open"
        self._taken += len(new)
        return b"".join(bytes(tc.toClient) for tc in new), len(new)

    def stop(self) -> None:
        self.sock.close()
        for tc in self.connections:
            for s in (tc.client, tc.upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for t in self._threads:
            t.join(10)
