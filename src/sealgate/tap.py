"""twistd integration: C{twistd -n sealgate --config PATH}."""

import os
import sys

from twisted.python import usage

DEFAULT_CONFIG = "config/sealgate.toml"


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = ("Run the sealgate access gateway.  The config file is --config, else "
                "$SEALGATE_CONFIG, else config/sealgate.toml.")
    optParameters = [["config", "c", None, "Path to the TOML config file."]]

    def postOptions(self):
        self["config"] = self["config"] or os.environ.get("SEALGATE_CONFIG") or DEFAULT_CONFIG


def makeService(options):
    """Load and validate the config, then build the service (the reactor is resolved late)."""
    from sealgate.config import ConfigError, loadConfig
    from sealgate.service import GatewayService

    try:
        config = loadConfig(options["config"])
    except ConfigError as e:
        # One message for people, no traceback, a non-zero exit.
        sys.stderr.write(f"sealgate: bad config: {e}\n")
        raise SystemExit(1)
    from sealgate.fleet.workers import dieWithParent, workerConfig, workerIndex
    from sealgate.logconfig import makeObserver

    index = workerIndex()
    if index is not None:
        dieWithParent()
    if index is not None or config.gateway.workers > 1:
        config = workerConfig(config, index or 0)

    service = GatewayService(config)
    # twistd logs to what the application offers as its ILogObserver.
    service.logObserver = makeObserver(config.logging, getattr(options, "parent", None))
    return service
