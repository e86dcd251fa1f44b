"""PostgreSQL's regression suite (parallel_schedule) with pg_regress, direct and through sealgate with masking on.

Run from the repository root (not part of the default suite; many minutes):

    /work/main/.venv/bin/python tests/interop/pg_regress_masked.py [--src DIR] [--work DIR]
        [--max-connections 8] [--keep] [--only direct|sealgate]

The suite's sql/, expected/, data/ and regress.c come from --src (a
PostgreSQL 15 source tree, or its src/test/regress), else from the
distribution's source package (`apt-get source postgresql-15`, with a
private deb-src list so the machine's apt configuration is not touched),
cached under --work.  regress.so is compiled against the installed server
headers (postgresql-server-dev-15); autoinc.so and refint.so come from the
server's own lib directory.

A throwaway PostgreSQL 15 (tests/harness/postgres.py) gets a database
`regression` with the settings pg_regress gives the databases it creates.
The suite runs once directly and once through `twistd sealgate` with

    [masking]
    detectors = ["credit_card", "email"]

Then, for every test that fails through the gateway, its output is compared
with the direct run's (what the server itself printed): when every differing
line pair differs only where the gateway's line has `*` (same length, each
`*` standing for one character of the direct line), the test is
"masked-as-documented"; otherwise "other", and the first differing lines are
shown.  The count of failing tests and each one's class are printed.
"""

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.harness.twistd import GatewayProcess  # noqa: E402

PGXS = Path("/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress")
PGLIB = Path("/usr/lib/postgresql/15/lib")
BINDIR = Path("/usr/lib/postgresql/15/bin")
SERVER_INCLUDE = Path("/usr/include/postgresql/15/server")

#: What pg_regress's create_database() sets on each database it makes.
DB_SETTINGS = """
ALTER DATABASE regression SET lc_messages TO 'C';
ALTER DATABASE regression SET lc_monetary TO 'C';
ALTER DATABASE regression SET lc_numeric TO 'C';
ALTER DATABASE regression SET lc_time TO 'C';
ALTER DATABASE regression SET bytea_output TO 'hex';
ALTER DATABASE regression SET timezone_abbreviations TO 'Default';
"""

MASKING = """
[masking]
detectors = ["credit_card", "email"]
"""

_RESULT = re.compile(r"^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))", re.M)


def regressSource(src: Path | None, cache: Path) -> Path:
    """The src/test/regress directory: from C{src}, else the distribution's source package."""
    if src is not None:
        for candidate in (src / "src" / "test" / "regress", src):
            if (candidate / "parallel_schedule").exists():
                return candidate
        raise SystemExit(f"{src} has no parallel_schedule (give a PostgreSQL source tree)")
    found = sorted(cache.glob("postgresql-15.*/src/test/regress/parallel_schedule"))
    if found:
        return found[-1].parent
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "src.list").write_text(
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://deb.debian.org/debian bookworm main\n")
    opts = [f"-oDir::Etc::SourceList={apt / 'src.list'}", "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={apt / 'lists'}"]
    subprocess.run(["apt-get", *opts, "update"], check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", *opts, "source", "--download-only", "postgresql-15"], cwd=cache,
                   check=True, capture_output=True, timeout=600)
    tarball = sorted(cache.glob("postgresql-15_*.orig.tar.*"))[-1]
    top = re.match(r"postgresql-15_([\d.]+)\.orig", tarball.name).group(1)
    subprocess.run(["tar", "xf", str(tarball), f"postgresql-{top}/src/test/regress"], cwd=cache,
                   check=True)
    return cache / f"postgresql-{top}" / "src" / "test" / "regress"


def buildLibs(regress: Path, libdir: Path) -> None:
    """regress.so from the suite's regress.c; the server's autoinc and refint beside it."""
    libdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O1", "-fPIC", "-shared", f"-I{SERVER_INCLUDE}",
                    "-o", str(libdir / "regress.so"), str(regress / "regress.c")], check=True)
    for name in ("autoinc.so", "refint.so"):
        target = libdir / name
        if not target.exists():
            target.symlink_to(PGLIB / name)


def runSuite(regress: Path, libdir: Path, out: Path, port: int, user: str, password: str,
             maxConnections: int) -> dict[str, str]:
    """pg_regress --use-existing against 127.0.0.1:C{port}; C{test name -> ok | FAILED}."""
    if out.exists():
        shutil.rmtree(out)
    (out / "results").mkdir(parents=True)
    # Server-side COPY TO writes into results/ as the postgres system user.
    for d in (out, out / "results"):
        os.chmod(d, 0o777)
    env = dict(os.environ, PGPASSWORD=password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="30")
    argv = [str(PGXS), "--use-existing", "--dbname=regression", "--host=127.0.0.1",
            f"--port={port}", f"--user={user}", f"--inputdir={regress}", f"--outputdir={out}",
            f"--schedule={regress / 'parallel_schedule'}", f"--dlpath={libdir}",
            f"--bindir={BINDIR}", f"--max-connections={maxConnections}"]
    proc = subprocess.run(argv, cwd=out, env=env, capture_output=True, text=True, timeout=14400)
    (out / "pg_regress.log").write_text(proc.stdout + proc.stderr)
    return {m.group(1): m.group(2) for m in _RESULT.finditer(proc.stdout)}


