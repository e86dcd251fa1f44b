"""`sealgate sessions|verify|export|verify-bundle|redact|key|replay`: the recording store's commands."""

import argparse
import json
import mmap
import sys
import time
from pathlib import Path
from typing import Any

from sealgate.recording._engine import StoreError


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: [gateway] state_dir "
                        "of --config / $SEALGATE_CONFIG)")
    common.add_argument("--config", help=argparse.SUPPRESS, default=argparse.SUPPRESS)

    sessions = subparsers.add_parser("sessions", help="list and show recorded sessions")
    sub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", parents=[common], help="recorded sessions, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--limit", type=int, default=None, help="at most this many")
    listing.set_defaults(handler=listSessions)
    show = sub.add_parser("show", parents=[common], help="one session and its audit events")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=showSession)

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
    verify.set_defaults(handler=verifyCommand)

    export = subparsers.add_parser("export", parents=[common], help="write one session as a bundle")
    export.add_argument("id")
    export.add_argument("--out", help="bundle file to write")
    export.add_argument("--har", metavar="FILE",
                        help="write an HTTP session as HAR 1.2 (opens in browser devtools)")
    export.add_argument("--asciicast", metavar="FILE",
                        help="write an SSH terminal session as asciicast v2 (asciinema play)")
    export.set_defaults(handler=exportCommand)

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

    replay = subparsers.add_parser("replay", parents=[common], help="play a recorded session back")
    replay.add_argument("id")
    speed = replay.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    speed.add_argument("--no-wait", action="store_true", help="print everything at once")
    replay.set_defaults(handler=replayCommand)


def _stateDir(args) -> Path:
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    from sealgate.cli.main import loadConfigFor

    return loadConfigFor(args).gateway.state_dir


def _reader(args):
    from sealgate.cli.main import CommandError
    from sealgate.recording.reader import StoreReader

    try:
        return StoreReader(_stateDir(args))
    except StoreError as e:
        raise CommandError(str(e))


def _when(t) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _who(info: dict) -> str:
    ident = info.get("identity")
    if isinstance(ident, dict):
        return str(ident.get("name") or ident.get("subject") or "?")
    return str(ident or "?")


def listSessions(args) -> int:
    with _reader(args) as r:
        rows = r.sessions(args.limit)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return 0
    print(f"{'SESSION':26} {'OPENED':20} {'STATE':8} {'PROTOCOL':9} {'CONNECTION':14} {'IDENTITY':16} "
          f"{'FRAMES':>7} {'BYTES':>11}")
    for s in rows:
        info = s["info"]
        print(f"{s['id']:26} {_when(s['opened']):20} {s['state']:8} {s['protocol'] or '-':9} "
              f"{str(info.get('connection', '-')):14} {_who(info):16} {s['size']:>7} "
              f"{s['bytes_from_client'] + s['bytes_to_client']:>11}")
    return 0


def showSession(args) -> int:
    from sealgate.cli.main import CommandError

    with _reader(args) as r:
        s = r.session(args.id)
        if s is None:
            raise CommandError(f"no session {args.id!r} in {r.stateDir}")
        events = r.events(args.id)
        s["redactions"] = {str(k): v for k, v in r.redactions(args.id).items()}
    if args.json:
        json.dump({"session": s, "log": events}, sys.stdout, indent=1)
        print()
        return 0
    print(f"session     {s['id']}  ({s['state']})")
    print(f"opened      {_when(s['opened'])}   closed {_when(s['closed'])}   reason {s['reason'] or '-'}")
    print(f"protocol    {s['protocol'] or '-'}   identity {_who(s['info'])}")
    print(f"frames      {s['size']}   bytes from client {s['bytes_from_client']}   "
          f"to client {s['bytes_to_client']}   redacted {len(s['redactions'])}")
    print(f"root        {s['root'] or '-'}")
    print("log:")
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ("n", "prev", "type", "time", "session")}
        print(f"  {e['n']:>8} {_when(e['time'])} {e['type']:8} {json.dumps(detail, sort_keys=True)}")
    return 0


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


def verifyCommand(args) -> int:
    import sqlite3

    from sealgate.cli import verifier
    from sealgate.cli.main import CommandError
    from sealgate.recording._engine import dbPath
    from sealgate.recording.checkpoint import NoteError
    from sealgate.recording.verify import Report, trustedKey, verifyStore

    witnessed = []
    for p in args.checkpoint:
        try:
            witnessed.append((f"the checkpoint in {p}", Path(p).read_text(errors="replace")))
        except OSError as e:
            raise CommandError(f"cannot read checkpoint {e.filename}: {e.strerror}")
    report = Report()
    try:
        r = _reader(args)
    except sqlite3.DatabaseError as e:
        # A database SQLite cannot even open: a verdict, not a usage error.
        report.problem(f"the database {dbPath(_stateDir(args))} cannot be read: {e} (truncated or corrupted)")
        return _printReport(report, str(_stateDir(args)))
    with r:
        try:
            key = trustedKey(report, r, args.key)
        except NoteError as e:
            raise CommandError(f"--key: {e} (pass a fingerprint SHA256:... or a verifier key NAME+HASH+KEY)")
        saved = verifier.savedCheckpoint(args, key)
        if saved is not None:
            witnessed.append(saved)
        verifyStore(r, key, args.session, witnessed, report)
        subject = str(r.stateDir)
        code = _printReport(report, subject)
        if report.ok:
            verifier.saveCheckpoint(args, r, key)
    return code


