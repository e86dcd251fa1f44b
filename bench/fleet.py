"""Fleet store benchmark: pgbench -S through sealgate with the embedded SQLite store vs the PostgreSQL store.

Run from the repository root:  .venv/bin/python bench/fleet.py [--seconds 15] [--clients 8] [--rounds 2]
                               [--store postgresql]

One PostgreSQL (tests/harness/postgres.py) is both the backend pgbench
talks to and, in a database of its own, the fleet store.  The same gateway
config and policy as bench/postgres.py runs twice per round, once per
store, rounds interleaved (SQLite, PostgreSQL, SQLite, ...) so machine
load falls on both alike.  Per transaction it prints the CPU of the
gateway process and its store writer, and for the PostgreSQL store also
the CPU of the database backend serving the writer (work the SQLite store
does inside its writer).  Target: PostgreSQL store <= 1.2x SQLite's
gateway+writer CPU per transaction.  --store postgresql runs only that line.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from _common import cpuSeconds, freePort, stop, waitPort  # noqa: E402  (bench/ is the script's path)
from postgres import POLICY, gatewayConfig, pgbench  # noqa: E402

from tests.harness.postgres import SCRAM_USER, PostgresServer  # noqa: E402

URL_ENV = "BENCH_FLEET_URL"


def startGateway(pg: PostgresServer, work: Path, fleet: bool):
    """sealgate under twistd, recording to SQLite or to the fleet database: C{(process, port, API key)}."""
    port = freePort()
    work.mkdir()
    os.environ["BENCH_PG_PASSWORD"] = pg.password(SCRAM_USER)
    store = f'store_env = "{URL_ENV}"\nnode = "bench"\n' if fleet else ""
    policy = POLICY.replace("{matcher}", 'statements = ["DROP", "TRUNCATE", "DELETE WITHOUT WHERE"]').replace("{detectors}", "")
    conf = work / "sealgate.toml"
    stateDir = work / "state"
    conf.write_text(gatewayConfig(
        f'[gateway]\nstate_dir = "{stateDir}"\nadmin = "tcp:0:interface=127.0.0.1"\n{store}',
        port, pg.port, policy))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    bindir = Path(sys.executable).parent
    created = subprocess.run([str(bindir / "sealgate"), "--config", str(conf), "keys", "create",
                              # one name per run: the fleet database keeps the keys of earlier rounds
                              "--name", f"bench-{work.name}", "--group", "bench"], env=env, capture_output=True, text=True, check=True)
    key = created.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([str(bindir / "twistd"), "-n", "--pidfile=", "-l", str(work / "sealgate.log"),
                             "sealgate", "--config", str(conf)], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waitPort(port, proc)
    return proc, port, key


def storeBackends(pg: PostgresServer) -> list[int]:
    """Pids of the database backends serving a store writer (its connection names itself)."""
    out = pg.psql("SELECT pid FROM pg_stat_activity WHERE application_name = 'sealgate-store'",
                  user=pg.superuser, database="postgres")
    return [int(p) for p in str(out).split()]


def run(pg, work: Path, fleet: bool, seconds: int, clients: int) -> tuple[float, float, float]:
    """C{(tps, gateway+writer us CPU/txn, database backend us CPU/txn)}."""
    proc, port, key = startGateway(pg, work, fleet)
    try:
        pgbench(pg, port, key, "bench", 2, clients)  # warm: caches, the writer's first batches
        backends = storeBackends(pg) if fleet else []
        cpu0 = cpuSeconds(proc.pid)
        db0 = sum(cpuSeconds(b, children=False) for b in backends)
        tps, _ = pgbench(pg, port, key, "bench", seconds, clients)
        txns = tps * seconds
        gw = (cpuSeconds(proc.pid) - cpu0) / txns * 1e6
        db = (sum(cpuSeconds(b, children=False) for b in backends) - db0) / txns * 1e6
    finally:
        stop(proc)
    return tps, gw, db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--store", choices=("both", "postgresql"), default="both")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-fleet-"))
    os.chmod(work, 0o755)
    pg = PostgresServer().start()
    try:
        pw = pg.password(SCRAM_USER)
        env = dict(os.environ, PGPASSWORD=pw, PGSSLMODE="disable")
        subprocess.run([pg.binary("pgbench"), "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", SCRAM_USER, "app"], env=env, check=True, capture_output=True, timeout=600)
        pg.psql("CREATE DATABASE fleet", user=pg.superuser, database="postgres")
        password = urllib.parse.quote(pg.password(pg.superuser), safe="")
        os.environ[URL_ENV] = f"postgresql://{pg.superuser}:{password}@127.0.0.1:{pg.port}/fleet"
        stores = [("postgresql", True)] if args.store == "postgresql" else [("sqlite", False), ("postgresql", True)]
        results: dict = {name: [] for name, _ in stores}
        print(f"pgbench -S through sealgate, {args.clients} clients, {args.seconds} s, {args.rounds} rounds "
              "interleaved (scale 10)")
        for r in range(args.rounds):
            for name, fleet in stores:
                tps, gw, db = run(pg, work / f"{name}-{r}", fleet, args.seconds, args.clients)
                results[name].append((tps, gw, db))
                extra = f", + database backend {db:.0f} us" if fleet else ""
                print(f"  round {r + 1} {name:10s} {tps:8.0f} tps  [{gw:.0f} us CPU/txn gateway+writer{extra}]")
        mean = {n: [sum(x[i] for x in v) / len(v) for i in range(3)] for n, v in results.items()}
        for name, (tps, gw, db) in mean.items():
            extra = f" (+{db:.0f} us in the database backend)" if name == "postgresql" else ""
            print(f"  mean {name:10s} {tps:8.0f} tps  {gw:.0f} us CPU/txn gateway+writer{extra}")
        if "sqlite" in mean:
            ratio = mean["postgresql"][1] / mean["sqlite"][1]
            total = (mean["postgresql"][1] + mean["postgresql"][2]) / mean["sqlite"][1]
            print(f"  PostgreSQL store / SQLite store CPU per txn: {ratio:.2f}x gateway+writer, "
                  f"{total:.2f}x with the database backend")
            print(f"  target: PostgreSQL store <= 1.2x SQLite's CPU/txn -> {'met' if ratio <= 1.2 else 'NOT met'}")
    finally:
        time.sleep(0.1)
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
