"""Run sealgate the way operators do: C{twistd -n sealgate} in a subprocess, and the CLI."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def environment(extraPath=()) -> dict:
    """The tree under test first on the path (the installed copy may be older)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extraPath), str(REPO / "src"), str(REPO)])
    env.pop("SEALGATE_CONFIG", None)
    env.pop("SEALGATE_TOKEN", None)
    return env


class GatewayProcess:
    """
    A gateway under twistd.  Listeners should use port 0; L{port} reads the
    port each connection got from the gateway's own log.
    """

    def __init__(self, directory: Path, configText: str, extraPath=()):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "sealgate.toml"
        self.config.write_text(configText)
        self.logPath = self.directory / "gateway.log"
        self.env = environment(extraPath)
        self.process = None

    def start(self, timeout: float = 60) -> "GatewayProcess":
        self._log = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "sealgate", "--config", str(self.config)],
            cwd=self.directory, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while "Admin API on" not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"gateway did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def port(self, connection: str) -> int:
        m = re.search(rf"Connection {re.escape(connection)} listening on .*?port=(\d+)", self.log())
        assert m, f"no listener for {connection} in the log"
        return int(m.group(1))

    @property
    def adminPort(self) -> int:
        return int(re.search(r"Admin API on .*?port=(\d+)", self.log()).group(1))

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()

    def cli(self, *args, token=None, check=True, input=None) -> subprocess.CompletedProcess:
        return runCLI("--config", str(self.config), *args, env=self.env, token=token,
                      check=check, input=input, cwd=self.directory)


def runCLI(*args, env=None, token=None, check=True, input=None, cwd=None):
    env = dict(env or environment())
    if token:
        env["SEALGATE_TOKEN"] = token
    r = subprocess.run([str(BIN / "sealgate"), *args], env=env, capture_output=True, text=True,
                       input=input, cwd=cwd, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"sealgate {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r
