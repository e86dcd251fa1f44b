"""`sealgate verify|verify-bundle|redact|key|checkpoint`: the recording store's commands, and their shared options."""

import argparse
import json
import mmap
import sys
import time
from pathlib import Path
from typing import Any

from sealgate.cli.quorum import addWitnessOptions, quorumCheckpoints, witnessPolicy
from sealgate.recording._engine import StoreError


def stateOptions() -> argparse.ArgumentParser:
    """The options every store-reading command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: [gateway] state_dir "
                        "of --config / $SEALGATE_CONFIG)")
    common.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)
    return common


def register(subparsers) -> None:
    common = stateOptions()

    verify = subparsers.add_parser("verify", parents=[common],
                                   help="check every frame, session tree, log leaf and checkpoint")
    verify.add_argument("--session", help="check only this session (and the whole log)")
    verify.add_argument("--key", help="the key you hold: its fingerprint (SHA256:...) or verifier key "
                        "(NAME+HASH+KEY) (default: the key pinned at the store's first start)")
    verify.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                        help="a checkpoint note saved earlier; the log must still extend it (repeatable)")
    verify.add_argument("--checkpoint-dir", metavar="DIR",
                        help="where verify keeps the newest checkpoint it verified, one per log, and holds "
                        "later runs to it (default: $SEALGATE_CHECKPOINT_DIR, else "
                        "~/.local/state/sealgate/checkpoints; 'none' keeps nothing)")
    verify.add_argument("--node", help="fleet mode: check only this node's log (default: every node's)")
    verify.add_argument("--store-env", metavar="VAR", help="fleet mode without a config: the environment "
                        "variable holding the fleet database's URL")
    verify.set_defaults(handler=verifyCommand)

    vb = subparsers.add_parser("verify-bundle", help="check an exported bundle offline")
    vb.add_argument("file")
    vb.add_argument("--key", help="the gateway's key you trust: its fingerprint (SHA256:...) "
                    "or verifier key (NAME+HASH+KEY)")
    vb.set_defaults(handler=verifyBundleCommand)

    redact = subparsers.add_parser("redact", parents=[common],
                                   help="erase one frame's payload (the seal stays valid)")
    redact.add_argument("id")
    redact.add_argument("--frame", type=int, required=True, help="frame number (from 0)")
    redact.add_argument("--reason", required=True, help="why, sealed in the audit log")
    redact.add_argument("--by", default=None, help="who redacts (default: $USER)")
    redact.set_defaults(handler=redactCommand)

    key = subparsers.add_parser("key", help="the node's checkpoint signing key")
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION")
    ksub.required = True
    kshow = ksub.add_parser("show", parents=[common],
                            help="print the public verifier key (stdout), its fingerprint and pin (stderr)")
    kshow.add_argument("--fingerprint", action="store_true", help="print only the fingerprint")
    kshow.set_defaults(handler=keyShow)

    checkpoint = subparsers.add_parser("checkpoint", parents=[common],
                                       help="print the latest signed checkpoint (to keep elsewhere)")
    checkpoint.set_defaults(handler=checkpointShow)

    for parser in (verify, vb):
        parser.add_argument("--json", action="store_true",
                            help="print the result as JSON (ok, problems, warnings, counts; docs/audit.md)")
        addWitnessOptions(parser)


def _stateDir(args) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    from sealgate.cli.main import loadConfigFor

    return loadConfigFor(args).gateway.state_dir


def _reader(args):
    """The read interface: the embedded store's, or (fleet mode) every node's with this node's log."""
    from sealgate.cli._storeurl import fleetURL
    from sealgate.cli.main import CommandError
    from sealgate.recording.reader import StoreReader

    try:
        url = fleetURL(args)
        if url is not None:
            from sealgate.cli.main import loadConfigFor
            from sealgate.recording.pgreader import FleetReader

            return FleetReader(url, getattr(args, "node", None) or loadConfigFor(args).gateway.node)
        return StoreReader(_stateDir(args))
    except StoreError as e:
        raise CommandError(str(e))


