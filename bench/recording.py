"""Sealed-store figures: append throughput, hot-path cost, time to verify 1 GiB, proof sizes.

Run: .venv/bin/python bench/recording.py [--gib 1.0] [--dir /tmp]
Prints each figure beside its target from issue 3 (300 MB/s, 100,000 frames/s
on one core, 1 GiB verified in under 10 s, inclusion proof under 1 KiB).
The append figures time the writer thread's whole job (salting, commitments,
leaf and tree hashing, segment write + fdatasync, SQLite commit, checkpoint
signing) on one core, in batches the size one flush interval would gather.
"""

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package that Twisted imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import collections  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402

from sealgate.recording import _format  # noqa: E402
from sealgate.recording._engine import Engine, SessionState  # noqa: E402
from sealgate.recording.bundle import exportBundle  # noqa: E402
from sealgate.recording.merkle import Levels, leafHash  # noqa: E402
from sealgate.recording.reader import StoreReader  # noqa: E402
from sealgate.recording.verify import verifyStore  # noqa: E402

ORIGIN = "sealgate/bench"


def line(label, value, unit, target=None, better="higher"):
    note = ""
    if target is not None:
        ok = value >= target if better == "higher" else value <= target
        note = f"  target {'>=' if better == 'higher' else '<='} {target:,.0f} {unit}: {'met' if ok else 'MISSED'}"
        note += f" ({value / target:.2f}x)"
    print(f"{label:52} {value:14,.1f} {unit}{note}")


def append(engine, sid, frameSize, total, batchFrames):
    s = SessionState(sid)
    engine.apply([("open", s, {"identity": "bench"}, None, None, False)])
    payload = os.urandom(frameSize)
    frames = total // frameSize
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    now = time.time()
    done = 0
    while done < frames:
        n = min(batchFrames, frames - done)
        engine.apply([(s, now, 0, i & 1, payload) for i in range(n)])
        done += n
    engine.apply([("close", s, "closed", {}, None, False)])
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return frames, wall, cpu


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0, help="size of the big recording")
    parser.add_argument("--dir", default=None, help="where to put the scratch store")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="sealgate-bench-", dir=args.dir))
    try:
        run(base, args.gib)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base, gib):
    from sealgate.recording.store import SessionRecording

    # The reactor-side cost: what a protocol pays per frame() call.
    q = collections.deque()

    class _Store:
        _queue = q
        _wake = None
        _cost = 0  # what waits, counted on every call against max_unsealed
        _pauseAt = float("inf")

    rec = SessionRecording(_Store(), 1, "hot")  # type: ignore[arg-type]
    data = b"x" * 64
    n = 1_000_000
    best = min(timeit.repeat(lambda: rec.frame(1, data), number=n, repeat=3)) / n
    line("reactor thread: recording.frame() per call", best * 1e9, "ns")
    line("  = frames/s the reactor can hand over", 1 / best, "frames/s", 100_000)

    engine = Engine(base / "store", ORIGIN)
    engine.open()
    frames, wall, cpu = append(engine, "small", 64, 64 * 600_000, 5_000)
    line("sealed append, 64 B frames (writer, wall clock)", frames / wall, "frames/s", 100_000)
    line("  MB/s of payload", frames * 64 / wall / 1e6, "MB/s")
    line("  CPU seconds per 100k frames", cpu / frames * 1e5, "s")
    size = int(gib * (1 << 30))
    frames, wall, cpu = append(engine, "big", 16384, size, 1024)
    line("sealed append, 16 KiB frames (writer, wall clock)", frames * 16384 / wall / 1e6, "MB/s", 300)
    line("  frames/s", frames / wall, "frames/s")
    line("  writer CPU (one core) MB/s", frames * 16384 / cpu / 1e6, "MB/s", 300)
    engine.close()

    with StoreReader(base / "store") as r:
        t0 = time.perf_counter()
        report = verifyStore(r, r.verifier(), "big")
        wall = time.perf_counter() - t0
        assert report.ok, report.problems
        line(f"verify the {report.bytes / (1 << 30):.2f} GiB session (all checks)", wall, "s",
             10 * gib, better="lower")
        line("  verify throughput", report.bytes / wall / 1e6, "MB/s")

        hashes = [leafHash(bytes(leaf)) for _, leaf, _, _ in r.records("big")]
        proof = Levels(hashes).inclusionProof(len(hashes) // 3)
        line(f"frame inclusion proof in the {len(hashes)}-frame session tree", len(proof) * 32, "bytes",
             1024, better="lower")
        with open(base / "big.bundle", "wb") as f:
            header = exportBundle(r, "big", f)
        close = header["leaves"][-1]
        line("CLOSE leaf inclusion proof in the log (bundle)", len(close["proof"]) * 32, "bytes",
             1024, better="lower")
        line("  bundle size / payload", (base / "big.bundle").stat().st_size / report.bytes, "x")
    print(f"(record overhead per frame: {_format.RECORD.size} + leaf "
          f"{_format.PREFIX.size + 3 + _format.FRAME_FIELDS.size + 64} + salt {_format.SALT_SIZE} bytes)")


if __name__ == "__main__":
    main()
