"""C{sealgate witness}: run a witness in the foreground, or generate its key."""

import argparse
import os
import sys
from pathlib import Path

from sealgate.cli._common import CommandError


def register(sub) -> None:
    p = sub.add_parser("witness", help="run a C2SP tlog-witness for sealgate logs, or make its key")
    p.add_argument("--config", help="the witness config (witness.toml)", default=argparse.SUPPRESS)
    p.add_argument("--generate-key", metavar="NAME",
                   help="write a new witness signing key for NAME (e.g. witness.example.com/w1) and print its vkey")
    p.add_argument("--key-file", help="where --generate-key writes the signing key (mode 0600)")
    p.set_defaults(handler=witness_)


def witness_(args) -> int:
    if args.generate_key:
        return _generate(args)
    if not getattr(args, "config", None):
        raise CommandError("witness needs --config witness.toml (or --generate-key NAME --key-file PATH)")
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from sealgate.witness.tap import makeService

    service = makeService({"config": args.config}, reactor)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def _generate(args) -> int:
    from sealgate.recording.checkpoint import NoteError
    from sealgate.recording.cosignature import Cosigner

    if not args.key_file:
        raise CommandError("--generate-key needs --key-file PATH (the key is never printed)")
    try:
        cosigner = Cosigner.generate(args.generate_key)
    except NoteError as e:
        raise CommandError(str(e))
    path = Path(args.key_file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(f"{path} exists; a witness key is never overwritten")
    with os.fdopen(fd, "w") as f:
        f.write(cosigner.skey() + "\n")
    print(cosigner.verifier.vkey())
    return 0
