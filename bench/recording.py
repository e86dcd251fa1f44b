"""Sealed-store figures: append throughput, hot-path cost, time to verify 1 GiB, proof sizes.

Run: .venv/bin/python bench/recording.py [--gib 1.0] [--dir /tmp]
Prints each figure beside its target from issue 3 (300 MB/s, 100,000 frames/s
on one core, 1 GiB verified in under 10 s, inclusion proof under 1 KiB), then
(issue 17) the same write workload with and without two witnesses cosigning
(real `twistd sealgate-witness` processes on loopback, the gateway's pumps in
a process of their own as in a gateway), and their ratio: witnessing should
cost the writer nothing (--witness-rounds 0 skips it, --only-witnessed runs
only that).  --writer runs only the real writer process fed through its
pipe: CPU per PostgreSQL transaction, per HTTP request and per GiB; --engine
the same work on the engine alone, in-process (steadier), --tree TREE for a
before/after in the same run.
The append figures time the writer thread's whole job (salting, commitments,
leaf and tree hashing, segment write + fdatasync, SQLite commit, checkpoint
signing) on one core, in batches the size one flush interval would gather.
"""

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package that Twisted imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # this tree's sealgate; tests.harness for the witnesses

import argparse  # noqa: E402
import collections  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
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
        note = f"  target {'>=' if better == 'higher' else '<='} {target:,g} {unit}: {'met' if ok else 'MISSED'}"
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
    parser.add_argument("--witness-rounds", type=int, default=2,
                        help="rounds of the witnessed workload, each off then on (0: skip)")
    parser.add_argument("--witness-sessions", type=int, default=20, help="sessions per witnessed workload")
    parser.add_argument("--only-witnessed", action="store_true", help="only the witnessed workload")
    parser.add_argument("--writer", action="store_true",
                        help="only the writer process fed through its pipe (bench/_writerpipe.py)")
    parser.add_argument("--txns", type=int, default=20000, help="transactions and requests for --writer")
    parser.add_argument("--writer-mib", type=int, default=1024, help="bulk MiB for --writer")
    parser.add_argument("--tree", action="append", default=[],
                        help="with --writer: also run another checkout's writer (repeatable; runs alternate)")
    parser.add_argument("--rounds", type=int, default=1, help="with --writer or --engine: rounds of each tree")
    parser.add_argument("--engine", action="store_true",
                        help="only the writer's engine in-process (steady on a loaded machine), --tree to compare")
    args = parser.parse_args()
    if args.engine:
        from bench import _writerpipe

        _writerpipe.engineAB(args.tree, args.rounds)
        return
    if args.writer:
        from bench import _writerpipe

        for _ in range(args.rounds):
            for tree in [None, *args.tree]:
                _writerpipe.run(args.txns, mib=args.writer_mib, tree=tree)
        return
    base = Path(tempfile.mkdtemp(prefix="sealgate-bench-", dir=args.dir))
    try:
        if not args.only_witnessed:
            run(base, args.gib)
        if args.witness_rounds:
            witnessed(base / "witnessed", args.witness_rounds, args.witness_sessions)
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
        _bigFrames = 0

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


def _workload(engine, sessions: int):
    """C{sessions} sessions of 50,000 64 B frames and 8 MiB of 16 KiB frames: (frames, wall s, writer CPU s)."""
    frames = wall = cpu = 0.0
    for n in range(sessions):
        for size, total, batch in ((64, 64 * 50_000, 5_000), (16384, 8 << 20, 256)):
            f, w, c = append(engine, f"s{n}-{size}", size, total, batch)
            frames, wall, cpu = frames + f, wall + w, cpu + c
    return frames, wall, cpu


def _cosignedBy(state, names, size) -> bool:
    from sealgate.recording.cosigned import Cosignatures

    with Cosignatures(state, readOnly=True) as c:
        return all(c.latest(n) == size for n in names)


def _waitCosigned(state, names, size, pump) -> float:
    """Seconds until every witness cosigned C{size} (polled; 60 s at most)."""
    t0 = time.perf_counter()
    while not _cosignedBy(state, names, size):
        if time.perf_counter() - t0 > 60 or pump.poll() is not None:
            raise SystemExit(f"the witnesses did not cosign size {size} within 60 s")
        time.sleep(0.05)
    return time.perf_counter() - t0


