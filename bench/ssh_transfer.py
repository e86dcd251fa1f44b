"""File-transfer recognisers (scp source, rsync --server): MB/s of exempt data through the output step's masker.

Run: PYTHONPATH=src .venv/bin/python bench/ssh_transfer.py [--mib 100] [--repeat 3]
Feeds --mib MiB of random file data in 32 KiB packets through
L{sealgate.protocols.ssh.terminal.TransferOutput} as an scp download and
as rsync MSG_DATA frames, beside the baseline of masking the same bytes as
a terminal stream (what the channel would pay without the exemption).
MB/s of process CPU time, best of --repeat.
"""

import argparse
import os
import time

from sealgate.masking import Masker
from sealgate.protocols.ssh._rsync import RsyncServer
from sealgate.protocols.ssh._transfer import SCPSource
from sealgate.protocols.ssh.terminal import StreamOutput, TransferOutput

PACKET = 32 * 1024


def _timed(fn, packets: int, repeat: int) -> float:
    best = None
    for _ in range(repeat):
        t = time.process_time()
        fn()
        dt = time.process_time() - t
        best = dt if best is None else min(best, dt)
    return packets * PACKET / 1e6 / max(best or 1e-9, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    masker = Masker(["credit_card", "email"])
    data = os.urandom(PACKET)
    packets = args.mib * 1024 * 1024 // PACKET

    def scp():
        wire = SCPSource()
        out = TransferOutput(wire, masker.streamMasker())
        wire.clientData(b"\0")
        out(b"C0644 %d f\n" % (packets * PACKET), {})
        wire.clientData(b"\0")
        for _ in range(packets):
            out(data, {})
        assert not wire.failed

    def rsync():
        wire = RsyncServer(checksumList=False)
        out = TransferOutput(wire, masker.streamMasker())
        wire.clientData(b"\x20\0\0\0")
        out(b"\x20\0\0\0\0SEED", {})
        frame = (PACKET | 7 << 24).to_bytes(4, "little") + data
        for _ in range(packets):
            out(frame, {})
        assert not wire.failed

    def masked():
        out = StreamOutput(masker.streamMasker())
        for _ in range(packets):
            out(data, {})

    base = _timed(masked, packets, args.repeat)
    print(f"masked as a terminal stream (baseline): {base:8.0f} MB/s")
    for name, fn in (("scp -f data, exempt", scp), ("rsync MSG_DATA, exempt", rsync)):
        rate = _timed(fn, packets, args.repeat)
        print(f"{name:38s}: {rate:8.0f} MB/s  ({rate / base:.1f}x the baseline)")


if __name__ == "__main__":
    main()
