"""What every command module shares: one-line errors and loading the config it needs."""

import os
from pathlib import Path

from sealgate.config import UNRESOLVED_SECRET, ConfigError, GatewayConfig, loadConfig


class CommandError(Exception):
    """A failure to report in one line, without a traceback."""


def configPath(args) -> str:
    path = getattr(args, "config", None) or os.environ.get("SEALGATE_CONFIG")
    if not path:
        raise CommandError("no config: pass --config PATH or set SEALGATE_CONFIG")
    return path


def hasConfig(args) -> bool:
    return bool(getattr(args, "config", None) or os.environ.get("SEALGATE_CONFIG"))


def loadConfigFor(args, secrets: bool = False) -> GatewayConfig:
    """
    The config named by --config or SEALGATE_CONFIG; errors become
    CommandError.  Commands read the state directory, never a backend, so by
    default backend secrets are checked to be configured but not read: an
    operator needs none of them in the environment.
    """
    try:
        return loadConfig(configPath(args), secrets=secrets)
    except ConfigError as e:
        raise CommandError(str(e))


def fleetURL(args) -> str | None:
    """
    The fleet database's URL for a store command: from C{--store-env VAR},
    else from the config's C{[gateway] store_env}/C{store_file} (read
    now: only this secret, not the backends'), else None (the embedded
    store, also whenever C{--state-dir} is given).
    """
    env = getattr(args, "store_env", None)
    if env:
        url = os.environ.get(env)
        if not url:
            raise CommandError(f"--store-env: environment variable {env} is not set")
        return url
    if getattr(args, "state_dir", None) or not hasConfig(args):
        return None
    fleet = loadConfigFor(args).gateway.fleet
    if fleet is None:
        return None
    if fleet.url != UNRESOLVED_SECRET:
        return fleet.url
    kind, _, name = fleet.source.rpartition(" ")
    if kind == "environment variable":
        url = os.environ.get(name)
        if not url:
            raise CommandError(f"[gateway] store_env: environment variable {name} is not set")
        return url
    try:
        return Path(name).read_text().strip()
    except OSError as e:
        raise CommandError(f"[gateway] store_file: cannot read {name}: {e.strerror}")
