"""The C{sealgate} command: dispatches to one module per command group."""

import argparse
import importlib
import sys
from importlib import metadata

from sealgate.cli._common import CommandError, configPath, loadConfigFor  # noqa: F401 (API)
from sealgate.fleetdb import FleetDBError

#: Each module has C{register(subparsers)}; its handlers take the parsed
#: arguments and return an exit code.
COMMAND_MODULES = (
    "sealgate.cli.keys",
    "sealgate.cli.approvals",
    "sealgate.cli.store",
    "sealgate.cli.fleetstore",
    "sealgate.cli.sessions",
    "sealgate.cli.sshkeys",
    "sealgate.cli.configcheck",
    "sealgate.cli.completion",
    "sealgate.cli.witness",
    "sealgate.cli.monitor",
)


def version() -> str:
    try:
        return metadata.version("sealgate")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sealgate", description="sealgate access gateway")
    parser.add_argument("--config", dest="global_config",
                        help="config file (default: $SEALGATE_CONFIG)")
    parser.add_argument("--version", action="version", version=f"sealgate {version()}")
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
    args.parser = parser
    # A subcommand's own --config (keys, config check) wins over the global one.
    if getattr(args, "config", None) is None:
        args.config = args.global_config
    try:
        code = args.handler(args)
    except CommandError as e:
        print(f"sealgate: {e}", file=sys.stderr)
        return 2
    except FleetDBError as e:
        # The message carries the URL with its password replaced.
        print(f"sealgate: {e}\n  fix: check that the fleet database ([gateway] store_env or "
              "store_file) is up and reachable from here", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
