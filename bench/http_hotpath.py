"""The gateway's own Python work per wrk GET /json request, without sockets, and its store writer's: steady figures on a loaded machine.

Run from the repository root:  .venv/bin/python bench/http_hotpath.py [--requests 5000] [--profile]
                               [--tree /work/main]

The relay: tests/test_http_core.py's listener with StringTransports both
ways, the bench's policy (JSON masking with the card and e-mail detectors,
a deny rule, FakeStore keeping the recording in memory), one kept-alive
connection answering GET /json with nginx's head and bench/http_proxy.py's
document, then (the caches' worst case for a JSON API) a new document of
another length in each response and a new Date every 2,500 requests.
The writer: the store engine sealing what one such request
sends it (the request and response frames and the verdict's audit event)
in batches of 125, a flush interval's worth at 2,500 requests/s.  Each
prints microseconds of CPU per request, the best of 15 rounds; --profile
prints the 15 functions with the most self time (cProfile) for each.
--tree runs another checkout's code (before/after on one machine).
"""

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--requests", type=int, default=5000)
ap.add_argument("--profile", action="store_true")
ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
args = ap.parse_args()
if Path(args.tree).resolve() != Path(__file__).resolve().parent.parent:
    sys.dont_write_bytecode = True  # another checkout is read, never written
sys.path[:0] = [str(Path(args.tree) / "src"), args.tree]

from sealgate.chain.masking import MaskingInterceptor  # noqa: E402
from sealgate.config import MaskingConfig  # noqa: E402
from sealgate.masking import Masker  # noqa: E402
from sealgate.recording._engine import Engine, SessionState  # noqa: E402
from sealgate.testing import rule  # noqa: E402
from tests.test_http_core import KEY, relay  # noqa: E402  (the relay tests' listener)

DOC = json.dumps({"customer": {"name": "Ada Lovelace", "email": "ada@example.com",
                               "card": "4111 1111 1111 1111"},
                  "orders": [{"id": i, "total": 10.5 * i, "note": "no card here"} for i in range(8)]}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 13:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Last-Modified: Wed, 02 Dec 2026 12:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "abc-123"\r\nAccept-Ranges: bytes\r\n\r\n' % len(DOC)) + DOC
REQUEST = (b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n"
           b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n")


def best(run, rounds: int, per: int) -> float:
    """Microseconds of CPU per request: the best of C{rounds} rounds of C{per} requests."""
    times = []
    for _ in range(rounds):
        t = time.process_time()
        run(per)
        times.append((time.process_time() - t) / per)
    return min(times) * 1e6


def profile(run, n: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run, n)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def varied(n: int) -> list[bytes]:
    """C{n} responses to GET /json, each a new document (its length changes), a new Date every 2,500."""
    out = []
    for i in range(n):
        doc = json.dumps({"seq": i, "customer": {"name": "Ada Lovelace", "email": f"ada{i}@example.com",
                                                 "card": "4111 1111 1111 1111"},
                          "orders": [{"id": i + k, "total": 10.5 * k, "note": "no card here"}
                                     for k in range(8)]}).encode()
        second = i // 2500
        out.append(RESPONSE.split(b"\r\n\r\n", 1)[0]
                   .replace(b"13:00:00", b"13:%02d:%02d" % (second // 60 % 60, second % 60))
                   .replace(b"Content-Length: %d" % len(DOC), b"Content-Length: %d" % len(doc))
                   + b"\r\n\r\n" + doc)
    return out


def relayBench() -> None:
    masking = MaskingInterceptor(Masker.fromConfig(MaskingConfig(detectors=("credit_card", "email"),
                                                                 json_fields=("password",))))
    r = relay(interceptors=[masking],
              rules=[rule("no-delete", "deny", matchers={"methods": ["DELETE"], "paths": ["^/admin"]})])
    r.send(REQUEST)
    r.connectBackend()
    r.answer(RESPONSE)
    if b"4111 1111 1111 1111" in r.sent() or b"Ada Lovelace" not in r.sent():
        raise SystemExit("the relay did not mask the card: not the bench's policy")

    def run(n: int) -> None:
        for _ in range(n):
            r.client.clear()
            r.backend.clear()
            r.send(REQUEST)
            r.answer(RESPONSE)

    run(200)
    print(f"relay: {best(run, 15, max(1, args.requests // 10)):.1f} us CPU per request "
          "(masking, deny rule, recording in memory)")
    if args.profile:
        profile(run, args.requests)

    answers = varied(args.requests)
    at = [0]

    def runVaried(n: int) -> None:
        i = at[0]
        for _ in range(n):
            r.client.clear()
            r.backend.clear()
            r.send(REQUEST)
            r.answer(answers[i % len(answers)])
            i += 1
        at[0] = i

    runVaried(200)
    print(f"relay, a new document each time: {best(runVaried, 15, max(1, args.requests // 10)):.1f} us "
          "CPU per request")
    if b"4111 1111 1111 1111" in r.sent():
        raise SystemExit("the relay did not mask the card: not the bench's policy")
    if args.profile:
        profile(runVaried, args.requests)


def writerBench() -> None:
    base = Path(tempfile.mkdtemp(prefix="sealgate-bench-hotpath-"))
    try:
        engine = Engine(base / "store", "bench.example/log")
        engine.open()
        s = SessionState("s1")
        engine.apply([("open", s, {"identity": "bench"}, None, None, False)])
        fields = {"kind": "http", "command": "GET /json", "verdict": "allow",
                  "details": {"method": "GET", "path": "/json", "query": "",
                              "headers": {"host": "127.0.0.1:8080", "user-agent": "wrk"}, "body_size": 0}}
        head = REQUEST.replace(KEY.encode(), b"[redacted]")

        def run(batches: int) -> None:
            for _ in range(batches):
                now = time.time()
                items: list = []
                for _ in range(125):
                    items += [(s, now, 0, 0, head), ("event", s, "command", dict(fields), None, None, now),
                              (s, now, 0, 1, RESPONSE)]
                engine.apply(items)

        run(4)
        batches = max(1, args.requests // 125 // 5)
        print(f"writer: {best(run, 15, batches) / 125:.1f} us CPU per request "
              "(two frames and one audit event, batches of 125, fdatasync included)")
        if args.profile:
            profile(run, batches * 5)
    finally:
        shutil.rmtree(base, ignore_errors=True)


relayBench()
writerBench()
