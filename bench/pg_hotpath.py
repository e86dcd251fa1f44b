"""The gateway's own Python work per pgbench -S transaction, without sockets or a store: a steady figure on a loaded machine.

Run from the repository root:  .venv/bin/python bench/pg_hotpath.py [--txns 20000] [--detectors]
                               [--profile] [--tree /work/main] [--copy 200000]

A client leg past login (tests/test_pg_relay.py's: StringTransports both ways; the bench's policy: the
production-safe preset, a masking column, a recording kept in memory) relays
what pgbench -S sends and gets back, one transaction at a time: a simple
Query with a new literal, then RowDescription, DataRow, CommandComplete and
ReadyForQuery.  It prints microseconds of CPU per transaction (the best of
five rounds); --profile prints the 15 functions with the most self time
(cProfile).  --tree runs another checkout's code (before/after on one machine).
--copy N relays a COPY OUT of N rows shaped as bench/postgres.py's ("i<TAB>row i")
in 64 KiB backend reads instead, and prints microseconds of CPU per row;
--copy-every K puts an e-mail address in every Kth row.
"""

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--txns", type=int, default=20000)
ap.add_argument("--detectors", action="store_true", help='add detectors = ["credit_card", "email"]')
ap.add_argument("--profile", action="store_true")
ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
ap.add_argument("--copy", type=int, default=0, help="COPY OUT this many rows instead")
ap.add_argument("--copy-every", type=int, default=0, metavar="N",
                help="with --copy: an e-mail address in every Nth row (values for the detectors)")
args = ap.parse_args()
sys.path[:0] = [str(Path(args.tree) / "src"), args.tree]

from sealgate.chain.masking import MaskingInterceptor  # noqa: E402
from sealgate.chain.rules import RulesInterceptor  # noqa: E402
from sealgate.config import MaskingConfig  # noqa: E402
from sealgate.masking import Masker  # noqa: E402
from sealgate.protocols.postgres import _wire as w  # noqa: E402
from sealgate.protocols.postgres.effects import PRESETS  # noqa: E402
from sealgate.testing import rule  # noqa: E402
from tests.test_pg_relay import relay  # noqa: E402  (the relay tests' leg past login)


def leg(detectors: bool):
    masking = MaskingConfig(columns=("card",), detectors=("credit_card", "email") if detectors else (),
                            unknown_content="pass")  # as bench/postgres.py: its COPY needs it
    c, client, backend, _ = relay([
        lambda gw: RulesInterceptor([rule("no-drop", "deny", matchers=dict(PRESETS["production-safe"]))],
                                    gw.approvals),
        MaskingInterceptor(Masker.fromConfig(masking)),
    ])
    return c, client, backend


def run(n: int, detectors: bool) -> float:
    c, client, backend = leg(detectors)
    rng = random.Random(1)
    queries = [w.Query(f"SELECT abalance FROM pgbench_accounts WHERE aid = {rng.randint(1, 10**6)};").encode()
               for _ in range(n)]
    reply = (w.RowDescription((w.Column("abalance", typeOid=23),)).encode()
             + w.DataRow((b"0",)).encode() + w.CommandComplete("SELECT 1").encode()
             + w.ReadyForQuery("I").encode())
    recording = c.session.recording
    t0 = time.process_time()
    for i, q in enumerate(queries):
        c.dataReceived(q)
        c.fromBackend(reply)
        if i % 256 == 0:
            client.clear()
            backend.clear()
            recording.frames.clear()
            recording.events.clear()
    spent = time.process_time() - t0
    assert not c.closed and c.session.recording.closed is None
    return spent / n * 1e6


def copy(n: int, detectors: bool, every: int = 0) -> float:
    c, client, backend = leg(detectors)
    data = (w.CopyOutResponse(0, (0, 0)).encode()
            + b"".join(w.CopyData((f"{i}\tjane{i}@example.com\n" if every and i % every == 0
                                   else f"{i}\trow {i}\n").encode()).encode() for i in range(1, n + 1))
            + w.CopyDone().encode() + w.CommandComplete(f"COPY {n}").encode() + w.ReadyForQuery("I").encode())
    reads = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    c.dataReceived(w.Query("COPY (SELECT i, 'row ' || i FROM generate_series(1, n) i) TO STDOUT").encode())
    recording = c.session.recording
    t0 = time.process_time()
    sent = 0
    for i, chunk in enumerate(reads):
        c.fromBackend(chunk)
        if i % 16 == 0:
            sent += len(client.value())
            client.clear()
            recording.frames.clear()
    spent = time.process_time() - t0
    sent += len(client.value())
    assert not c.closed and c.session.recording.closed is None
    assert sent >= len(data), "the COPY did not reach the client (refused?)"  # masking keeps lengths
    return spent / n * 1e6


def main() -> None:
    if args.copy:
        best = min(copy(args.copy, args.detectors, args.copy_every) for _ in range(3))
        print(f"{args.tree}: {best:.2f} us CPU per COPY OUT row in the gateway's relay"
              f"{' (with detectors)' if args.detectors else ''}"
              f"{f', a value every {args.copy_every} rows' if args.copy_every else ''}")
        return
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.txns, args.detectors)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return
    best = min(run(args.txns, args.detectors) for _ in range(5))
    print(f"{args.tree}: {best:.1f} us CPU per pgbench -S transaction in the gateway's relay"
          f"{' (with detectors)' if args.detectors else ''}")


if __name__ == "__main__":
    main()
