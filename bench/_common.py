"""Process helpers the benchmarks share: free ports, waiting for a listener, CPU time, stopping."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def freePort() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def waitPort(port: int, proc=None, timeout: float = 30.0) -> None:
    """Until something accepts on 127.0.0.1:port (or C{proc} exits: then give up)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def cpuSeconds(pid: int, children: bool = True) -> float:
    """
    User + system CPU time so far of a process (all its threads) and its
    live descendants (a server started through runuser, sealgate's store
    writer): Linux /proc.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if not children:
        return total
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                total += cpuSeconds(int(child))
            except OSError:
                pass  # it exited meanwhile
    return total


def stop(proc) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def startForwarder(backendPort: int):
    """A bare Twisted forwarder to 127.0.0.1:backendPort (bench/_forwarder.py); (process, port)."""
    port = freePort()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_forwarder.py")),
                             str(port), str(backendPort)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc)
    return proc, port


def childPids(pid: int) -> list[int]:
    """The live child processes of C{pid} (every thread's), e.g. sealgate's store writer: Linux /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


PY_SPY = Path(sys.executable).with_name("py-spy")


def startPySpy(pid: int, seconds: float, out: Path, rate: int = 250, gil: bool = True):
    """
    Sample C{pid} with py-spy for C{seconds} into C{out} in collapsed-stack
    form ("raw": speedscope and flamegraph.pl read it); the process, to wait on.
    Non-blocking, so the profiled process is not stopped for each sample.
    C{gil}: only stacks holding the GIL, i.e. Python's own work (on a loaded
    machine wall-clock samples are mostly a descheduled thread inside send()).
    """
    return subprocess.Popen([str(PY_SPY), "record", "-p", str(pid), "-d", str(int(seconds) + 1),
                             "-r", str(rate), "--nonblocking", "-f", "raw", "-o", str(out)]
                            + (["--gil"] if gil else []),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def topSelf(collapsed: Path, n: int = 15) -> list[tuple[str, int, float]]:
    """
    The C{n} functions with the most self time in a collapsed-stack profile:
    C{(function (file), samples, share of all samples)}, most first.
    """
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        # "func (path/file.py:123)" -> "func (file.py)": one row per function.
        name, _, where = leaf.partition(" (")
        where = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
        key = f"{name} ({where})" if where else name
        counts[key] = counts.get(key, 0) + int(num)
        total += int(num)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(k, v, v / total if total else 0.0) for k, v in top]