def _when(t) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _trusted(args, reader=None):
    from sealgate.cli.main import CommandError
    from sealgate.recording.checkpoint import NoteError, Verifier

    if getattr(args, "key", None):
        try:
            return Verifier.fromVkey(args.key)
        except NoteError as e:
            raise CommandError(f"--key: {e}")
    if reader is None:
        return None
    try:
        return reader.verifier()
    except (StoreError, ValueError) as e:
        raise CommandError(f"{e}; pass --key with the node's verifier key")


def _printReport(report, subject: str) -> int:
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for p in report.problems:
        print(f"FAILED: {p}")
    if report.ok:
        by = f" by key {report.key}" if report.key else ""
        print(f"OK: {subject}: {report.sessions} session(s), {report.frames} frames "
              f"({report.bytes} bytes, {report.redacted} redacted), log of {report.logSize} leaves, "
              f"signed checkpoint at size {report.checkpoint}{by}")
        return 0
    print(f"verification FAILED: {len(report.problems)} problem(s) in {subject}")
    return 1


def _reportJSON(report, subject: str, **extra) -> dict:
    return {"ok": report.ok, "subject": subject, "problems": report.problems, "warnings": report.warnings,
            "sessions": report.sessions, "frames": report.frames, "bytes": report.bytes,
            "redacted": report.redacted, "log_size": report.logSize, "checkpoint": report.checkpoint,
            "key": getattr(report, "key", None), **extra}


def _emitReport(args, report, subject: str, collect: list | None = None, **extra) -> int:
    """
    The report as text (L{_printReport}) or, with --json, one JSON object
    (kept in C{collect} when given: a fleet's nodes print as one array);
    exit 0 when it verified.
    """
    if not getattr(args, "json", False):
        return _printReport(report, subject)
    if collect is not None:
        collect.append(_reportJSON(report, subject, **extra))
    else:
        json.dump(_reportJSON(report, subject, **extra), sys.stdout, indent=1, default=str)
        print()
    return 0 if report.ok else 1


def verifyCommand(args) -> int:
    from sealgate.cli.main import CommandError
    from sealgate.recording.reader import StoreReader, StoreUnreadable
    from sealgate.recording.verify import Report

    witnessed = []
    for p in args.checkpoint:
        try:
            witnessed.append((f"the checkpoint in {p}", Path(p).read_text(errors="replace")))
        except OSError as e:
            raise CommandError(f"cannot read checkpoint {e.filename}: {e.strerror}")
    witnesses, quorum = witnessPolicy(args)
    from sealgate.cli._storeurl import fleetURL

    url = fleetURL(args)
    if url is not None:
        return verifyFleet(args, url, witnessed, witnesses, quorum)
    report = Report()
    try:
        r = StoreReader(_stateDir(args))
    except StoreUnreadable as e:
        # A database SQLite cannot even open: a verdict, not a usage error.
        report.problem(str(e))
        return _emitReport(args, report, str(_stateDir(args)))
    except StoreError as e:
        raise CommandError(str(e))
    with r:
        return verifyReader(args, r, report, witnessed, witnesses, quorum)


def verifyFleet(args, url: str, witnessed: list, witnesses, quorum) -> int:
    """Every node's log in the fleet database (or only --node's); exit 0 when all verified."""
    from sealgate.cli.main import CommandError
    from sealgate.recording.peerseal import checkPeerCuts
    from sealgate.recording.pgreader import NodeReader, nodeNames
    from sealgate.recording.verify import Report

    try:
        everyNode = nodeNames(url)
        nodes = [args.node] if args.node else everyNode
    except StoreError as e:
        raise CommandError(str(e))
    if not nodes:
        raise CommandError("the fleet database holds no node's recording store yet")
    if args.key and len(nodes) > 1:
        raise CommandError("--key is one node's key: pass --node with it")
    code = 0
    checked = 0
    collect: list | None = [] if getattr(args, "json", False) else None
    for node in nodes:
        try:
            r = NodeReader(url, node)
        except StoreError as e:
            raise CommandError(str(e))
        with r:
            if args.session and not args.node and r.sessionRecord(args.session) is None:
                continue  # --session: the log of the node that recorded it
            checked += 1
            report = Report()
            if not args.session:
                # What readers show as cut off by a peer must be what that peer sealed.
                checkPeerCuts(report, r, url, everyNode)
            code = max(code, verifyReader(args, r, report, witnessed, witnesses, quorum, collect))
    if not checked:
        raise CommandError(f"no node's log in the fleet database holds session {args.session}")
    if collect is not None:
        json.dump(collect, sys.stdout, indent=1, default=str)  # one object per node, in one array
        print()
    return code


