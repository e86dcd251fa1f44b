"""`sealgate store migrate`: move an embedded recording store into a fleet's PostgreSQL."""

import os
import sys

from sealgate.cli._common import CommandError


def register(subparsers) -> None:
    from sealgate.cli.store import stateOptions

    store = subparsers.add_parser("store", help="the recording store as a whole")
    sub = store.add_subparsers(dest="store_command", metavar="ACTION")
    sub.required = True
    migrate = sub.add_parser("migrate", parents=[stateOptions()],
                             help="copy the embedded store (gateway stopped) into a fleet database, "
                             "every proof intact")
    target = migrate.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="URL", help="postgresql://user:password@host:port/db (visible to "
                        "other users in ps: prefer --to-env)")
    target.add_argument("--to-env", metavar="VAR", help="the environment variable holding that URL")
    migrate.set_defaults(handler=migrateCommand)


def migrateCommand(args) -> int:
    from sealgate.cli.store import _stateDir
    from sealgate.fleetdb import checkURL, redactURL
    from sealgate.recording._errors import StoreError
    from sealgate.recording.pgmigrate import migrate

    url = args.to
    if args.to_env:
        url = os.environ.get(args.to_env)
        if not url:
            raise CommandError(f"--to-env: environment variable {args.to_env} is not set")

    def refuse(message: str, fix: str) -> Exception:
        return CommandError(f"--to: {message}; {fix}")

    checkURL(url, refuse)
    stateDir = _stateDir(args)
    try:
        counts = migrate(stateDir, url, lambda text: print(text, file=sys.stderr))
    except StoreError as e:
        raise CommandError(str(e))
    print(f"migrated {stateDir} to {redactURL(url)} as node {counts['node']}: {counts['log']} log leaves, "
          f"{counts['sessions']} sessions, {counts['bytes']} payload bytes; set [gateway] node = "
          f"\"{counts['node']}\" and store_env/store_file, then run sealgate verify")
    return 0
