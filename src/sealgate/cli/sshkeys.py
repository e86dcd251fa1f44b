"""`sealgate ssh-keys add|list|revoke`: bind SSH public keys to identities."""

import time
from pathlib import Path

from sealgate.cli._common import CommandError, loadConfigFor
from sealgate.config import parseDuration


def register(subparsers) -> None:
    p = subparsers.add_parser("ssh-keys", help="SSH public keys bound to identities")
    sub = p.add_subparsers(dest="ssh_keys_command", metavar="ACTION")
    sub.required = True

    add = sub.add_parser("add", help="bind a public key (.pub file) to an identity")
    add.add_argument("identity", metavar="IDENTITY")
    add.add_argument("keyfile", metavar="KEYFILE", help="OpenSSH public key file, e.g. id_ed25519.pub")
    add.add_argument("--group", "-g", action="append", required=True, dest="groups",
                     help="a group of the identity (repeat for several); roles match on groups")
    add.add_argument("--expires", metavar="DURATION",
                     help="lifetime such as 30d, 12h (default: no expiry)")
    add.set_defaults(handler=addKey)

    ls = sub.add_parser("list", help="list bound keys")
    ls.add_argument("identity", nargs="?", metavar="IDENTITY")
    ls.set_defaults(handler=listKeys)

    rv = sub.add_parser("revoke", help="revoke a key by fingerprint, or all keys of an identity")
    rv.add_argument("which", metavar="FINGERPRINT|IDENTITY")
    rv.set_defaults(handler=revokeKeys)


def _store(args):
    from sealgate.identity.sshkeys import SSHKeyStore

    return SSHKeyStore.forStateDir(loadConfigFor(args).gateway.state_dir)


def addKey(args) -> int:
    from sealgate.identity.sshkeys import SSHKeyError

    expires = None
    if args.expires:
        try:
            expires = time.time() + parseDuration(args.expires)
        except ValueError:
            raise CommandError(f"--expires {args.expires!r} is not a duration; write e.g. 30d or 12h")
    try:
        text = Path(args.keyfile).read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {args.keyfile}: {e.strerror}")
    try:
        rec = _store(args).add(args.identity, text, args.groups, expires)
    except SSHKeyError as e:
        raise CommandError(f"{args.keyfile}: {e}")
    until = _when(rec.expires) if rec.expires else "never"
    print(f"{rec.fingerprint} bound to {rec.identity} "
          f"(groups: {', '.join(rec.groups) or '-'}; expires: {until})")
    return 0


def listKeys(args) -> int:
    now = time.time()
    records = _store(args).listKeys(args.identity)
    for r in records:
        print(f"{r.fingerprint}  {r.identity}  {','.join(r.groups) or '-'}  {r.keyType}  "
              f"{r.state(now)}  expires={_when(r.expires) if r.expires else 'never'}  {r.comment}")
    if not records:
        print("no SSH keys bound")
    return 0


def revokeKeys(args) -> int:

    revoked = _store(args).revoke(args.which)
    if not revoked:
        raise CommandError(f"no active key with fingerprint or identity {args.which!r}")
    for r in revoked:
        print(f"revoked {r.fingerprint} ({r.identity})")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
