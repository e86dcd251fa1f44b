"""Process helpers the benchmarks share: free ports, waiting for a listener, CPU time, stopping."""

import os
import re
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
    """The live direct children of a process (all its threads'): sealgate's store writer."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


PYSPY = os.environ.get("PYSPY", str(Path(sys.executable).with_name("py-spy")))


def startProfile(pid: int, out: Path, seconds: int):
    """py-spy sampling C{pid} for C{seconds} into C{out} (collapsed stacks); the process to wait for."""
    return subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--duration", str(seconds),
                             "--rate", "250", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Threads parked on a lock or in the reactor's poll: not work.
IDLE = ("Condition.wait ", "wait (threading.py", "EPollReactor.doPoll ", "select ", "_worker (concurrent")


def topSelf(raw: Path, n: int = 15) -> list[str]:
    """
    The C{n} functions with the most self time in a py-spy raw (collapsed)
    profile, as lines: shares of the samples that were not idle (L{IDLE}).
    """
    counts: dict[str, int] = {}
    total = 0
    try:
        text = raw.read_text()
    except OSError:
        return ["  (no profile: py-spy failed; is it installed and allowed to ptrace?)"]
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # One function, not one line: "name (file:line)" becomes "name (file)".
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        if leaf.startswith(IDLE):
            continue
        counts[leaf] = counts.get(leaf, 0) + int(count)
        total += int(count)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [f"  {c / total:6.1%}  {name}" for name, c in top] if total else ["  (no samples)"]


def profiled(label: str, pids: dict[str, int], seconds: int, work: Path, run):
    """Run C{run()} while py-spy samples each of C{pids}; print each one's top functions by self time."""
    spies = {name: startProfile(pid, work / f"{label}-{name}.raw", seconds) for name, pid in pids.items()}
    try:
        result = run()
    finally:
        for spy in spies.values():
            try:
                spy.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
    for name in pids:
        print(f"  profile, {label}, {name}: top 15 by self time")
        for line in topSelf(work / f"{label}-{name}.raw"):
            print(line)
    return result