def _maskedForm(masked: str, clear: str) -> bool:
    """True when C{masked} is C{clear} with some characters replaced by C{*}, and differs."""
    if len(masked) != len(clear) or masked == clear:
        return False
    return all(m == c or m == "*" for m, c in zip(masked, clear, strict=True))


def classify(through: list[str], direct: list[str]) -> tuple[str, list[str]]:
    """masked-as-documented when every differing line pair is a masked form; else other."""
    bad: list[str] = []
    masked = 0
    matcher = difflib.SequenceMatcher(a=direct, b=through, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and a1 - a0 == b1 - b0:
            for clear, got in zip(direct[a0:a1], through[b0:b1], strict=True):
                if _maskedForm(got, clear):
                    masked += 1
                else:
                    bad += [f"- {clear}", f"+ {got}"]
        else:
            bad += [f"- {x}" for x in direct[a0:a1]] + [f"+ {x}" for x in through[b0:b1]]
    if bad:
        return "other", bad
    return ("masked-as-documented" if masked else "same-as-direct"), []


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def startGateway(pg: PostgresServer, work: Path) -> tuple[GatewayProcess, int, str]:
    from sealgate.identity.apikeys import APIKeyStore

    state = work / "state"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(mode=0o700, parents=True)
    os.environ["REGRESS_PG_PASSWORD"] = pg.password(pg.superuser)
    config = f"""
[gateway]
state_dir = "{state}"
admin = "tcp:0:interface=127.0.0.1"

[[roles]]
name = "regress"
groups = ["regress"]
connections = ["*"]

[[connections]]
name = "regression"
protocol = "postgres"
listen = "tcp:0:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port={pg.port}"
[connections.options]
database = "regression"
username = "{pg.superuser}"
password_env = "REGRESS_PG_PASSWORD"
allow_cleartext_on_loopback = true
{MASKING}"""
    key = APIKeyStore(state / "identity.sqlite").create("regress", ["regress"], None)
    gateway = GatewayProcess(work / "gateway", config).start()
    return gateway, gateway.port("regression"), key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="PostgreSQL 15 source tree (default: apt-get source)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sealgate-regress")
    ap.add_argument("--max-connections", type=int, default=8)
    ap.add_argument("--only", choices=("direct", "sealgate"))
    ap.add_argument("--keep", action="store_true", help="keep the outputs under --work")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    regress = regressSource(args.src, work)
    buildLibs(regress, work / "lib")
    pg = PostgresServer().start()
    gateway = None
    results: dict[str, dict[str, str]] = {}
    try:
        pg._local("postgres", "CREATE DATABASE regression TEMPLATE template0;")
        pg._local("postgres", DB_SETTINGS)
        su, pw = pg.superuser, pg.password(pg.superuser)
        if args.only != "sealgate":
            results["direct"] = runSuite(regress, work / "lib", work / "direct", pg.port, su, pw,
                                         args.max_connections)
            # A clean database for the second run, as pg_regress would make.
            pg._local("postgres", "DROP DATABASE regression WITH (FORCE);"
                      "CREATE DATABASE regression TEMPLATE template0;")
            pg._local("postgres", DB_SETTINGS)
        if args.only != "direct":
            gateway, port, key = startGateway(pg, work)
            results["sealgate"] = runSuite(regress, work / "lib", work / "sealgate", port,
                                           "regress", key, args.max_connections)
    finally:
        if gateway is not None:
            gateway.stop()
        pg.stop()
    report(work, results)
    if not args.keep:
        for name in ("direct", "sealgate", "gateway", "state"):
            shutil.rmtree(work / name, ignore_errors=True)


def report(work: Path, results: dict[str, dict[str, str]]) -> None:
    for name, r in results.items():
        failed = sorted(t for t, v in r.items() if v == "FAILED")
        print(f"{name:>9}: {len(r)} tests, {len(failed)} failed: {' '.join(failed)}")
    if "sealgate" not in results or "direct" not in results:
        return
    failed = sorted(t for t, v in results["sealgate"].items() if v == "FAILED")
    counts: dict[str, int] = {}
    print(f"failing through sealgate with masking on: {len(failed)}")
    for test in failed:
        through = _lines(work / "sealgate" / "results" / f"{test}.out")
        direct = _lines(work / "direct" / "results" / f"{test}.out")
        kind, bad = classify(through, direct)
        counts[kind] = counts.get(kind, 0) + 1
        print(f"  {test}: {kind}")
        for line in bad[:6]:
            print(f"      {line[:160]}")
    print("by class: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
