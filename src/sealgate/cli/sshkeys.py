"""`sealgate ssh-keys add|list|revoke`: bind SSH public keys to identities."""

import json
import time
from pathlib import Path

from sealgate.cli._common import CommandError, fleetOf, loadConfigFor
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
    add.add_argument("--json", action="store_true", help="print the bound key as JSON")
    add.set_defaults(handler=addKey)

    ls = sub.add_parser("list", help="list bound keys")
    ls.add_argument("identity", nargs="?", metavar="IDENTITY")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=listKeys)

    rv = sub.add_parser("revoke", help="revoke a key by fingerprint, or all keys of an identity")
    rv.add_argument("which", metavar="FINGERPRINT|IDENTITY")
    rv.add_argument("--json", action="store_true", help="print the revoked keys as JSON")
    rv.set_defaults(handler=revokeKeys)


def _asDict(r, now: float) -> dict:
    return {"fingerprint": r.fingerprint, "identity": r.identity, "groups": list(r.groups),
            "type": r.keyType, "comment": r.comment, "created": r.created, "expires": r.expires,
            "revoked": r.revoked, "state": r.state(now)}


def _json(value) -> int:
    print(json.dumps(value, indent=2))
    return 0


def _store(args):
    from sealgate.identity.sshkeys import SSHKeyStore

    gateway = loadConfigFor(args).gateway
    fleet = fleetOf(args, gateway)
    if fleet is not None:
        from sealgate.fleet.keys import PGSSHKeyStore

        return PGSSHKeyStore(fleet.url)
    return SSHKeyStore.forStateDir(gateway.state_dir)


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
    if args.json:
        return _json(_asDict(rec, time.time()))
    until = _when(rec.expires) if rec.expires else "never"
    print(f"{rec.fingerprint} bound to {rec.identity} "
          f"(groups: {', '.join(rec.groups) or '-'}; expires: {until})")
    return 0


def listKeys(args) -> int:
    now = time.time()
    records = _store(args).listKeys(args.identity)
    if args.json:
        return _json([_asDict(r, now) for r in records])
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
    if args.json:
        return _json([_asDict(r, time.time()) for r in revoked])
    for r in revoked:
        print(f"revoked {r.fingerprint} ({r.identity})")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
