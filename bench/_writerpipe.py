"""The store writer process fed through its real pipe: writer CPU per PostgreSQL transaction, per HTTP request, per GiB.

Used by bench/recording.py --writer.  A real C{python -m
sealgate.recording._writer} is started as SQLiteStore starts it; this
process plays the gateway's sender thread (L{_pipe.encodeItems} and
L{_pipe.writeAll} every 10 ms, F_SETPIPE_SZ as the store sets it) and its
reply thread, pacing on the writer's durable counts the way max_unsealed
does.  Writer CPU comes from /proc (every thread of it); the sender's own
CPU per item is the hand-off the gateway pays off the reactor.
"""

import fcntl
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench._common import cpuSeconds
from sealgate.recording import _pipe

PG_QUERY = b"Q\x00\x00\x00>SELECT abalance FROM pgbench_accounts WHERE aid = 4711;\x00"
PG_REPLY = (b"T\x00\x00\x00!\x00\x01abalance\x00\x00\x00@\x06\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
            b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01" b"0C\x00\x00\x00\rSELECT 1\x00Z\x00\x00\x00\x05I")
PG_EVENT = {"command": "SELECT abalance FROM pgbench_accounts WHERE aid = $1", "verdict": "allow",
            "rule": None, "identity": "bench", "details": {"statement": "select", "tables": ["pgbench_accounts"],
                                                           "params": 0, "rows": 1}}
HTTP_REQUEST = b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAuthorization: [redacted]\r\n\r\n"
HTTP_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 400\r\nConnection: keep-alive\r\n\r\n" + b"x" * 400)
HTTP_EVENT = {"command": "GET /json", "verdict": "allow",
              "details": {"method": "GET", "path": "/json", "query": "",
                          "headers": {"host": "127.0.0.1:8080", "user-agent": "wrk"}, "body_size": 0}}


class Gateway:
    """The gateway's side of one writer process."""

    def __init__(self, stateDir: Path, tree: str | None = None):
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        # --tree: another checkout's writer (before/after on one machine)
        env["PYTHONPATH"] = os.pathsep.join(([str(Path(tree) / "src")] if tree else []) + [p for p in sys.path if p])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sealgate.recording._writer", str(stateDir), "bench.example/log", "1.0",
             str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            fcntl.fcntl(self.proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        self.fd = self.proc.stdin.fileno()
        self.durable = 0
        self.durableCost = 0
        self.started = threading.Event()
        self.changed = threading.Condition()
        threading.Thread(target=self._replies, daemon=True).start()
        if not self.started.wait(30):
            raise SystemExit("the writer did not start")
        self.shipped = 0
        self.cost = 0
        self.senderCpu = 0.0

    def _replies(self) -> None:
        for message in _pipe.readMessages(self.proc.stdout):
            if message[0] == "started":
                self.started.set()
            elif message[0] == "durable":
                with self.changed:
                    self.durable, self.durableCost = message[1], message[2]
                    self.changed.notify_all()

    def ship(self, items: list) -> None:
        t = time.thread_time()
        _pipe.writeAll(self.fd, _pipe.encodeItems(items))
        self.senderCpu += time.thread_time() - t
        self.shipped += len(items)
        self.cost += sum(len(i[4]) + _pipe.FRAME_COST if type(i[0]) is int else _pipe.ITEM_COST for i in items)

    def waitCost(self, most: int) -> None:
        """Until what is not durable costs at most C{most} (max_unsealed's pause)."""
        with self.changed:
            while self.cost - self.durableCost > most:
                self.changed.wait(1)

    def waitAll(self) -> None:
        with self.changed:
            while self.durable < self.shipped:
                self.changed.wait(1)

    def cpu(self) -> float:
        return cpuSeconds(self.proc.pid, children=False)

    def split(self) -> tuple[float, float]:
        """User and system CPU seconds of the writer so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        self.ship([("stop",)])
        self.proc.stdin.close()
        self.proc.wait(60)


def _paced(gw: Gateway, n: int, rate: int, one, per: int = 0) -> tuple[float, float]:
    """
    C{n} units of C{one(i)} items shipped every 10 ms at C{rate} per second
    (or C{per} units to a shipment), never more than 64 MiB not yet durable:
    (writer CPU s, sender CPU s).
    """
    per = per or max(1, rate // 100)
    cpu0, sender0, (user0, sys0) = gw.cpu(), gw.senderCpu, gw.split()
    start = time.perf_counter()
    done = 0
    while done < n:
        items: list = []
        for i in range(done, min(n, done + per)):
            items += one(i)
        done += per
        gw.ship(items)
        gw.waitCost(64 << 20)
        delay = start + done / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # a bench's pacing, as the sender's SEND_INTERVAL
    gw.waitAll()
    user1, sys1 = gw.split()
    gw.lastSplit = (user1 - user0, sys1 - sys0)
    return gw.cpu() - cpu0, gw.senderCpu - sender0


def run(txns: int = 20000, rate: int = 8000, mib: int = 1024, frame: int = 256 << 10,
        tree: str | None = None) -> None:
    from bench.recording import line

    base = Path(tempfile.mkdtemp(prefix="sealgate-bench-writer-"))
    print(f"writer of {tree or 'this tree'}:")
    try:
        gw = Gateway(base / "store", tree)
    except BaseException:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        now = time.time
        gw.ship([("open", 1, "pg", {"protocol": "postgres", "identity": "bench"}, now())])
        gw.ship([("open", 2, "http", {"protocol": "http", "identity": "bench"}, now())])
        gw.ship([("open", 3, "bulk", {"protocol": "http", "identity": "bench"}, now())])
        gw.waitAll()
        cpu, sender = _paced(gw, txns, rate, lambda i: [
            (1, now(), 0, 0, PG_QUERY), ("event", 1, "command", dict(PG_EVENT), now()), (1, now(), 0, 1, PG_REPLY)])
        line(f"writer: pgbench -S transaction ({rate}/s, 2 frames + 1 event)", cpu / txns * 1e6, "us CPU", 15,
             better="lower")
        line("  of which in the kernel", gw.lastSplit[1] / txns * 1e6, "us CPU")
        line("  sender thread (encode + writev) per transaction", sender / txns * 1e6, "us CPU")
        cpu, sender = _paced(gw, txns, rate // 2, lambda i: [
            (2, now(), 0, 0, HTTP_REQUEST), ("event", 2, "command", dict(HTTP_EVENT), now()),
            (2, now(), 0, 1, HTTP_RESPONSE)])
        line(f"writer: HTTP request ({rate // 2}/s, 2 frames + 1 event)", cpu / txns * 1e6, "us CPU", 12,
             better="lower")
        line("  of which in the kernel", gw.lastSplit[1] / txns * 1e6, "us CPU")
        line("  sender thread (encode + writev) per request", sender / txns * 1e6, "us CPU")
        payload = os.urandom(frame)
        frames = (mib << 20) // frame
        t0 = time.perf_counter()
        # 1 MiB to a shipment, as the sender's BUSY_BYTES takes a bulk transfer.
        cpu, sender = _paced(gw, frames, 1 << 30, lambda i: [(3, now(), 0, 1, payload)], per=max(1, (1 << 20) // frame))
        wall = time.perf_counter() - t0
        gib = frames * frame / (1 << 30)
        line(f"writer: bulk download in {frame >> 10} KiB frames, CPU per GiB", cpu / gib, "s", 1.3,
             better="lower")
        line("  of which in the kernel", gw.lastSplit[1] / gib, "s")
        line("  wall clock MB/s (disk included)", frames * frame / wall / 1e6, "MB/s")
        line("  sender thread (encode + writev) per GiB", sender / gib, "s")
        gw.ship([("close", 1, "done", {}, None, now()), ("close", 2, "done", {}, None, now()),
                 ("close", 3, "done", {}, None, now())])
        gw.waitAll()
    finally:
        gw.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def engineFigures(rounds: int = 25) -> None:
    """
    The writer's engine alone, in this process (no pipe, no reader thread):
    best of C{rounds} short rounds of CPU per pg transaction (400 to a
    batch, 50 ms at 8,000/s), per HTTP request (200 to a batch) and per GiB
    of 256 KiB frames.  Steadier than L{run} on a loaded machine: one
    thread, process_time, and the least disturbed of many short rounds.
    """
    import shutil

    from sealgate.recording._engine import Engine, SessionState

    base = Path(tempfile.mkdtemp(prefix="sealgate-bench-engine-"))
    try:
        engine = Engine(base / "store", "bench.example/log")
        engine.open()
        states = {name: SessionState(name) for name in ("pg", "http", "bulk")}
        engine.apply([("open", s, {"protocol": name}, None, None, False) for name, s in states.items()])

        def best(batch, batches: int, per: int) -> float:
            times = []
            for _ in range(rounds):
                t = time.process_time()
                for _ in range(batches):
                    engine.apply(batch())
                times.append((time.process_time() - t) / (batches * per))
            return min(times)

        def txns(s, request, event, response, per):
            def batch():
                now = time.time()
                items: list = []
                for _ in range(per):
                    items += [(s, now, 0, 0, request), ("event", s, "command", dict(event), None, False, now),
                              (s, now, 0, 1, response)]
                return items
            return batch

        pg = best(txns(states["pg"], PG_QUERY, PG_EVENT, PG_REPLY, 400), 3, 400)
        http = best(txns(states["http"], HTTP_REQUEST, HTTP_EVENT, HTTP_RESPONSE, 200), 6, 200)
        payload = os.urandom(256 << 10)
        bulk = best(lambda: [(states["bulk"], time.time(), 0, 1, payload)] * 16, 4, 16)
        print(f"engine: {pg * 1e6:.1f} us CPU per pg transaction, {http * 1e6:.1f} per HTTP request, "
              f"{bulk * 4096:.2f} s per GiB (256 KiB frames)")
        engine.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def engineAB(trees: list, rounds: int) -> None:
    """L{engineFigures} for this tree and each of C{trees}, alternated in processes of their own."""
    here = Path(__file__).resolve().parent.parent
    for _ in range(rounds):
        for tree in [str(here), *trees]:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(tree) / "src"), str(here)]))
            out = subprocess.run([sys.executable, "-c", "from bench._writerpipe import engineFigures; engineFigures()"],
                                 env=env, capture_output=True, text=True, check=True, cwd=here).stdout
            print(f"{tree}: {out.strip()}")