def _oneRun(mode, signer, state, ws, sessions):
    """One workload on a new log; with C{mode} "on" the pumps run (warmed up first, as in a running gateway)."""
    from bench._common import cpuSeconds, stop
    from sealgate.recording.cosigned import Cosignatures
    from tests.harness.twistd import environment

    state.mkdir(parents=True)
    (state / "signing.key").write_text(signer.skey() + "\n")
    (state / "signing.key").chmod(0o600)
    engine = Engine(state, signer.verifier.name)
    engine.open()
    names = [w.cosigner.verifier.name for w in ws]
    pump = None
    try:
        append(engine, "warm-up", 64, 64 * 1000, 1000)
        if mode == "on":
            pump = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_witnesspump.py"), str(state), "2",
                                     *(f"{w.url}={w.vkey}" for w in ws)], env=environment(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _waitCosigned(state, names, engine.checkpointSize, pump)
            cpu0 = [cpuSeconds(p.pid) for p in [pump] + [w.process for w in ws]]
        frames, wall, cpu = _workload(engine, sessions)
        made = engine.db.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        last = engine.checkpointSize
        engine.close()
        if pump is None:
            return frames / wall, frames / cpu, made, None
        # Every witness reaches the last checkpoint: the run was witnessed, not merely timed.
        catchUp = _waitCosigned(state, names, last, pump)
        cpu1 = [cpuSeconds(p.pid) for p in [pump] + [w.process for w in ws]]
        with Cosignatures(state, readOnly=True) as c:
            counts = [c.count(n) for n in names]
        return frames / wall, frames / cpu, made, (counts, catchUp, cpu1[0] - cpu0[0], sum(cpu1[1:]) - sum(cpu0[1:]))
    finally:
        stop(pump)


def witnessed(base, rounds: int, sessions: int) -> None:
    """
    The same writes without and with two witnesses cosigning each new
    checkpoint while they happen, alternated C{rounds} times (best of each
    kept: the machine is shared). The writer is this process, as the store's
    writer is its own process in a gateway; the pumps run in another
    (bench/_witnesspump.py), the witnesses under twistd.
    """
    from sealgate.recording.checkpoint import Signer
    from tests.harness.witness import WitnessProcess

    plan = []
    for r in range(rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):  # neither always goes first
            signer = Signer.generate(f"{ORIGIN}/{r}-{mode}")  # a new log each time: witnesses refuse a restart
            plan.append((mode, signer, base / f"{r}-{mode}"))
    logs = {s.verifier.name: s.verifier.vkey() for _, s, _ in plan}
    ws = [WitnessProcess(base / f"w{i}", f"witness.bench/w{i}", logs).start() for i in (1, 2)]
    best: dict = {}
    runs: dict = {"off": [], "on": []}
    try:
        for mode, signer, state in plan:
            got = _oneRun(mode, signer, state, ws, sessions)
            runs[mode].append(got)
            if mode not in best or got[0] > best[mode][0]:
                best[mode] = got
    finally:
        for w in ws:
            w.stop()
    off, on = best["off"], best["on"]
    counts, catchUp, pumpCPU, witnessCPU = on[3]
    print(f"witnessed writes: {sessions} sessions x (50,000 x 64 B + 8 MiB in 16 KiB frames), best of {rounds}")
    line("  no witnesses: frames/s (writer, wall clock)", off[0], "frames/s")
    line("  no witnesses: frames per writer CPU second", off[1], "frames/s")
    line("  2 witnesses cosigning: frames/s (writer, wall clock)", on[0], "frames/s")
    line("  2 witnesses cosigning: frames per writer CPU second", on[1], "frames/s")
    print(f"  ({on[2]} checkpoints made, cosigned {counts[0]} and {counts[1]} times; the last one {catchUp:.2f} s "
          f"after the last write; pumps {pumpCPU:.2f} CPU s, witnesses {witnessCPU:.2f} CPU s, off the writer)")
    # Each round's witnessed run against its own unwitnessed one, then the median: robust to a busy neighbour.
    wall = [b[0] / a[0] for a, b in zip(runs["off"], runs["on"], strict=True)]
    cpu = [a[1] / b[1] for a, b in zip(runs["off"], runs["on"], strict=True)]
    print(f"{'  witnessed / not: frames/s (median of rounds)':52} {statistics.median(wall):14.2f} x  (expected ~1.0)")
    print(f"{'  witnessed / not: writer CPU per frame (median)':52} {statistics.median(cpu):14.2f} x  (expected ~1.0)")
    print("  each round, witnessed / not (frames/s, writer CPU per frame): " +
          ", ".join(f"{w:.2f} {c:.2f}" for w, c in zip(wall, cpu, strict=True)))


if __name__ == "__main__":
    main()