def verifyReader(args, r, report, witnessed: list, witnesses, quorum, collect: list | None = None) -> int:
    """Verify one log (an embedded store, or one node of a fleet), print the verdict, keep its checkpoint."""
    from sealgate.cli import verifier
    from sealgate.cli.main import CommandError
    from sealgate.recording.checkpoint import NoteError
    from sealgate.recording.verify import trustedKey, verifyStore

    witnessed = list(witnessed)
    try:
        key = trustedKey(report, r, args.key)
    except NoteError as e:
        raise CommandError(f"--key: {e} (pass a fingerprint SHA256:... or a verifier key NAME+HASH+KEY)")
    saved = verifier.savedCheckpoint(args, key)
    if saved is not None:
        witnessed.append(saved)
    if witnesses:
        witnessed += quorumCheckpoints(report, r, witnessed, witnesses, quorum)
    verifyStore(r, key, args.session, witnessed, report)
    code = _emitReport(args, report, str(r.stateDir), collect)
    if report.ok:
        verifier.saveCheckpoint(args, r, key)
    return code


def verifyBundleCommand(args) -> int:
    from sealgate.cli.main import CommandError
    from sealgate.recording.bundle import verifyBundle
    from sealgate.recording.checkpoint import isFingerprint

    trusted = args.key if args.key and isFingerprint(args.key) else _trusted(args)
    witnesses, quorum = witnessPolicy(args)
    try:
        with open(args.file, "rb") as f:
            data: Any
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                data = b""
            report, header = verifyBundle(data, trusted, witnesses, quorum)
    except OSError as e:
        raise CommandError(f"cannot read {args.file}: {e.strerror}")
    sid = header.get("session") if header else "?"
    return _emitReport(args, report, f"bundle {args.file} (session {sid})", session=sid)


def redactCommand(args) -> int:
    import getpass

    from sealgate.cli._storeurl import fleetURL
    from sealgate.cli.main import CommandError
    from sealgate.recording._engine import Engine

    url = fleetURL(args)
    if url is None:
        engine = Engine(_stateDir(args), None)
    else:
        from sealgate.cli.main import loadConfigFor
        from sealgate.recording._pgengine import PgEngine

        engine = PgEngine(_stateDir(args), None, url, loadConfigFor(args).gateway.node)
    try:
        engine.open()
        n = engine.redact(args.id, args.frame, args.reason, args.by or getpass.getuser())
    except StoreError as e:
        raise CommandError(str(e))
    finally:
        engine.close()
    print(f"redacted frame {args.frame} of session {args.id}; sealed as log leaf {n}")
    return 0


def keyShow(args) -> int:
    from sealgate.cli.main import CommandError

    with _reader(args) as r:
        v = _trusted(args, r)
        try:
            pinned = r.pinnedVerifier()
        except StoreError as e:
            raise CommandError(str(e))
    if args.fingerprint:
        print(v.fingerprint)
        return 0
    print(v.vkey())
    print(f"fingerprint {v.fingerprint}", file=sys.stderr)
    if pinned is None:
        print("not pinned yet: the gateway pins the key at its next start", file=sys.stderr)
    elif pinned == v:
        print("pinned at the store's first start: this is the pinned key", file=sys.stderr)
    else:
        print(f"WARNING: THE SIGNING KEY CHANGED: {pinned.fingerprint} was pinned at the store's first start",
              file=sys.stderr)
        return 1
    return 0


def checkpointShow(args) -> int:
    from sealgate.cli.main import CommandError

    with _reader(args) as r:
        latest = r.latestCheckpoint()
    if latest is None:
        raise CommandError("the store has no signed checkpoint yet")
    sys.stdout.write(latest[2])
    return 0
