"""PostgreSQL proxy benchmark: pgbench -S TPS, COPY TO STDOUT of 2M rows and p50 latency,
direct vs pgbouncer (session mode) vs a bare Twisted forwarder vs sealgate.

Run from the repository root:  .venv/bin/python bench/postgres.py [--seconds 15] [--clients 8]
                               [--copy-rows 2000000] [--profile out.prof]
                               [--preset production-safe]

PostgreSQL is started with initdb in a temp dir (tests/harness/postgres.py).
pgbouncer is used when /usr/sbin/pgbouncer (Debian package) is installed.
sealgate runs as `twistd -n sealgate` with a realistic policy: a guardrail
rule, a masking rule on a column of another table, recording on.  The bare
forwarder (bench/_forwarder.py) parses and records nothing: the floor the
issue's targets were calibrated against.
--profile runs the sealgate process under cProfile and writes the stats.
--preset makes the guardrail rule a named preset (docs/protocols/postgres.md)
instead of its kind words.
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

from _common import cpuSeconds, startForwarder, stop, waitPort  # noqa: E402  (bench/ is the script's path)

from tests.harness._proc import asUser, freePort  # noqa: E402
from tests.harness.postgres import SCRAM_USER, PostgresServer  # noqa: E402


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
#: another table.
POLICY = """
[[rules]]
name = "no-drop"
action = "deny"
{matcher}
reason = "no destructive statements"

[masking]
columns = ["card"]
"""


def startSealgate(pg: PostgresServer, work: Path, profile: str | None, preset: str | None = None,
                  policy: str | None = None):
    """
    sealgate under twistd in front of C{pg}: C{(process, port, API key)}.
    C{policy}: the rules and masking tables (default L{POLICY}, its rule
    guarding with C{preset} or with kind words).
    """
    if policy is None:
        matcher = (f'preset = "{preset}"' if preset
                   else 'statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE"]')
        policy = POLICY.replace("{matcher}", matcher)
    port = freePort()
    state = work / "state"
    os.environ["BENCH_PG_PASSWORD"] = pg.password(SCRAM_USER)
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
name = "app"
protocol = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={pg.port}"
[connections.options]
database = "app"
username = "{SCRAM_USER}"
password_env = "BENCH_PG_PASSWORD"
allow_cleartext_on_loopback = true
{policy}
""")
    from sealgate.identity.apikeys import APIKeyStore

    state.mkdir(mode=0o700)
    key = APIKeyStore(state / "identity.sqlite").create("bench", ["bench"], None)
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    twistd = str(Path(sys.executable).parent / "twistd")
    argv = [twistd, "-n", "--pidfile=", "-l", str(work / "sealgate.log")]
    if profile:
        argv += ["--profile", profile, "--profiler", "cprofile", "--savestats"]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--copy-rows", type=int, default=2_000_000)
    ap.add_argument("--profile", help="write cProfile stats of the sealgate process here")
    ap.add_argument("--preset", help="guard with this rule preset (e.g. production-safe)")
    args = ap.parse_args()
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
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
        sg, sport, key = startSealgate(pg, work, args.profile, args.preset)
        procs.append(sg)
        targets = [("direct", pg.port, pw, SCRAM_USER)]
        if bouncer is not None:
            targets.append(("pgbouncer", bport, pw, SCRAM_USER))
        targets.append(("twisted fwd", fport, pw, SCRAM_USER))
        targets.append(("sealgate", sport, key, "bench"))

        print(f"pgbench -S, {args.clients} clients, {args.seconds} s (scale 10)")
        tps = {}
        owners = {"pgbouncer": bouncer, "twisted fwd": fwd, "sealgate": sg}
        for name, port, password, user in targets:
            proc = owners.get(name)
            cpu0 = cpuSeconds(proc.pid) if proc else 0.0
            own0 = cpuSeconds(proc.pid, children=False) if proc else 0.0
            tps[name], lat = pgbench(pg, port, password, user, args.seconds, args.clients)
            ratio = f"  ({tps[name] / tps['direct']:.1%} of direct)" if name != "direct" else ""
            # On a shared machine TPS follows the CPU a proxy gets; its CPU per transaction does not.
            txns = tps[name] * args.seconds
            cost = f"  [{(cpuSeconds(proc.pid) - cpu0) / txns * 1e6:.0f} us CPU/txn" if proc else ""
            if name == "sealgate":
                own = (cpuSeconds(proc.pid, children=False) - own0) / txns * 1e6
                cost += f", of which the gateway process {own:.0f} us, its store writer the rest"
            cost += "]" if proc else ""
            print(f"  {name:11s} {tps[name]:10.0f} tps  latency avg {lat:.3f} ms{ratio}{cost}")
        print(f"  target: sealgate >= 40% of direct -> "
              f"{'met' if tps['sealgate'] >= 0.4 * tps['direct'] else 'NOT met'}")

        print(f"COPY (SELECT ...) TO STDOUT, {args.copy_rows} rows via psql, median of 3")
        secs = {}
        for name, port, password, user in targets:
            secs[name] = copyOut(pg, port, password, user, args.copy_rows)
            ratio = (f"  ({secs['direct'] / secs[name]:.1%} of direct throughput)"
                     if name != "direct" else "")
            print(f"  {name:11s} {secs[name]:8.2f} s  {args.copy_rows / secs[name]:10.0f} rows/s{ratio}")
        print(f"  target: sealgate >= 60% of direct -> "
              f"{'met' if secs['direct'] / secs['sealgate'] >= 0.6 else 'NOT met'}")

        print("p50 latency of one indexed SELECT, one client (psycopg, 2000 queries)")
        lat = {}
        for name, port, password, user in targets:
            lat[name] = p50(port, password, user)
            added = f"  (+{lat[name] - lat['direct']:.0f} us)" if name != "direct" else ""
            print(f"  {name:11s} {lat[name]:8.0f} us{added}")
        print(f"  target: sealgate adds < 250 us -> "
              f"{'met' if lat['sealgate'] - lat['direct'] < 250 else 'NOT met'}")
    finally:
        for p in procs:
            stop(p)
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.profile and os.path.exists(args.profile):
            import pstats

            print(f"\nsealgate hot path (cProfile, top 25 by internal time), stats in {args.profile}")
            pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
