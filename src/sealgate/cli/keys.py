"""`sealgate keys create|list|revoke`: API keys for non-human identities."""

import argparse
import json
import sys
import time
from pathlib import Path

from sealgate.cli._common import CommandError, fleetOf, loadConfigFor
from sealgate.config import parseDuration
from sealgate.identity.apikeys import APIKeyError, APIKeyStore


def register(subparsers) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys for CI jobs and services")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: [gateway] state_dir "
                        "of --config / $SEALGATE_CONFIG)")
    common.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", parents=[common],
                            help="create a key; it is printed once, on the last line")
    create.add_argument("--name", required=True, help="the identity's name, e.g. ci-deploy")
    create.add_argument("--group", action="append", required=True, dest="groups",
                        help="a group the identity is in (repeat for more)")
    create.add_argument("--expires", help='lifetime, e.g. "30d", "12h" (default: never)')
    create.add_argument("--json", action="store_true",
                        help='print {"key": ..., ...} as JSON (the key is still shown only once)')
    create.set_defaults(handler=createKey)

    listing = sub.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=listKeys)

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key by name")
    revoke.add_argument("name")
    revoke.add_argument("--json", action="store_true", help="print the revoked key as JSON")
    revoke.set_defaults(handler=revokeKey)


def _store(args) -> APIKeyStore:
    from sealgate.identity.service import KEYS_FILE

    if args.state_dir:
        return APIKeyStore(Path(args.state_dir) / KEYS_FILE)
    gateway = loadConfigFor(args).gateway
    fleet = fleetOf(args, gateway)
    if fleet is not None:
        from sealgate.fleet.keys import PGAPIKeyStore

        return PGAPIKeyStore(fleet.url)
    return APIKeyStore(gateway.state_dir / KEYS_FILE)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def createKey(args) -> int:
    expires = None
    if args.expires:
        try:
            expires = parseDuration(args.expires)
        except ValueError:
            raise CommandError(f"--expires {args.expires!r} is not a duration; "
                               'write e.g. "30d", "12h" or a number of seconds')
    store = _store(args)
    try:
        key = store.create(args.name, args.groups, expires)
    except APIKeyError as e:
        raise CommandError(str(e))
    info = next(k for k in store.list() if key.startswith(f"sgk_{k.keyId}_"))
    if args.json:
        print(json.dumps({**info.asDict(time.time()), "key": key}, indent=2))
        return 0
    print(f"Created API key {info.name!r} (id {info.keyId}) for groups "
          f"{', '.join(info.groups)}; expires {_when(info.expires) if expires else 'never'}.")
    print("It is shown only this once: store it in your secret manager now.")
    print(key)
    sys.stdout.flush()
    return 0


def listKeys(args) -> int:
    now = time.time()
    keys = _store(args).list()
    if args.json:
        print(json.dumps([k.asDict(now) for k in keys], indent=2))
        return 0
    rows = [("NAME", "KEY ID", "GROUPS", "CREATED", "EXPIRES", "LAST USED", "STATUS")]
    rows += [(k.name, k.keyId, ",".join(k.groups), _when(k.created), _when(k.expires),
              _when(k.lastUsed), k.status(now)) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def revokeKey(args) -> int:
    try:
        count = _store(args).revoke(args.name)
    except APIKeyError as e:
        raise CommandError(str(e))
    if args.json:
        print(json.dumps({"name": args.name, "revoked": count}))
        return 0
    print(f"Revoked {count} key(s) named {args.name!r}.")
    return 0
