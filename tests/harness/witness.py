"""A witness under real twistd (C{twistd -n sealgate-witness}), with a key made for the test."""

import re
import signal
import subprocess
import time
from pathlib import Path

from sealgate.recording.cosignature import Cosigner
from tests.harness.twistd import BIN, environment


class WitnessProcess:
    """Listens on an OS-picked port; L{url} is read from its own log."""

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
        self.port = 0

    @property
    def vkey(self) -> str:
        return self.cosigner.verifier.vkey()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def start(self, timeout: float = 60) -> "WitnessProcess":
        if self.port:
            # Restarted on the port the gateway was configured with.
            text = self.config.read_text()
            self.config.write_text(text.replace(self.listen, f"tcp:port={self.port}:interface=127.0.0.1"))
            self.listen = f"tcp:port={self.port}:interface=127.0.0.1"
        self._out = open(self.logPath, "ab")
        mark = len(self.log())
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "sealgate-witness", "--config", str(self.config)],
            cwd=self.directory, env=environment(), stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"Witness \S+ \(.*?\) on .*?port=(\d+)", self.log()[mark:])):
            if self.process.poll() is not None:
                raise RuntimeError(f"witness exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"witness did not start:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(m.group(1))
        return self

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
            self._out.close()
