"""PostgreSQL proxy benchmark: every PostgreSQL line of issue 18's table in one run, as ratios
to the same-run bare forwarder: pgbench -S (realistic policy; and with detectors scanning every
row), COPY TO STDOUT of 2M rows, p50 latency; direct and pgbouncer (session mode) beside them.

Run from the repository root:  .venv/bin/python bench/postgres.py [--seconds 15] [--clients 8]
                               [--copy-rows 2000000] [--profile DIR] [--compare /work/main]
                               [--preset production-safe] [--skip copy,p50]

PostgreSQL is started with initdb in a temp dir (tests/harness/postgres.py).
pgbouncer is used when /usr/sbin/pgbouncer (Debian package) is installed.
sealgate runs as `twistd -n sealgate` with a realistic policy: a guardrail
preset, a masking rule on a column of another table, recording on; a second
one adds `detectors = ["credit_card", "email"]`, which scan every row.  The
bare forwarder (bench/_forwarder.py) parses and records nothing: the floor
the issue's targets are ratios to.
--profile DIR samples the gateway and its store writer with py-spy during
each sealgate pgbench run, writes collapsed stacks (speedscope and
flamegraph.pl read them) to DIR and prints the top 15 functions by self time.
--compare TREE runs the same sealgate lines from another checkout (e.g. main)
back to back, for a before/after on one loaded machine.
"""

import argparse
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from _common import (  # noqa: E402  (bench/ is the script's path)
    childPids,
    cpuSeconds,
    startForwarder,
    startPySpy,
    stop,
    topSelf,
    waitPort,
)

from tests.harness._proc import asUser, freePort  # noqa: E402
from tests.harness.postgres import SCRAM_USER, PostgresServer  # noqa: E402


def gatewayConfig(head: str, port: int, pgPort: int, policy: str = "") -> str:
    """
    The benches' sealgate config: C{head} (the [gateway] table), one role and
    one postgres connection on C{port} to the backend on C{pgPort} as
    SCRAM_USER (its password in BENCH_PG_PASSWORD), then C{policy}.
    """
    return head + f"""
[[roles]]
name = "bench"
groups = ["bench"]
connections = ["*"]

[[connections]]
name = "app"
protocol = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={pgPort}"
[connections.options]
database = "app"
username = "{SCRAM_USER}"
password_env = "BENCH_PG_PASSWORD"
allow_cleartext_on_loopback = true
{policy}
"""

