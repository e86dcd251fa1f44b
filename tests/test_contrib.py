"""contrib/: the systemd unit is valid and runs the README's command."""

import shlex
import shutil
import subprocess

from tests.harness.twistd import BIN, REPO

UNIT = REPO / "contrib" / "sealgate.service"


def test_systemd_unit_verifies_with_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "needs systemd-analyze: apt-get install systemd (.ci/test does)"
    unit = tmp_path / "sealgate.service"
    # The unit names /opt/sealgate/.venv; point it at this venv so verify
    # can check that every command it runs exists and is executable.
    unit.write_text(UNIT.read_text().replace("/opt/sealgate/.venv/bin/", f"{BIN}/"))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # Unknown or misspelt directives are only warnings to systemd: refuse them too.
    complaints = [line for line in r.stderr.splitlines() if str(unit) in line]
    assert complaints == []


def test_systemd_unit_runs_the_readme_command_and_checks_the_config_first():
    lines = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    start = shlex.split(lines["ExecStart"])
    assert start[0].endswith("/bin/twistd") and start[1:4] == ["-n", "--pidfile=", "sealgate"]
    pre = shlex.split(lines["ExecStartPre"])
    assert pre[1:3] == ["config", "check"] and pre[-1] == start[-1]
    assert lines["KillSignal"] == "SIGTERM" and "HUP" in lines["ExecReload"]
