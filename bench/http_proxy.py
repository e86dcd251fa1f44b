"""HTTP proxy benchmark: wrk GET /json and a 1 GiB download, direct / mitmproxy / bare forwarder / sealgate, in one run.

Run from the repository root:  .venv/bin/python bench/http_proxy.py [--seconds 10] [--download-mb 1024]
                               [--mitmdump /work/mitm-venv/bin/mitmdump] [--against /work/main] [--profile]

The backend is nginx (Debian package nginx-light) serving a JSON document
with a card number and a large file; without nginx a Twisted backend is used
and the direct figure says so.  A bare Twisted forwarder (bench/_forwarder.py,
no parsing, no recording) runs beside them: the ratios of issue 18 are to
it, in the same run.  sealgate runs as `twistd -n sealgate` with a deny
rule, JSON masking and recording on.  mitmproxy runs in reverse proxy mode
from its own virtualenv (pass --mitmdump, or it is looked up on PATH);
without it that line is skipped with a note.  --against TREE runs a second
sealgate from another checkout back to back (the same load for both).
--profile samples the gateway and its store writer with py-spy during the
wrk run and the download and prints their top 15 functions by self time.

The download is recorded in full by sealgate; its line also gives the peak
RSS growth of the gateway and its writer (the memory bound the suite checks
with a smaller body).
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from _common import (  # noqa: E402  (bench/ is the script's path)
    childPids,
    cpuSeconds,
    freePort,
    startForwarder,
    startPySpy,
    stop,
    topSelf,
    waitPort,
)

DOC = {"customer": {"name": "Ada Lovelace", "email": "ada@example.com",
                    "card": "4111 1111 1111 1111"},
       "orders": [{"id": i, "total": 10.5 * i, "note": "no card here"} for i in range(8)]}
#: Documents of DOC's shape that all differ (ids, totals, addresses, lengths), served as /doc/N:
#: the "new document each request" line asks for them in turn, so no cache answers twice.
DOCS = 64
WRK_DOCS = f"""
n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/doc/" .. (n % {DOCS}))
end
"""


def document(n: int) -> dict:
    return {"customer": {"name": f"Customer {n}", "email": f"user{n}@example.com", "card": "4111 1111 1111 1111"},
            "orders": [{"id": n * 100 + i, "total": 10.5 * i + n, "note": "no card here" + " x" * (n % 5)}
                       for i in range(8)]}


# Threads parked on a lock or in the reactor's poll, as py-spy names them: not work.
IDLE = ("Condition.wait ", "wait (threading", "EPollReactor.doPoll ", "_worker (", "select (")


def profiled(label: str, pids: dict[str, int], seconds: int, where: Path, run, gil: bool = True):
    """
    Run C{run()} while py-spy samples each of C{pids}; print each one's top
    15 functions by self time, as shares of the samples that were not idle.
    C{gil}: only samples holding the GIL (Python's own work); else every
    sample, native work and syscalls included (hashing, send, pwrite).
    """
    spies = {name: startPySpy(pid, seconds, where / f"{label}-{name}.raw", gil=gil)
             for name, pid in pids.items()}
    try:
        result = run()
    finally:
        for spy in spies.values():
            try:
                spy.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
    for name in pids:
        print(f"  profile, {label}, {name}: top 15 by self time (share of the busy samples)")
        raw = where / f"{label}-{name}.raw"
        rows = [r for r in topSelf(raw, 60) if not r[0].startswith(IDLE)] if raw.exists() else []
        busy = sum(r[1] for r in rows) or 1
        for fn, samples, _share in rows[:15]:
            print(f"    {samples / busy:6.1%}  {fn}")
        if not rows:
            print("    (no samples: is py-spy installed and allowed to ptrace?)")
    return result


def startNginx(work: Path, downloadBytes: int):
    port = freePort()
    www = work / "www"
    www.mkdir()
    (www / "json").write_text(json.dumps(DOC))
    (www / "doc").mkdir()
    for n in range(DOCS):
        (www / "doc" / str(n)).write_text(json.dumps(document(n)))
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
    location /doc/ {{ default_type application/json; }}
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


def webConfig(port: int, backendPort: int, maxBody: int | None = None) -> str:
    """
    The bench's HTTP connection on C{port} to the backend on C{backendPort}
    and its policy (a deny rule, JSON masking with the card and e-mail
    detectors): shared with bench/workers.py.
    """
    body = "" if maxBody is None else f"max_body = {maxBody}\n"
    return f"""
[[connections]]
name = "web"
protocol = "http"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={backendPort}"
[connections.options]
backend_bearer_env = "BENCH_BACKEND_TOKEN"
{body}
[[rules]]
name = "no-delete"
action = "deny"
methods = ["DELETE"]
paths = ["^/admin"]
reason = "no deletes under /admin"

[masking]
detectors = ["credit_card", "email"]
json_fields = ["password"]
unknown_content = "pass"
"""


def startSealgate(work: Path, backendPort: int, maxBody: int, tree: Path = ROOT, name: str = "sealgate"):
    port = freePort()
    work = work / name
    work.mkdir()
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

""" + webConfig(port, backendPort, maxBody))
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from sealgate.identity.apikeys import APIKeyStore

    state.mkdir(mode=0o700)
    key = APIKeyStore(state / "identity.sqlite").create("bench", ["bench"], None)
    env = dict(os.environ, PYTHONPATH=f"{tree}:{tree / 'src'}")
    if tree != ROOT:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # another checkout is read, never written
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


