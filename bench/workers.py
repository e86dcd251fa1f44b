"""Workers benchmark: pgbench -S and wrk GET /json through sealgate embedded, as one fleet node, and as 1 and 2 worker processes.

Run from the repository root:  .venv/bin/python bench/workers.py [--seconds 15] [--clients 8]
                               [--rounds 3]

PostgreSQL (tests/harness/postgres.py) is both the backend and the fleet's
database; nginx (bench/http_proxy.py's) the HTTP backend.  The policy is
bench/http_proxy.py's: a deny rule on DELETE /admin, the card and e-mail
detectors and JSON field masking (so the pgbench line is postgres.py's
"+det" one).  Each line prints TPS (or req/s) and the CPU per transaction
(or request) of the gateway (every worker, every store writer).  Target
(issue 16): 2 workers are not slower than 1; issue 18 asks for both figures.
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
sys.path.insert(0, str(ROOT / "bench"))

from _common import cpuSeconds, stop, waitPort  # noqa: E402
from http_proxy import startNginx, webConfig, wrk  # noqa: E402
from postgres import gatewayConfig, pgbench  # noqa: E402

from tests.harness._proc import freePort  # noqa: E402
from tests.harness.postgres import SCRAM_USER, PostgresServer  # noqa: E402

DB_ENV = "BENCH_FLEET_DB"


def startGateway(pg, work: Path, name: str, fleet: bool, workers: int, web: int):
    """A gateway (C{workers} processes in fleet mode): C{(process, postgres port, HTTP port, API key)}."""
    port, webPort = freePort(), freePort()
    state = work / name / "state"
    state.mkdir(parents=True, mode=0o700)
    head = f'[gateway]\nstate_dir = "{state}"\nadmin = "tcp:0:interface=127.0.0.1"\n'
    if fleet:
        head += f'store_env = "{DB_ENV}"\nnode = "{name}"\nworkers = {workers}\n'
    conf = work / name / "sealgate.toml"
    conf.write_text(gatewayConfig(head, port, pg.port, webConfig(webPort, web)))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    bindir = Path(sys.executable).parent
    key = subprocess.run([str(bindir / "sealgate"), "--config", str(conf), "keys", "create",
                          "--name", f"bench-{name}", "--group", "bench"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    # The workers log to their stdout: one file for all of them.
    log = work / name / "sealgate.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bindir / "twistd"), "-n", "--pidfile=", "sealgate",
                                 "--config", str(conf)], cwd=work / name, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    waitPort(port, proc, timeout=60)
    waitPort(webPort, proc, timeout=60)
    deadline = time.time() + 120
    while log.read_text(errors="replace").count("Admin API on") < workers:
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"{name}: the workers did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, port, webPort, key


LABELS = {"embedded": "embedded (no fleet)", "fleet-1": "fleet, 1 worker", "fleet-2": "fleet, 2 workers"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-bench-fleet-"))
    os.chmod(work, 0o755)
    pg = PostgresServer().start()
    nginx, web, _label = startNginx(work, 1 << 20)
    os.environ["BENCH_BACKEND_TOKEN"] = "bench-backend-secret"
    try:
        pw = pg.password(SCRAM_USER)
        os.environ["BENCH_PG_PASSWORD"] = pw
        env = dict(os.environ, PGPASSWORD=pw, PGSSLMODE="disable")
        subprocess.run([pg._bin("pgbench"), "-i", "-s", "10", "-q", "-h", "127.0.0.1", "-p",
                        str(pg.port), "-U", SCRAM_USER, "app"], env=env, check=True,
                       capture_output=True, timeout=600)
        pg.psql("CREATE DATABASE fleet")
        su = urllib.parse.quote(pg.password(pg.superuser), safe="")
        os.environ[DB_ENV] = f"postgresql://{pg.superuser}:{su}@127.0.0.1:{pg.port}/fleet"
        print(f"pgbench -S, {args.clients} clients, {args.seconds} s (scale 10), "
              f"{os.cpu_count()} cores")
        runs: dict[str, list] = {}
        webRuns: dict[str, list] = {}
        configs = [("embedded", False, 1), ("fleet-1", True, 1), ("fleet-2", True, 2)]
        # Rounds interleaved, so the machine's load falls on every line alike.
        for r in range(args.rounds):
            for name, fleet, workers in configs:
                proc, port, webPort, key = startGateway(pg, work, f"{name}-r{r}", fleet, workers, web)
                try:
                    cpu0 = cpuSeconds(proc.pid)
                    t, lat = pgbench(pg, port, key, f"bench-{name}-r{r}", args.seconds, args.clients)
                    cost = (cpuSeconds(proc.pid) - cpu0) / (t * args.seconds) * 1e6
                    rps, note = wrk(f"http://127.0.0.1:{webPort}/json", args.seconds,
                                    [f"Authorization: Bearer {key}"], proc)
                finally:
                    stop(proc)
                runs.setdefault(name, []).append((t, lat, cost))
                webRuns.setdefault(name, []).append((rps, note))
        tps = {}
        for name, _, _ in configs:
            t, lat, cost = sorted(runs[name])[len(runs[name]) // 2]
            tps[name] = t
            label = LABELS[name]
            every = ", ".join(f"{x[0]:.0f}" for x in runs[name])
            print(f"  {label:20s} {t:9.0f} tps  latency avg {lat:.3f} ms  [{cost:.0f} us CPU/txn]"
                  f"  (median of {every})")
        print(f"wrk -t1 -c32 -d{args.seconds}s GET /json (JSON masking, a deny rule, recording)")
        rates = {}
        for name, _, _ in configs:
            rps, note = sorted(webRuns[name])[len(webRuns[name]) // 2]
            rates[name] = rps
            every = ", ".join(f"{x[0]:.0f}" for x in webRuns[name])
            print(f"  {LABELS[name]:20s} {rps:9.0f} req/s{note}  (median of {every})")
        print(f"  2 workers / 1: {tps['fleet-2'] / tps['fleet-1']:.2f}x tps, "
              f"{rates['fleet-2'] / rates['fleet-1']:.2f}x req/s")
        print(f"  target: 2 workers not slower than 1 -> "
              f"{'met' if tps['fleet-2'] >= tps['fleet-1'] else 'NOT met'} "
              f"({tps['fleet-2'] / tps['fleet-1']:.2f}x)")
    finally:
        stop(nginx)
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
