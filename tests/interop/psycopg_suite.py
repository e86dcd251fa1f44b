"""psycopg's own test suite at a pinned version, run directly against PostgreSQL and through sealgate.

Run from the repository root (not part of the default suite; minutes):

    /work/main/.venv/bin/python tests/interop/psycopg_suite.py [--ref 3.3.4] [--git-dir DIR]
        [--keep] [-- extra pytest arguments]

The suite comes from psycopg's sdist for the installed version when that
ships tests/, else from a git copy of github.com/psycopg/psycopg (--git-dir,
by default the mirror the search tool's fetch leaves in /work/.mirror) at
--ref (default: the newest tag not after the installed version).  It runs in
the shared virtualenv's Python with anyio (from PyPI) installed into the
temporary directory, against a throwaway PostgreSQL 15 (tests/harness/postgres.py), once
directly and once through `twistd sealgate` with a rule that makes every
statement go through the classifier and denies nothing.  Both results are
printed, then the tests that fail through the gateway only.
"""

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import stop  # noqa: E402  (bench/_common.py)
from postgres import startSealgate  # noqa: E402  (bench/postgres.py)

from tests.harness.postgres import SCRAM_USER, PostgresServer  # noqa: E402

MIRROR = Path("/work/.mirror/psycopg+psycopg/repo")

#: Every statement is classified (a rule exists) and none is denied.
POLICY = """
[[rules]]
name = "classify-everything"
action = "deny"
relations = ["sealgate_interop_no_such_table"]
"""

#: Markers the psycopg suite uses for tests that need what this machine
#: lacks (gevent, numpy, DNS, PostGIS) or that time the machine.
MARKERS = "not slow and not timing and not flakey and not gevent and not numpy and not dns " \
          "and not postgis and not proxy and not subprocess and not pool and not crdb"


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def fetchSuite(work: Path, gitDir: Path, ref: str | None) -> str:
    """Put psycopg's tests/ and pyproject.toml under C{work}; return where they came from."""
    import psycopg

    installed = psycopg.__version__
    sdist = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"psycopg=={installed}", "-d", str(sdist), "-q"], check=False,
                   capture_output=True, timeout=300)
    for archive in sdist.glob("psycopg-*.tar.gz"):
        with tarfile.open(archive) as t:
            names = [m for m in t.getmembers() if "/tests/" in m.name]
            if names:
                t.extractall(work / "src", members=names, filter="data")
                top = next((work / "src").iterdir())
                (work / "suite").symlink_to(top)
                return f"the psycopg {installed} sdist"
    if not gitDir.exists():
        raise SystemExit(f"the psycopg {installed} sdist has no tests/ and {gitDir} does not exist: "
                         "fetch github:psycopg/psycopg and pass --git-dir")
    if ref is None:
        tags = subprocess.run(["git", "--git-dir", str(gitDir), "tag"], capture_output=True,
                              text=True, check=True).stdout.split()
        tags = [t for t in tags if re.fullmatch(r"\d+\.\d+\.\d+", t)
                and _version(t) <= _version(installed)]
        ref = max(tags, key=_version)
    out = work / "suite"
    out.mkdir()
    archive = subprocess.run(["git", "--git-dir", str(gitDir), "archive", ref, "tests", "tools",
                              "pyproject.toml"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "x", "-C", str(out)], input=archive, check=True)
    return f"psycopg's git tag {ref} (installed psycopg: {installed})"


def installDeps(work: Path) -> Path:
    """The suite's async tests need anyio: installed into a directory of its own."""
    deps = work / "deps"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(deps),
                    "anyio>=4"], check=True, timeout=600)
    return deps


def runSuite(deps: Path, suite: Path, dsn: str, extra: list[str], log: Path) -> dict:
    argv = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:twisted", "-p", "no:randomly",
            "-o", f"cache_dir={log.parent / 'cache'}", "-p", "no:xdist", "-o", "filterwarnings=", "-rfE",
            "--ignore=tests/pool", "--ignore=tests/crdb", "--ignore=tests/scripts",
            "--ignore=tests/test_typing.py", "-m", MARKERS, "--test-dsn", dsn, *extra]
    env = dict(os.environ, PSYCOPG_IMPL=os.environ.get("PSYCOPG_IMPL", "binary"),
               PYTHONPATH=str(deps))
    with open(log, "w") as f:
        subprocess.run(argv, cwd=suite, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=7200)
    text = log.read_text()
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*?) in [\d.]+s", text, re.M)
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)))
    return {"summary": summary[-1] if summary else "(no summary: see the log)", "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", help="psycopg git tag (default: newest not after the installed one)")
    ap.add_argument("--git-dir", type=Path, default=MIRROR)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("pytest", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealgate-psycopg-"))
    os.chmod(work, 0o755)
    source = fetchSuite(work, args.git_dir, args.ref)
    deps = installDeps(work)
    pg = PostgresServer().start()
    gateway = None
    try:
        gateway, port, key = startSealgate(pg, work, None, policy=POLICY)
        direct = pg.dsn(SCRAM_USER, sslmode="disable")
        through = (f"host=127.0.0.1 port={port} user=bench dbname=app password={key} "
                   "sslmode=disable")
        results = {}
        for name, dsn in (("direct", direct), ("sealgate", through)):
            results[name] = runSuite(deps, work / "suite", dsn, args.pytest,
                                     work / f"pytest-{name}.log")
        print(f"psycopg suite from {source}; markers: {MARKERS}")
        for name, r in results.items():
            print(f"{name:>9}: {r['summary']}")
        only = [t for t in results["sealgate"]["failed"] if t not in results["direct"]["failed"]]
        print(f"failing through sealgate only ({len(only)}):")
        for t in only:
            print(f"  {t}")
        print(f"logs: {work}/pytest-direct.log, {work}/pytest-sealgate.log" if args.keep else "")
    finally:
        stop(gateway)
        pg.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
