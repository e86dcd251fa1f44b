"""A witness under real twistd (C{twistd -n sealgate-witness}), with a key made for the test."""

import re
import signal
import subprocess
import time
from pathlib import Path

from sealgate.recording.cosignature import Cosigner
from tests.harness.twistd import BIN, GatewayProcess, environment


class WitnessProcess(GatewayProcess):
    """Listens on an OS-picked port (kept across restarts); L{url} is read from its own log; stop as a gateway."""

    def __init__(self, directory: Path, name: str, logs: dict[str, str], listen: str = "tcp:port=0:interface=127.0.0.1"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cosigner = Cosigner.generate(name)
        self.listen = listen
        keyFile = self.directory / "witness.key"
        keyFile.write_text(self.cosigner.skey() + "\n")
        keyFile.chmod(0o600)
        entries = "".join(f'\n[[logs]]\norigin = "{o}"\nvkey = "{v}"\n' for o, v in logs.items())
        self.config = self.directory / "witness.toml"
        self.config.write_text(f'[witness]\nkey_file = "{keyFile}"\nlisten = "{listen}"\n'
                               f'state_dir = "state"\n{entries}')
        self.logPath = self.directory / "witness.log"
        self.process: subprocess.Popen | None = None
        self.listenPort = 0

    @property
    def vkey(self) -> str:
        return self.cosigner.verifier.vkey()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listenPort}"

    def start(self, timeout: float = 60) -> "WitnessProcess":
        if self.listenPort:
            # Restarted on the port the gateway was configured with.
            text = self.config.read_text()
            self.config.write_text(text.replace(self.listen, f"tcp:port={self.listenPort}:interface=127.0.0.1"))
            self.listen = f"tcp:port={self.listenPort}:interface=127.0.0.1"
        self._log = open(self.logPath, "ab")
        mark = len(self.log())
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "sealgate-witness", "--config", str(self.config)],
            cwd=self.directory, env=environment(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"Witness \S+ \(.*?\) on .*?port=(\d+)", self.log()[mark:])):
            if self.process.poll() is not None:
                raise RuntimeError(f"witness exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"witness did not start:\n{self.log()}")
            time.sleep(0.05)
        self.listenPort = int(m.group(1))
        return self