def startPgbouncer(pg: PostgresServer, work: Path):
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(exe):
        return None, None
    port = freePort()
    d = work / "pgbouncer"
    d.mkdir()
    (d / "users.txt").write_text(f'"{SCRAM_USER}" "{pg.password(SCRAM_USER)}"\n')
    (d / "pgbouncer.ini").write_text(f"""
[databases]
app = host=127.0.0.1 port={pg.port} dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = plain
auth_file = {d}/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = {d}/pgbouncer.log
""")
    if pg.owner:
        shutil.chown(d, pg.owner)
        for f in d.iterdir():
            shutil.chown(f, pg.owner)
    proc = subprocess.Popen(asUser(pg.owner, [exe, str(d / "pgbouncer.ini")]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc)
    return proc, port


#: The benchmark's policy: a guardrail rule and a masking rule on a column of
#: another table (pgbench's tables have no "card").
POLICY = """
[[rules]]
name = "no-drop"
action = "deny"
{matcher}
reason = "no destructive statements"

[masking]
columns = ["card"]
# COPY carries no column names, so a session with redacted names refuses COPY
# OUT unless this says pass (docs/masking.md); the COPY line needs it.  It
# changes nothing on pgbench -S's path (no value there is of an unknown type).
unknown_content = "pass"
{detectors}
"""

#: What the second sealgate adds: detectors that scan every value of every row.
DETECTORS = 'detectors = ["credit_card", "email"]'


def startSealgate(pg: PostgresServer, work: Path, preset: str | None = "production-safe",
                  detectors: bool = False, tree: Path = ROOT, name: str = "sealgate"):
    """
    sealgate under twistd in front of C{pg}: C{(process, port, API key)}.
    Its policy is L{POLICY}, the rule guarding with C{preset} (or kind
    words), with L{DETECTORS} when C{detectors}; its code comes from C{tree}.
    """
    matcher = (f'preset = "{preset}"' if preset
               else 'statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE"]')
    policy = POLICY.replace("{matcher}", matcher).replace("{detectors}",
                                                          DETECTORS if detectors else "")
    work = work / name
    work.mkdir()
    port = freePort()
    state = work / "state"
    os.environ["BENCH_PG_PASSWORD"] = pg.password(SCRAM_USER)
    conf = work / "sealgate.toml"
    conf.write_text(gatewayConfig(f'[gateway]\nstate_dir = "{state}"\nadmin = "tcp:0:interface=127.0.0.1"\n',
                                  port, pg.port, policy))
    from sealgate.identity.apikeys import APIKeyStore

    state.mkdir(mode=0o700)
    key = APIKeyStore(state / "identity.sqlite").create("bench", ["bench"], None)
    env = dict(os.environ, PYTHONPATH=f"{tree}:{tree / 'src'}")
    twistd = str(Path(sys.executable).parent / "twistd")
    argv = [twistd, "-n", "--pidfile=", "-l", str(work / "sealgate.log")]
    proc = subprocess.Popen(argv + ["sealgate", "--config", str(conf)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc)
    return proc, port, key


def pgbench(pg, port, password, user, seconds, clients) -> tuple[float, float]:
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable")
    out = subprocess.run([pg._bin("pgbench"), "-S", "-n", "-c", str(clients), "-j", "2",
                          "-T", str(seconds), "-h", "127.0.0.1", "-p", str(port), "-U", user, "app"],
                         capture_output=True, text=True, env=env, timeout=seconds + 120)
    tps = re.search(r"tps = ([\d.]+)", out.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", out.stdout)
    if not tps:
        raise SystemExit(f"pgbench failed: {out.stderr[-2000:]}")
    return float(tps.group(1)), float(lat.group(1)) if lat else 0.0


def copyOut(pg, port, password, user, rows, runs: int = 3) -> float:
    """Seconds, the median of C{runs}: one run varies by half here."""
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable")
    sql = f"COPY (SELECT i, 'row ' || i FROM generate_series(1, {rows}) i) TO STDOUT"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as null:
            r = subprocess.run([pg._bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", user,
                                "-d", "app", "-c", sql], stdout=null, stderr=subprocess.PIPE, env=env,
                               timeout=600)
        if r.returncode:
            raise SystemExit(f"COPY failed: {r.stderr[-2000:]}")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def p50(port, password, user, n=2000) -> float:
    import psycopg

    dsn = f"host=127.0.0.1 port={port} user={user} dbname=app password={password} sslmode=disable"
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.cursor()
        for _ in range(100):
            cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            cur.fetchall()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def profileRun(proc, seconds: float, outDir: Path, label: str):
    """Start py-spy on the gateway and each of its children (the store writer): [(what, py-spy, file)]."""
    outDir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    runs = []
    for what, pid in [("gateway", proc.pid)] + [("writer", c) for c in childPids(proc.pid)]:
        out = outDir / f"{slug}-{what}-{pid}.collapsed"
        runs.append((what, startPySpy(pid, seconds, out), out))
    return runs


def printProfiles(label: str, runs) -> None:
    for what, spy, out in runs:
        _, err = spy.communicate(timeout=120)
        if not out.exists():
            print(f"    py-spy on the {what} of {label} wrote nothing: {err.decode()[-300:]}")
            continue
        print(f"    {label}, {what}: top 15 by self time ({out}; speedscope opens it)")
        for fn, n, share in topSelf(out, 15):
            print(f"      {share:6.1%} {n:7d}  {fn}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--copy-rows", type=int, default=2_000_000)
    ap.add_argument("--profile", help="py-spy the gateway and its writer; collapsed stacks go to this folder")
    ap.add_argument("--preset", default="production-safe",
                    help="the guardrail rule's preset (docs/protocols/postgres.md); '' for kind words")
    ap.add_argument("--compare", action="append", default=[], metavar="TREE",
                    help="also run sealgate from this checkout (e.g. /work/main), back to back")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: copy, p50")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    profileDir = Path(args.profile).resolve() if args.profile else None
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-pg-"))
    os.chmod(work, 0o755)
    pg = PostgresServer().start()
    procs = []
    try:
        pw = pg.password(SCRAM_USER)
        env = dict(os.environ, PGPASSWORD=pw, PGSSLMODE="disable")
        subprocess.run([pg._bin("pgbench"), "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p",
                        str(pg.port), "-U", SCRAM_USER, "app"], env=env, check=True,
                       capture_output=True, timeout=600)
        bouncer, bport = startPgbouncer(pg, work)
        procs.append(bouncer)
        fwd, fport = startForwarder(pg.port)
        procs.append(fwd)
        targets = [("direct", pg.port, pw, SCRAM_USER, None)]
        if bouncer is not None:
            targets.append(("pgbouncer", bport, pw, SCRAM_USER, bouncer))
        targets.append(("twisted fwd", fport, pw, SCRAM_USER, fwd))
        trees = [("", ROOT)] + [(f"@{Path(t).name}", Path(t).resolve()) for t in args.compare]
        gateways = []  # (label, detectors)
        for n, (suffix, tree) in enumerate(trees):
            for detectors in (False, True):
                label = ("sealgate+det" if detectors else "sealgate") + suffix
                sg, sport, key = startSealgate(pg, work, args.preset or None, detectors, tree,
                                               name=f"sg{n}{'d' if detectors else ''}")
                procs.append(sg)
                targets.append((label, sport, key, "bench", sg))
                gateways.append((label, detectors))

        print(f"pgbench -S, {args.clients} clients, {args.seconds} s (scale 10); policy: preset "
              f"{args.preset or '(kind words)'}, masking column 'card', recording on; "
              f"+det adds {DETECTORS}")
        tps, cpu = {}, {}
        for name, port, password, user, proc in targets:
            cpu0 = cpuSeconds(proc.pid) if proc else 0.0
            own0 = cpuSeconds(proc.pid, children=False) if proc else 0.0
            spies = (profileRun(proc, args.seconds, profileDir, name)
                     if profileDir and name.startswith("sealgate") else [])
            tps[name], lat = pgbench(pg, port, password, user, args.seconds, args.clients)
            # On a shared machine TPS follows the CPU a proxy gets; its CPU per transaction does not.
            txns = tps[name] * args.seconds
            line = f"  {name:16s} {tps[name]:8.0f} tps  lat {lat:.3f} ms  {tps[name] / tps['direct']:6.1%} of direct"
            if proc:
                cpu[name] = (cpuSeconds(proc.pid) - cpu0) / txns * 1e6
                line += f"  [{cpu[name]:4.0f} us CPU/txn"
                if name.startswith("sealgate"):
                    own = (cpuSeconds(proc.pid, children=False) - own0) / txns * 1e6
                    line += (f": gateway {own:.0f}, writer {cpu[name] - own:.0f}]  "
                             f"/fwd: {tps[name] / tps['twisted fwd']:.2f} tps, "
                             f"{cpu[name] / cpu['twisted fwd']:.2f}x CPU")
                else:
                    line += "]"
            print(line)
            if spies:
                printProfiles(name, spies)
        for label, detectors in gateways:
            ratio, cost = tps[label] / tps["twisted fwd"], cpu[label] / cpu["twisted fwd"]
            if detectors:
                print(f"  target {label}: >= 0.70 of fwd -> {ratio:.2f} "
                      f"{'met' if ratio >= 0.7 else 'NOT met'}")
            else:
                print(f"  target {label}: >= 0.85 of fwd -> {ratio:.2f} "
                      f"{'met' if ratio >= 0.85 else 'NOT met'}; CPU/txn <= 1.4x fwd -> {cost:.2f}x "
                      f"{'met' if cost <= 1.4 else 'NOT met'}")

        if "copy" not in skip:
            print(f"COPY (SELECT ...) TO STDOUT, {args.copy_rows} rows via psql, median of 3")
            secs = {}
            for name, port, password, user, _ in targets:
                secs[name] = copyOut(pg, port, password, user, args.copy_rows)
                ratio = (f"  {secs['direct'] / secs[name]:6.1%} of direct, "
                         f"{secs['twisted fwd'] / secs[name]:.2f} of fwd"
                         if name not in ("direct", "twisted fwd") else "")
                print(f"  {name:16s} {secs[name]:8.2f} s  {args.copy_rows / secs[name]:10.0f} rows/s{ratio}")

        if "p50" not in skip:
            print("p50 latency of one indexed SELECT, one client (psycopg, 2000 queries)")
            lat = {}
            for name, port, password, user, _ in targets:
                lat[name] = p50(port, password, user)
                added = f"  (+{lat[name] - lat['direct']:.0f} us)" if name != "direct" else ""
                print(f"  {name:16s} {lat[name]:8.0f} us{added}")
    finally:
        for p in procs:
            stop(p)
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
