"""What every command module shares: one-line errors and loading the config it needs."""

import os

from sealgate.config import ConfigError, GatewayConfig, loadConfig


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


def fleetOf(args, gateway):
    """
    The fleet database of a config loaded without secrets, its URL read
    now (a fleet command needs it), or None for the embedded store.
    """
    if gateway.fleet is None:
        return None
    from sealgate.fleetdb import resolveFleet

    try:
        return resolveFleet(configPath(args))
    except ConfigError as e:
        raise CommandError(str(e))
