"""The SSH protocol plugin: options, factory and replay for [[connections]] with protocol = "ssh"."""

from pathlib import Path
from typing import Any

import attrs
from zope.interface import implementer

from sealgate.config import Table, resolveSecret
from sealgate.export import TEXT, ExportFormat
from sealgate.fleet.keys import sshKeyStore
from sealgate.interfaces import IProtocolPlugin
from sealgate.protocols.ssh.asciicast import replay
from sealgate.protocols.ssh.hostkeys import knownHostsName, loadHostKeys
from sealgate.protocols.ssh.server import GatewaySSHFactory

__all__ = ["SSHOptions", "SSHPlugin", "knownHostsName", "plugin"]


@attrs.define(repr=False)
class SSHOptions:
    """A connection's validated options.  Secrets are held, never shown (no repr)."""

    username: str
    known_hosts: str
    privateKey: Any = None
    password: str | None = None
    host_key_alias: str | None = None
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False
    env_allow: tuple[str, ...] = ("LANG", "LC_*")
    mask_holdback: float = 0.005
    #: Seconds to reach the backend and log in to it before the client is told.
    connect_timeout: float = 10.0

    def __repr__(self) -> str:
        return f"SSHOptions(username={self.username!r}, known_hosts={self.known_hosts!r})"


@implementer(IProtocolPlugin)
class SSHPlugin:
    name = "ssh"
    ruleKeys = ("commands",)
    exportFormats = (
        ExportFormat("asciicast", "application/x-asciicast", ".cast", "asciicast v2 (asciinema play)",
                     "sealgate.protocols.ssh.asciicast:exportCast", player="asciicast"),
        ExportFormat("transcript", TEXT, ".txt", "terminal output, exec commands and sftp operations",
                     "sealgate.protocols.ssh.asciicast:exportTranscript", player="text"),
    )

    def parseOptions(self, options: dict, where) -> SSHOptions:
        from twisted.conch.ssh import keys

        t = Table(options, where)
        username = t.str("username", required=True)
        knownHosts = t.str("known_hosts", required=True)
        if not Path(knownHosts).is_file():
            raise where.error("known_hosts", f"{knownHosts} is not a readable file",
                              "create it with ssh-keyscan -p PORT HOST > FILE and check the "
                              "fingerprints; sealgate never trusts a backend key on first use")
        keyFile = t.str("private_key_file")
        privateKey = password = None
        if keyFile:
            try:
                privateKey = keys.Key.fromFile(keyFile)
            except (OSError, keys.BadKeyError, keys.EncryptedKeyError) as e:
                raise where.error("private_key_file", f"cannot load {keyFile}: {e}",
                                  "give an unencrypted OpenSSH or PEM private key readable by "
                                  "sealgate")
            if t.str("password_env") or t.str("password_file"):
                raise where.error("private_key_file", "both a key and a password are set",
                                  "keep private_key_file or password_env/password_file")
        else:
            password = resolveSecret(t, "password", required=False)
            if password is None:
                raise where.error("private_key_file", "no backend credential",
                                  'set private_key_file = "/path" or password_env = "VAR"')
        opts = SSHOptions(
            username=username, known_hosts=knownHosts, privateKey=privateKey, password=password,
            host_key_alias=t.str("host_key_alias"),
            allow_port_forwarding=t.bool("allow_port_forwarding", False),
            allow_agent_forwarding=t.bool("allow_agent_forwarding", False),
            env_allow=t.strings("env_allow", ("LANG", "LC_*")),
            mask_holdback=t.duration("mask_holdback", 0.005),
            connect_timeout=t.timeout("connect_timeout", 10.0),
        )
        if opts.mask_holdback > 0.1:
            raise where.error("mask_holdback", "must be at most 100ms",
                              "keep it small: it delays terminal output that may start a "
                              "masked value (default 5ms)")
        t.finish()
        return opts

    def makeFactory(self, connection, gateway):
        stateDir = gateway.config.gateway.state_dir
        return GatewaySSHFactory(connection, gateway, loadHostKeys(stateDir),
                                 sshKeyStore(gateway.config.gateway))

    def replay(self, frames, out, speed):
        replay(frames, out, speed)


plugin = SSHPlugin()
