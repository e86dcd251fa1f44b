"""HTTP proxy benchmark: wrk req/s direct vs through sealgate vs mitmproxy, and 1 GB download throughput.

Run from the repository root:  .venv/bin/python bench/http_proxy.py [--seconds 10] [--download-mb 1024]
                               [--mitmdump /tmp/mitmvenv/bin/mitmdump]

The backend is nginx (Debian package nginx-light) serving a JSON document
with a card number and a large file; without nginx a Twisted backend is used
and the direct figure says so.  A bare Twisted forwarder (bench/_forwarder.py,
no parsing, no recording) runs beside them as the floor.  sealgate runs as `twistd -n sealgate` with a
guardrail rule, JSON masking and recording on.  mitmproxy runs in reverse
proxy mode from its own virtualenv (pass --mitmdump, or it is looked up on
PATH); without it that line is skipped with a note.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from _common import cpuSeconds, freePort, startForwarder, stop, waitPort  # noqa: E402  (bench/ is the script's path)

DOC = {"customer": {"name": "Ada Lovelace", "email": "ada@example.com",
                    "card": "4111 1111 1111 1111"},
       "orders": [{"id": i, "total": 10.5 * i, "note": "no card here"} for i in range(8)]}


def startNginx(work: Path, downloadBytes: int):
    port = freePort()
    www = work / "www"
    www.mkdir()
    (www / "json").write_text(json.dumps(DOC))
    with open(www / "big", "wb") as f:
        f.truncate(downloadBytes)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        conf = work / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  default_type application/octet-stream;
  types {{ application/json json; }}
  sendfile on;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    root {www};
    location = /json {{ default_type application/json; }}
  }}
}}
""")
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        label = "nginx"
    else:
        proc = subprocess.Popen([sys.executable, "-m", "twisted", "web", "--listen",
                                 f"tcp:{port}:interface=127.0.0.1", "--path", str(www)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        label = "twisted web (nginx not installed)"
    waitPort(port, proc)
    return proc, port, label


def startSealgate(work: Path, backendPort: int):
    port = freePort()
    state = work / "state"
    os.environ["BENCH_BACKEND_TOKEN"] = "bench-backend-secret"
    conf = work / "sealgate.toml"
    conf.write_text(f"""
[gateway]
state_dir = "{state}"
admin = "tcp:0:interface=127.0.0.1"

[[roles]]
name = "bench"
groups = ["bench"]
connections = ["*"]

[[connections]]
name = "web"
protocol = "http"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={backendPort}"
[connections.options]
backend_bearer_env = "BENCH_BACKEND_TOKEN"

[[rules]]
name = "no-delete"
action = "deny"
methods = ["DELETE"]
paths = ["^/admin"]
reason = "no deletes under /admin"

[masking]
detectors = ["credit_card", "email"]
json_fields = ["password"]
""")
    sys.path.insert(0, str(ROOT / "src"))
    from sealgate.identity.apikeys import APIKeyStore

    state.mkdir(mode=0o700)
    key = APIKeyStore(state / "identity.sqlite").create("bench", ["bench"], None)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    twistd = str(Path(sys.executable).parent / "twistd")
    proc = subprocess.Popen([twistd, "-n", "--pidfile=", "-l", str(work / "sealgate.log"),
                             "sealgate", "--config", str(conf)],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc)
    return proc, port, key


def startMitm(work: Path, backendPort: int, mitmdump: str | None):
    exe = mitmdump or shutil.which("mitmdump")
    if not exe or not os.path.exists(exe):
        return None, None
    port = freePort()
    proc = subprocess.Popen([exe, "--mode", f"reverse:http://127.0.0.1:{backendPort}",
                             "--listen-host", "127.0.0.1", "-p", str(port), "-q",
                             "--set", f"confdir={work / 'mitm'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc, 60)
    return proc, port


def wrk(url: str, seconds: int, headers=(), proc=None) -> tuple[float, str]:
    """
    Requests/s and a note.  With C{proc}, the note also gives that proxy's
    CPU time per request: on a shared machine req/s depends on the CPU the
    proxy gets, its CPU cost per request does not.
    """
    args = ["wrk", "-t1", "-c32", f"-d{seconds}s"]
    for h in headers:
        args += ["-H", h]
    before = cpuSeconds(proc.pid) if proc is not None else 0.0
    own = cpuSeconds(proc.pid, children=False) if proc is not None else 0.0
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    note = f" ({bad.group(1)} non-2xx!)" if bad else ""
    if proc is not None and n and int(n.group(1)):
        total = (cpuSeconds(proc.pid) - before) / int(n.group(1)) * 1e6
        own = (cpuSeconds(proc.pid, children=False) - own) / int(n.group(1)) * 1e6
        split = f", {own:.0f} in the proxy process" if total - own >= 1 else ""
        note += f"  [{total:.0f} us CPU/request{split}]"
    return (float(m.group(1)) if m else 0.0), note


def download(url: str, headers=(), runs: int = 3) -> float:
    """MB/s, the median of C{runs} downloads: a single one varies by 2x here."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}"]
    for h in headers:
        args += ["-H", h]
    speeds = []
    for _ in range(runs):
        out = subprocess.run(args + [url], capture_output=True, text=True, timeout=900).stdout.split()
        speeds.append(float(out[0]) / 1e6)
    return statistics.median(speeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--download-mb", type=int, default=1024)
    ap.add_argument("--mitmdump", default=os.environ.get("MITMDUMP", "/tmp/mitmvenv/bin/mitmdump"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-http-"))
    # nginx's workers run as another user: let them read the files.
    work.chmod(0o755)
    procs = []
    try:
        nginx, bport, label = startNginx(work, args.download_mb << 20)
        procs.append(nginx)
        sg, gport, key = startSealgate(work, bport)
        procs.append(sg)
        mitm, mport = startMitm(work, bport, args.mitmdump)
        procs.append(mitm)
        fwd, fport = startForwarder(bport)
        procs.append(fwd)
        auth = [f"Authorization: Bearer {key}"]

        check = subprocess.run(["curl", "-sS", "-H", auth[0], f"http://127.0.0.1:{gport}/json"],
                               capture_output=True, text=True).stdout
        masked = "4111 1111 1111 1111" not in check and "Ada Lovelace" in check
        print(f"sealgate masks the card in /json: {masked}")

        direct, n1 = wrk(f"http://127.0.0.1:{bport}/json", args.seconds)
        bare, n4 = wrk(f"http://127.0.0.1:{fport}/json", args.seconds, (), fwd)
        through, n2 = wrk(f"http://127.0.0.1:{gport}/json", args.seconds, auth, sg)
        print(f"wrk -c32 -d{args.seconds}s GET /json")
        print(f"  direct ({label}): {direct:10.0f} req/s{n1}")
        print(f"  twisted forwarder:  {bare:10.0f} req/s{n4}  ({bare / direct:.1%} of direct)")
        print(f"  sealgate:           {through:10.0f} req/s{n2}  ({through / direct:.1%} of direct)")
        if mitm is not None:
            viaMitm, n3 = wrk(f"http://127.0.0.1:{mport}/json", args.seconds, (), mitm)
            print(f"  mitmproxy reverse:  {viaMitm:10.0f} req/s{n3}  ({viaMitm / direct:.1%} of direct)")
            if viaMitm:
                print(f"  sealgate / mitmproxy: {through / viaMitm:.1f}x (target >= 10x)")
        else:
            print("  mitmproxy: skipped (mitmdump not found; pip install mitmproxy into a "
                  "separate venv and pass --mitmdump)")
        stop(mitm)

        mb = args.download_mb
        d1 = download(f"http://127.0.0.1:{bport}/big")
        before = cpuSeconds(fwd.pid)
        d3 = download(f"http://127.0.0.1:{fport}/big")
        bareSpent = cpuSeconds(fwd.pid) - before
        before = cpuSeconds(sg.pid)
        d2 = download(f"http://127.0.0.1:{gport}/big", auth)
        spent = cpuSeconds(sg.pid) - before
        print(f"download {mb} MiB, median of 3 (recorded in full by sealgate)")
        print(f"  direct:   {d1:8.1f} MB/s")
        print(f"  twisted forwarder: {d3:8.1f} MB/s  ({d3 / d1:.1%} of direct, records nothing)"
              f"  [{bareSpent / 3:.1f} s CPU each]")
        print(f"  sealgate: {d2:8.1f} MB/s  ({d2 / d1:.1%} of direct, target >= 50%)"
              f"  [{spent / 3:.1f} s CPU each, relay and recording store together]")
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