def wrk(url: str, seconds: int, headers=(), proc=None, script: Path | None = None) -> tuple[float, str]:
    """
    Requests/s and a note.  With C{proc}, the note also gives that proxy's
    CPU time per request: on a shared machine req/s depends on the CPU the
    proxy gets, its CPU cost per request does not.  C{script}: a wrk Lua
    script (which paths to ask for).
    """
    args = ["wrk", "-t1", "-c32", f"-d{seconds}s"] + (["-s", str(script)] if script else [])
    for h in headers:
        args += ["-H", h]
    before = cpuSeconds(proc.pid) if proc is not None else 0.0
    own = cpuSeconds(proc.pid, children=False) if proc is not None else 0.0
    kernel = systemSeconds(proc.pid) if proc is not None else 0.0
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    note = f" ({bad.group(1)} non-2xx!)" if bad else ""
    if proc is not None and n and int(n.group(1)):
        total = (cpuSeconds(proc.pid) - before) / int(n.group(1)) * 1e6
        own = (cpuSeconds(proc.pid, children=False) - own) / int(n.group(1)) * 1e6
        kernel = (systemSeconds(proc.pid) - kernel) / int(n.group(1)) * 1e6
        split = f", {own:.0f} in the proxy process" if total - own >= 1 else ""
        split += f" of which {kernel:.0f} in the kernel"
        note += f"  [{total:.0f} us CPU/request{split}]"
    return (float(m.group(1)) if m else 0.0), note


def systemSeconds(pid: int) -> float:
    """System (kernel) CPU time so far of one process, all its threads: the socket work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def admitted(url: str, headers=(), timeout: float = 120.0) -> None:
    """Wait until a request through the gateway is answered 200 (its store caught up)."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
    for h in headers:
        args += ["-H", h]
    deadline = time.monotonic() + timeout
    while subprocess.run(args + [url], capture_output=True, text=True).stdout != "200":
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}: the gateway did not admit a session within {timeout:.0f} s")
        time.sleep(0.5)  # a bench waiting on a server, not a test


