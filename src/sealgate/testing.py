"""Public test helpers for sealgate and its plugin authors: an in-process gateway and API keys.

Like treq.testing, these are API: a third-party protocol plugin's tests start
a real gateway (real store, real identity, real chain) with them.
"""

import re
from pathlib import Path

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort

from sealgate.config import loadConfig
from sealgate.service import GatewayService, StartupError


def _raise(message: str) -> None:
    raise StartupError(message)


def _tcpPort(listening: IListeningPort) -> int:
    host = listening.getHost()
    if not isinstance(host, (IPv4Address, IPv6Address)):
        raise TypeError(f"{host!r} is not a TCP address; this gateway listens elsewhere")
    return host.port


@attrs.define
class RunningGateway:
    """A started gateway; L{port} tells where a connection listens."""

    service: GatewayService
    path: Path

    @property
    def gateway(self):
        return self.service.gateway

    @property
    def config(self):
        return self.service.config

    @property
    def stateDir(self) -> Path:
        return self.service.config.gateway.state_dir

    def port(self, connection: str) -> int:
        return _tcpPort(self.service.ports[connection])

    @property
    def adminPort(self) -> int:
        return _tcpPort(self.service.adminPort)

    def createKey(self, name: str, groups=(), expires: float | None = None) -> str:
        """Create an API key for a non-human identity; returns the key."""
        from sealgate.identity.apikeys import APIKeyStore

        return APIKeyStore(self.stateDir / "identity.sqlite").create(name, list(groups), expires)

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.service.stopService)


async def startGateway(configText: str, directory: Path, reactor=None) -> RunningGateway:
    """
    Write C{configText} to C{directory}/sealgate.toml and start it in-process.

    Use C{"tcp:0:interface=127.0.0.1"} listen endpoints: the OS picks the
    ports; C{state_dir} defaults to C{directory}/state.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    configText = _testDefaults(configText, directory / "state")
    path = directory / "sealgate.toml"
    path.write_text(configText)
    config = loadConfig(path)
    service = GatewayService(config, reactor=reactor, onFatal=_raise, installSignals=False)
    service.startService()
    await service.startedDeferred
    return RunningGateway(service, path)


def _testDefaults(text: str, stateDir: Path) -> str:
    """
    A state_dir under the test's directory and an admin API on a port the
    OS picks, unless the config sets them: the shipped default (8700) would
    collide between tests.
    """
    lines = ""
    if not re.search(r"^\s*state_dir\s*=", text, re.M):
        lines += f'state_dir = "{stateDir}"\n'
    if not re.search(r"^\s*admin\s*=", text, re.M):
        lines += 'admin = "tcp:0:interface=127.0.0.1"\n'
    if not lines:
        return text
    if "[gateway]\n" in text:
        return text.replace("[gateway]\n", "[gateway]\n" + lines, 1)
    return f"[gateway]\n{lines}\n" + text
