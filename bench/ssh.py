"""SSH through sealgate vs direct OpenSSH: 1 GiB bulk throughput and pty echo latency, in one run.

Run: .venv/bin/python bench/ssh.py [--mib 1024] [--echoes 300] [--masking]
Starts a real sshd (the test harness) and a gateway in a child process
(recording on, as always), then times with the real ssh client:

- bulk: `head -c 1GiB /dev/zero` on the server, output to /dev/null;
- echo: one byte typed into `cat` in a pty (`ssh -tt`, raw mode), time until
  it comes back; p50/p90 over --echoes round trips.

Targets (issue 5, kept by issue 18): >= 0.2 of direct throughput, added
echo latency < 1 ms p50.  The bulk line also gives the gateway's CPU
(relay and its store writer) per run.
"""

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package that Twisted imports.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "src"))  # this checkout, not an installed copy
sys.path.append(str(_HERE.parent))  # for tests.harness

import argparse  # noqa: E402
import os  # noqa: E402
import pty  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.util import module_from_spec, spec_from_file_location  # noqa: E402

# The shared helpers, without putting bench/ back on the path.
_spec = spec_from_file_location("_common", _HERE / "_common.py")
assert _spec is not None and _spec.loader is not None
_common = module_from_spec(_spec)
_spec.loader.exec_module(_common)

CONFIG = """
[gateway]
admin = "tcp:0:interface=127.0.0.1"
state_dir = "{state}"

[[connections]]
name = "bench"
protocol = "ssh"
listen = "tcp:0:interface=127.0.0.1"
backend = "{backend}"
[connections.options]
username = "{user}"
private_key_file = "{key}"
known_hosts = "{knownHosts}"

[[roles]]
name = "bench"
groups = ["bench"]
connections = ["bench"]
{masking}
"""


def serve(directory: str) -> None:
    """Child process: run the gateway until killed; print its port."""
    from twisted.internet import defer, reactor

    from sealgate.testing import startGateway

    async def start():
        text = Path(directory, "config.toml").read_text()
        gw = await startGateway(text, Path(directory))
        print(gw.port("bench"), flush=True)

    def failed(f):
        f.printTraceback()
        os._exit(1)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()).addErrback(failed))
    reactor.run()


def sshArgs(port: int, key, knownHosts, user: str) -> list[str]:
    return ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={knownHosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"]


def bulk(args: list[str], nbytes: int) -> float:
    """Seconds to receive nbytes of zeros (best of two runs)."""
    best = None
    for _ in range(2):
        t0 = time.perf_counter()
        subprocess.run(args + [f"head -c {nbytes} /dev/zero"], stdout=subprocess.DEVNULL,
                       check=True)
        took = time.perf_counter() - t0
        best = took if best is None else min(best, took)
    return best


def echo(args: list[str], rounds: int) -> list[float]:
    """Round-trip seconds of one byte through `cat` in a remote pty."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(args[0], args[:1] + ["-tt"] + args[1:] + ["stty raw -echo; echo READY; exec cat"])
    try:
        buf = b""
        while b"READY" not in buf:
            r, _, _ = select.select([fd], [], [], 20)
            if not r:
                raise RuntimeError("no READY from the remote shell: " + repr(buf[-200:]))
            buf += os.read(fd, 4096)
        time.sleep(0.3)
        while select.select([fd], [], [], 0.05)[0]:
            os.read(fd, 4096)
        samples = []
        for i in range(rounds):
            ch = bytes([97 + i % 26])
            t0 = time.perf_counter()
            os.write(fd, ch)
            got = b""
            while ch not in got:
                r, _, _ = select.select([fd], [], [], 10)
                if not r:
                    raise RuntimeError("echo timed out")
                got += os.read(fd, 64)
            samples.append(time.perf_counter() - t0)
            time.sleep(0.002)
        return samples
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)


def pct(values, q):
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="bulk transfer size (default 1 GiB)")
    p.add_argument("--echoes", type=int, default=300)
    p.add_argument("--masking", action="store_true", help="mask card numbers on the terminal too")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        serve(a.serve)
        return 0

    from tests.harness.sshd import SSHServer

    sshd = SSHServer().start()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-ssh-"))
    child = None
    try:
        masking = '\n[masking]\ndetectors = ["credit_card", "email"]\n' if a.masking else ""
        (work / "config.toml").write_text(CONFIG.format(
            state=work / "state", backend=sshd.endpoint, user=sshd.user, key=sshd.clientKey,
            knownHosts=sshd.knownHosts, masking=masking))
        userKey = work / "user"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(userKey)],
                       check=True)
        from sealgate.identity.sshkeys import SSHKeyStore

        SSHKeyStore.forStateDir(work / "state").add(
            "bench", Path(str(userKey) + ".pub").read_text(), ["bench"])
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(work)],
                                 stdout=subprocess.PIPE, text=True)
        port = int(child.stdout.readline())
        hostKey = " ".join((work / "state/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2])
        gwKnown = work / "gw_known_hosts"
        gwKnown.write_text(f"[127.0.0.1]:{port} {hostKey}\n")

        direct = sshArgs(sshd.port, sshd.clientKey, sshd.knownHosts, sshd.user)
        viaGw = sshArgs(port, userKey, gwKnown, "bench")
        nbytes = a.mib * 1024 * 1024

        tDirect = bulk(direct, nbytes)
        before = _common.cpuSeconds(child.pid)
        tGw = bulk(viaGw, nbytes)
        spent = (_common.cpuSeconds(child.pid) - before) / 2
        eDirect = echo(direct, a.echoes)
        eGw = echo(viaGw, a.echoes)

        mbD, mbG = nbytes / tDirect / 1e6, nbytes / tGw / 1e6
        print(f"bulk {a.mib} MiB  direct OpenSSH      {tDirect:7.2f} s  {mbD:8.1f} MB/s")
        print(f"bulk {a.mib} MiB  through sealgate    {tGw:7.2f} s  {mbG:8.1f} MB/s"
              + ("  [recording on, masking on]" if a.masking else "  [recording on]")
              + f"  [{spent:.1f} s CPU per run, gateway and writer]")
        print(f"sealgate / direct: {mbG / mbD:.2f} (target >= 0.2: "
              f"{'met' if mbG >= 0.2 * mbD else 'MISSED'})")
        p50d, p50g = statistics.median(eDirect) * 1e3, statistics.median(eGw) * 1e3
        print(f"echo p50/p90   direct OpenSSH      {p50d:7.3f} / {pct(eDirect, 90) * 1e3:.3f} ms")
        print(f"echo p50/p90   through sealgate    {p50g:7.3f} / {pct(eGw, 90) * 1e3:.3f} ms")
        added = p50g - p50d
        print(f"sealgate echo p50: +{added:.3f} ms over direct (target < 1 ms: "
              f"{'met' if added < 1.0 else 'MISSED'})")
    finally:
        if child is not None:
            child.terminate()
            child.wait(30)
        sshd.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
