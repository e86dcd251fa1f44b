"""C{sealgate config check}: validate a config exactly as start-up would, without starting."""

import argparse
import json
import sys

from sealgate.cli._common import configPath
from sealgate.config import ConfigError, loadConfig


def register(sub) -> None:
    p = sub.add_parser("config", help="work with the config file")
    s = p.add_subparsers(dest="config_action", metavar="ACTION")
    s.required = True
    check = s.add_parser("check", help="validate the config without starting (exit 0 or 1)")
    check.add_argument("--config", help="config file (default: $SEALGATE_CONFIG)",
                       default=argparse.SUPPRESS)
    check.add_argument("--no-secrets", action="store_true",
                       help="check that secrets are configured without reading them "
                            "(for a machine that does not hold them)")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=check_)


def check_(args) -> int:
    path = configPath(args)
    try:
        config = loadConfig(path, secrets=not args.no_secrets)
    except ConfigError as e:
        _report(args, path, False, str(e), ())
        return 1
    _report(args, path, True, None, config.warnings,
            connections=[{"name": c.name, "protocol": c.protocol, "listen": c.listen}
                         for c in config.connections])
    return 0


def _report(args, path, ok, error, warnings, connections=()) -> None:
    if args.json:
        json.dump({"config": path, "ok": ok, "error": error, "warnings": list(warnings),
                   "connections": list(connections)}, sys.stdout, indent=2)
        print()
        return
    if not ok:
        print(f"sealgate: bad config: {error}", file=sys.stderr)
        return
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    names = ", ".join(f"{c['name']} ({c['protocol']})" for c in connections) or "none"
    print(f"{path}: ok; connections: {names}")
