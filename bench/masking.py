"""Masking throughput: JSON documents of 0.1, 1 and 10 MB, dense-hit text, clean text, streams.

Run: PYTHONPATH=src .venv/bin/python bench/masking.py [--sizes 0.1,1,10] [--repeat 3]
Prints MB/s for each case with all eight detectors on, beside the baseline
of decoding and re-encoding the same bytes (the least any text masking pays).
Targets (issue 15): JSON >= 30 MB/s at every size with 1 hit per 10
objects; text with dense hits >= 50 MB/s.
"""

import argparse
import json
import random
import time

from sealgate.masking import Masker, knownDetectors

SIZE = 4 * 1024 * 1024
JSON_TARGET = 30.0
DENSE_TARGET = 50.0


def _clean(rng: random.Random) -> str:
    words = ("the of and to in is that for it as with was on be by this are from at or have an "
             "request session gateway user table select insert update error warning connection "
             "Started Finished Accepted GET POST /api/v1/items status took ms bytes").split()
    lines = []
    size = 0
    while size < SIZE:
        line = (f"2026-11-26T11:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z "
                f"pid={rng.randrange(99999)} 10.0.{rng.randrange(256)}.{rng.randrange(256)}:"
                f"{rng.randrange(65536)} " + " ".join(rng.choice(words) for _ in range(12))
                + f" {rng.randrange(10**6)} v1.{rng.randrange(20)}.{rng.randrange(9)}")
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def _hits(rng: random.Random, clean: str) -> str:
    values = ["4111 1111 1111 1111", "jane.doe@example.com", "123-45-6789",
              "DE89 3704 0044 0532 0130 00", "+1 415 555 2671", "AKIAIOSFODNN7EXAMPLE",
              "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQ"]
    lines = clean.split("\n")
    for i in range(0, len(lines), 2):
        lines[i] += " " + rng.choice(values)
    return "\n".join(lines)


def _jsonDoc(megabytes: float) -> bytes:
    """An array of objects, one card number (a hit) per 10 objects, C{megabytes} MB."""
    target = int(megabytes * 1e6)
    objs = []
    size = 2
    i = 0
    while size < target:
        o = {"id": i, "name": f"user {i}", "city": "Springfield", "active": i % 3 == 0,
             "card": "4111111111111111" if i % 10 == 0 else None,
             "tags": ["a", "b"], "score": i / 7}
        objs.append(o)
        size += len(json.dumps(o)) + 2
        i += 1
    return json.dumps(objs).encode()


def _rate(fn, nbytes: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1,1,10", help="JSON document sizes in MB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    repeat = args.repeat
    rng = random.Random(1)
    clean = _clean(rng)
    hits = _hits(rng, clean)
    m = Masker(sorted(knownDetectors()))
    cleanB, hitsB = clean.encode(), hits.encode()
    nhits = len(m.spans(hits))
    assert m.maskText(clean) == clean

    base = _rate(lambda: cleanB.decode("utf-8", "surrogateescape").encode("utf-8", "surrogateescape"),
                 len(cleanB), repeat)
    print(f"{'baseline: decode + encode':48} {base:9.1f} MB/s")

    def show(label, fn, n, target=None):
        r = _rate(fn, n, repeat)
        verdict = "" if target is None else ("  target %.0f: %s" % (target, "met" if r >= target
                                                                     else "MISSED"))
        print(f"{label:48} {r:9.1f} MB/s  ({base / r:.0f}x slower than baseline){verdict}")

    for mb in (float(s) for s in args.sizes.split(",")):
        doc = _jsonDoc(mb)
        assert m.maskJsonBytes(doc) != doc
        show(f"maskJsonBytes, {len(doc) / 1e6:.1f} MB, 1 hit per 10 objects",
             lambda doc=doc: m.maskJsonBytes(doc), len(doc), JSON_TARGET)
    show(f"maskText, dense hits: {nhits} in {len(hitsB) >> 20} MiB (1 per 2 lines)",
         lambda: m.maskText(hits), len(hitsB), DENSE_TARGET)
    show("maskText, clean log text", lambda: m.maskText(clean), len(cleanB))
    show("maskBytes, clean", lambda: m.maskBytes(cleanB), len(cleanB))

    def stream(data, chunk=32768):
        s = m.streamMasker()
        for i in range(0, len(data), chunk):
            s.feed(data[i:i + chunk])
        s.flush()

    show("streamMasker, clean, 32 KiB feeds", lambda: stream(cleanB), len(cleanB))
    show("streamMasker, hits, 32 KiB feeds", lambda: stream(hitsB), len(hitsB))
    show("streamMasker, clean, 4 KiB feeds (pty)", lambda: stream(cleanB, 4096), len(cleanB))

    doc = json.dumps([{"id": i, "name": f"user {i}", "email": f"u{i}@example.com",
                       "password": "hunter2", "tags": ["a", "b"]} for i in range(20000)]).encode()
    mj = Masker(sorted(knownDetectors()), jsonFields=["password"])
    show(f"maskJsonBytes, {len(doc) >> 10} KiB, an e-mail and a redacted field each",
         lambda: mj.maskJsonBytes(doc), len(doc))


if __name__ == "__main__":
    main()