def exportCommand(args) -> int:
    from sealgate.cli.main import CommandError
    from sealgate.recording.bundle import exportBundle

    if args.har:
        return _exportAs(args, args.har, "http", "--har", _writeHar)
    if args.asciicast:
        return _exportAs(args, args.asciicast, "ssh", "--asciicast", _writeAsciicast)
    if not args.out:
        raise CommandError("pass --out FILE (a bundle), --har FILE (an HTTP session) "
                           "or --asciicast FILE (an SSH terminal session)")
    out = Path(args.out)
    tmp = out.with_name(out.name + ".part")
    with _reader(args) as r:
        try:
            with open(tmp, "wb") as f:
                header = exportBundle(r, args.id, f)
        except StoreError as e:
            tmp.unlink(missing_ok=True)
            raise CommandError(str(e))
    tmp.replace(out)
    print(f"wrote {out}: session {args.id}, {len(header['leaves'])} log leaves with inclusion proofs, "
          f"checkpoint at size {header['checkpoint'].split(chr(10))[1]}")
    return 0


def _writeHar(frames, f, info) -> str:
    from sealgate.protocols.http import _wire
    from sealgate.protocols.http.har import writeHar

    try:
        return f"HAR 1.2, {writeHar(frames, f, info)} entries"
    except _wire.ProtocolError as e:
        raise ValueError(f"it does not parse as HTTP/1.1: {e}")


def _writeAsciicast(frames, f, info) -> str:
    from sealgate.protocols.ssh.asciicast import writeAsciicast

    return f"asciicast v2, {writeAsciicast(frames, f)} events"


def _exportAs(args, path, protocol, flag, write) -> int:
    """Export a session in its protocol's own replay format, atomically."""
    from sealgate.cli.main import CommandError

    out = Path(path)
    tmp = out.with_name(out.name + ".part")
    with _reader(args) as r:
        s = r.session(args.id)
        if s is None:
            raise CommandError(f"no session {args.id!r} in {r.stateDir}")
        actual = s["protocol"] or s["info"].get("protocol")
        if actual != protocol:
            raise CommandError(f"session {args.id} is {actual!r}, not {protocol}: "
                               f"{flag} is for {protocol} sessions (use --out for a bundle)")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                what = write(r.frames(args.id), f, s["info"])
        except ValueError as e:
            # The protocols' parse errors are ValueErrors: a recording that
            # does not render is reported, not a traceback.
            tmp.unlink(missing_ok=True)
            raise CommandError(f"session {args.id} cannot be exported with {flag}: {e}")
    tmp.replace(out)
    print(f"wrote {out}: {what}, session {args.id}")
    return 0


def verifyBundleCommand(args) -> int:
    from sealgate.cli.main import CommandError
    from sealgate.recording.bundle import verifyBundle
    from sealgate.recording.checkpoint import isFingerprint

    trusted = args.key if args.key and isFingerprint(args.key) else _trusted(args)
    try:
        with open(args.file, "rb") as f:
            data: Any
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                data = b""
            report, header = verifyBundle(data, trusted)
    except OSError as e:
        raise CommandError(f"cannot read {args.file}: {e.strerror}")
    sid = header.get("session") if header else "?"
    return _printReport(report, f"bundle {args.file} (session {sid})")


def redactCommand(args) -> int:
    import getpass

    from sealgate.cli.main import CommandError
    from sealgate.recording._engine import Engine

    engine = Engine(_stateDir(args), None)
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


def replayCommand(args) -> int:
    from sealgate.cli.main import CommandError
    from sealgate.plugins import protocolPlugins

    speed = None if args.no_wait else args.speed
    if speed is not None and speed <= 0:
        raise CommandError("--speed must be positive")
    out = sys.stdout.buffer
    with _reader(args) as r:
        s = r.session(args.id)
        if s is None:
            raise CommandError(f"no session {args.id!r} in {r.stateDir}")
        plugin = protocolPlugins().get(s["protocol"] or "")
        try:
            render = plugin.replay if plugin is not None else None
        except (AttributeError, ImportError):
            render = None
        if render is not None:
            try:
                render(r.frames(args.id), out, speed)
                out.flush()
                return 0
            except (NotImplementedError, ImportError) as e:
                print(f"sealgate: the {s['protocol']} plugin cannot replay ({e}); "
                      "showing a plain transcript", file=sys.stderr)
        try:
            transcript(r.frames(args.id), out, speed)
            out.flush()
        except BrokenPipeError:
            pass  # the reader (a pager, head) went away
    return 0


def transcript(frames, out, speed, sleep=time.sleep) -> None:
    """The fallback replay: each frame as text when printable, else a hex dump."""
    start = last = None
    for f in frames:
        if start is None:
            start = last = f.time
        if speed is not None and f.time > last:
            sleep(min(f.time - last, 5.0) / speed)
        last = f.time
        arrow = "client>" if f.direction == 0 else "<server"
        size = "redacted" if f.data is None else f"{len(f.data)} bytes"
        out.write(f"[+{f.time - start:9.3f}s] #{f.seq} {arrow} ch{f.channel} {size}\n".encode())
        if f.data:
            out.write(_render(f.data))
        out.flush()


def _render(data: bytes) -> bytes:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return text.encode() + (b"" if text.endswith("\n") else b"\n")
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {i:08x}  {hexpart:<47}  {asc}\n")
    return "".join(lines).encode()
