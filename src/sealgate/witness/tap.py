"""twistd integration for the witness: C{twistd -n sealgate-witness --config witness.toml}."""

import sys

from twisted.python import usage


class Options(usage.Options):
    synopsis = "--config PATH"
    longdesc = "Run a C2SP tlog-witness that cosigns sealgate checkpoints."
    optParameters = [["config", "c", "witness.toml", "Path to the witness TOML config."]]


def makeService(options, reactor=None):
    from sealgate.witness.config import ConfigError, loadWitnessConfig
    from sealgate.witness.service import WitnessService

    try:
        config = loadWitnessConfig(options["config"])
    except ConfigError as e:
        sys.stderr.write(f"sealgate witness: bad config: {e}\n")
        raise SystemExit(1)
    return WitnessService(config, reactor)
