"""The C{sealgate} command: dispatches to one module per command group."""

import argparse
import importlib
import os
import sys

from sealgate.config import ConfigError, GatewayConfig, loadConfig

#: Each module has C{register(subparsers)}; its handlers take the parsed
#: arguments and return an exit code.
COMMAND_MODULES = (
    "sealgate.cli.keys",
    "sealgate.cli.approvals",
    "sealgate.cli.store",
    "sealgate.cli.sessions",
    "sealgate.cli.sshkeys",
)


class CommandError(Exception):
    """A failure to report in one line, without a traceback."""


def configPath(args) -> str:
    path = getattr(args, "config", None) or os.environ.get("SEALGATE_CONFIG")
    if not path:
        raise CommandError("no config: pass --config PATH or set SEALGATE_CONFIG")
    return path


def loadConfigFor(args) -> GatewayConfig:
    """The config named by --config or SEALGATE_CONFIG; errors become CommandError."""
    try:
        return loadConfig(configPath(args))
    except ConfigError as e:
        raise CommandError(str(e))


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sealgate", description="sealgate access gateway")
    parser.add_argument("--config", help="config file (default: $SEALGATE_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = buildParser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except CommandError as e:
        print(f"sealgate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