def download(url: str, size: int, headers=(), runs: int = 3, proc=None) -> tuple[float, float, str]:
    """
    MB/s (the median of C{runs} downloads: a single one varies by 2x here),
    CPU seconds per download of C{proc} and its children, and a note: a
    short body, and the peak RSS growth of C{proc} and its children.
    """
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}"]
    for h in headers:
        args += ["-H", h]
    speeds = []
    note = ""
    pids = [proc.pid] + childPids(proc.pid) if proc is not None else []
    base = [rss(p) for p in pids]
    peak = list(base)
    before = cpuSeconds(proc.pid) if proc is not None else 0.0
    own = cpuSeconds(proc.pid, children=False) if proc is not None else 0.0
    for _ in range(runs):
        curl = subprocess.Popen(args + [url], stdout=subprocess.PIPE, text=True)
        while curl.poll() is None:
            peak = [max(a, rss(p)) for a, p in zip(peak, pids, strict=True)]
            try:
                curl.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        out = curl.stdout.read().split()
        speeds.append(float(out[0]) / 1e6)
        if int(out[1]) != size:
            note += f" (short body: {out[1]} of {size} bytes!)"
    spent = (cpuSeconds(proc.pid) - before) / runs if proc is not None else 0.0
    own = (cpuSeconds(proc.pid, children=False) - own) / runs if proc is not None else 0.0
    if len(pids) > 1:
        note += f"  [gateway process {own:.1f} s CPU each]"
    if pids:
        note += f"  [peak RSS growth: gateway {(peak[0] - base[0]) >> 20} MiB"
        note += "".join(f", writer {(a - b) >> 20} MiB" for a, b in zip(peak[1:], base[1:], strict=True)) + "]"
    return statistics.median(speeds), spent, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--download-mb", type=int, default=1024)
    ap.add_argument("--mitmdump", default=os.environ.get("MITMDUMP", "/work/mitm-venv/bin/mitmdump"))
    ap.add_argument("--against", type=Path, help="another checkout whose sealgate runs back to back")
    ap.add_argument("--profile", action="store_true", help="py-spy on the gateway and its writer")
    ap.add_argument("--profile-dir", type=Path, help="keep the raw py-spy profiles here")
    ap.add_argument("--profile-wall", action="store_true",
                    help="every sample, not only those holding the GIL (syscalls and hashing show)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-http-"))
    # nginx's workers run as another user: let them read the files.
    work.chmod(0o755)
    size = args.download_mb << 20
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)  # py-spy writes nothing into a missing folder
    procs = []
    try:
        nginx, bport, label = startNginx(work, size)
        procs.append(nginx)
        gateways = []
        for name, tree in [("sealgate", ROOT)] + ([("sealgate@" + args.against.name, args.against.resolve())]
                                                   if args.against else []):
            sg, gport, key = startSealgate(work, bport, 2 * size, tree, name.replace("@", "-"))
            procs.append(sg)
            gateways.append((name, sg, gport, [f"Authorization: Bearer {key}"]))
        mitm, mport = startMitm(work, bport, args.mitmdump)
        procs.append(mitm)
        fwd, fport = startForwarder(bport)
        procs.append(fwd)

        for name, _sg, gport, auth in gateways:
            check = subprocess.run(["curl", "-sS", "-H", auth[0], f"http://127.0.0.1:{gport}/json"],
                                   capture_output=True, text=True).stdout
            doc = subprocess.run(["curl", "-sS", "-H", auth[0], f"http://127.0.0.1:{gport}/doc/3"],
                                 capture_output=True, text=True).stdout
            masked = ("4111 1111 1111 1111" not in check + doc and "Ada Lovelace" in check
                      and "user3@example.com" not in doc and "Customer 3" in doc)
            denied = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE",
                                     "-H", auth[0], f"http://127.0.0.1:{gport}/admin/x"],
                                    capture_output=True, text=True).stdout
            print(f"{name} masks the card in /json and /doc/N: {masked}; DELETE /admin/x answered {denied}")

        def perRequest(note: str) -> float:
            m = re.search(r"\[(\d+) us CPU/request", note)
            return float(m.group(1)) if m else 0.0

        direct, n1 = wrk(f"http://127.0.0.1:{bport}/json", args.seconds)
        bare, n4 = wrk(f"http://127.0.0.1:{fport}/json", args.seconds, (), fwd)
        print(f"wrk -t1 -c32 -d{args.seconds}s GET /json")
        print(f"  direct ({label}): {direct:10.0f} req/s{n1}")
        if mitm is not None:
            viaMitm, n3 = wrk(f"http://127.0.0.1:{mport}/json", args.seconds, (), mitm)
            print(f"  mitmproxy reverse:  {viaMitm:10.0f} req/s{n3}  ({viaMitm / bare:.2f} of the forwarder)")
        else:
            viaMitm = 0.0
            print(f"  mitmproxy: skipped ({args.mitmdump} not found: python3 -m venv /work/mitm-venv && "
                  "/work/mitm-venv/bin/pip install mitmproxy, or pass --mitmdump)")
        stop(mitm)
        print(f"  twisted forwarder:  {bare:10.0f} req/s{n4}")
        for name, sg, gport, auth in gateways:
            url = f"http://127.0.0.1:{gport}/json"
            through, n2 = wrk(url, args.seconds, auth, sg)
            print(f"  {name}: {through:10.0f} req/s{n2}")
            ratio = through / bare if bare else 0.0
            cpu = perRequest(n2) / perRequest(n4) if perRequest(n4) else 0.0
            print(f"  {name} / forwarder: {ratio:.2f} req/s (target >= 0.5), {cpu:.1f}x CPU/request "
                  f"(target <= 2.5)" + (f", {through / viaMitm:.1f}x mitmproxy" if viaMitm else ""))
            if args.profile:
                pids = {"gateway": sg.pid, **dict(("writer", p) for p in childPids(sg.pid)[:1])}
                profiled(f"wrk-{gport}", pids, args.seconds, args.profile_dir or work,
                         lambda u=url, a=auth, p=sg: wrk(u, args.seconds, a, p), not args.profile_wall)

        # The same policy and proxies, each request a different document: no
        # response head, body or audit event repeats the one before it.
        script = work / "docs.lua"
        script.write_text(WRK_DOCS)
        bareDocs, n7 = wrk(f"http://127.0.0.1:{fport}/", args.seconds, (), fwd, script)
        print(f"wrk -t1 -c32 -d{args.seconds}s GET /doc/0../doc/{DOCS - 1} in turn (a new document each request)")
        print(f"  twisted forwarder:  {bareDocs:10.0f} req/s{n7}")
        for name, sg, gport, auth in gateways:
            throughDocs, n8 = wrk(f"http://127.0.0.1:{gport}/", args.seconds, auth, sg, script)
            print(f"  {name}: {throughDocs:10.0f} req/s{n8}")
            cpu = perRequest(n8) / perRequest(n7) if perRequest(n7) else 0.0
            print(f"  {name} / forwarder: {throughDocs / bareDocs if bareDocs else 0.0:.2f} req/s "
                  f"(target >= 0.5), {cpu:.1f}x CPU/request (target <= 2.5)")

        mb = args.download_mb
        d1, _, _ = download(f"http://127.0.0.1:{bport}/big", size)
        d3, bareSpent, n5 = download(f"http://127.0.0.1:{fport}/big", size, proc=fwd)
        print(f"download {mb} MiB, median of 3 (recorded in full by sealgate)")
        print(f"  direct:   {d1:8.1f} MB/s")
        print(f"  twisted forwarder: {d3:8.1f} MB/s  ({d3 / d1:.2f} of direct, records nothing)"
              f"  [{bareSpent:.1f} s CPU each]{n5}")
        for name, sg, gport, auth in gateways:
            url = f"http://127.0.0.1:{gport}/big"
            # The wrk run leaves the writer a backlog: new sessions get 503 (Retry-After)
            # until it is under max_unsealed again.  Measure the download, not that wait.
            admitted(f"http://127.0.0.1:{gport}/json", auth)
            d2, spent, n6 = download(url, size, auth, proc=sg)
            print(f"  {name}: {d2:8.1f} MB/s  ({d2 / d1:.2f} of direct)"
                  f"  [{spent:.1f} s CPU each, relay and recording store together]{n6}")
            print(f"  {name} / forwarder: {d2 / d3:.2f} (target >= 0.8), {spent / bareSpent:.1f}x CPU"
                  if d3 and bareSpent else f"  {name} / forwarder: n/a")
            if args.profile:
                pids = {"gateway": sg.pid, **dict(("writer", p) for p in childPids(sg.pid)[:1])}
                seconds = max(2, int(3 * mb / max(d2, 1)))
                profiled(f"download-{gport}", pids, seconds, args.profile_dir or work,
                         lambda u=url, a=auth: download(u, size, a, runs=3), not args.profile_wall)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
