"""`sealgate sessions|show|export|replay`: reading recorded sessions, from the store or from a bundle offline."""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from sealgate.cli.store import _reader as storeReader
from sealgate.cli.store import _trusted as trustedKey
from sealgate.cli.store import _when as when
from sealgate.cli.store import stateOptions
from sealgate.recording.records import STATES, SessionQuery, parseTime


def register(subparsers) -> None:
    common = stateOptions()
    sessions = subparsers.add_parser("sessions", help="list and show recorded sessions")
    sub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    sub.required = True
    listing = sub.add_parser("list", parents=[common], help="recorded sessions, newest first")
    listing.add_argument("--json", action="store_true", help="print JSON (docs/audit.md)")
    listing.add_argument("--limit", type=int, default=None, help="at most this many")
    listing.add_argument("--identity", help="part of the identity's name (any case)")
    listing.add_argument("--connection", help="the connection's name")
    listing.add_argument("--protocol", help="the protocol's name")
    listing.add_argument("--client", help="the client address (host:port)")
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--since", type=_time, help="opened at or after (ISO 8601 or Unix time)")
    listing.add_argument("--until", type=_time, help="opened before (ISO 8601 or Unix time)")
    listing.add_argument("--command", help="part of a command run in the session (any case)")
    listing.set_defaults(handler=listSessions)

    evidence = argparse.ArgumentParser(add_help=False, parents=[common])
    evidence.add_argument("id", metavar="ID|BUNDLE", help="a session id in the store, or a bundle file")
    evidence.add_argument("--key", help="for a bundle: the gateway's verifier key (NAME+HASH+KEY) you trust")
    for parent, name in ((sub, "show"), (subparsers, "show")):
        show = parent.add_parser(name, parents=[evidence],
                                 help="one session: its sealed facts, audit events and transcript")
        show.add_argument("--json", action="store_true", help="print JSON (docs/audit.md)")
        show.set_defaults(handler=showSession)

    export = subparsers.add_parser("export", parents=[evidence],
                                   help="write one session as a bundle or in one of its protocol's formats")
    export.add_argument("--format", default=None,
                        help="bundle (default), frames, or a format of the session's protocol "
                             "(har, asciicast, transcript...; --formats lists them)")
    export.add_argument("--out", help="file to write (default: standard output)")
    export.add_argument("--formats", action="store_true", help="list the session's formats and stop")
    export.add_argument("--har", metavar="FILE", help="the same as --format har --out FILE")
    export.add_argument("--asciicast", metavar="FILE", help="the same as --format asciicast --out FILE")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")
    export.set_defaults(handler=exportCommand)

    replay = subparsers.add_parser("replay", parents=[evidence], help="play a recorded session back")
    speed = replay.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=1.0, help="playback speed factor (default 1)")
    speed.add_argument("--no-wait", action="store_true", help="print everything at once")
    replay.set_defaults(handler=replayCommand)


def _time(text: str) -> float:
    try:
        return parseTime(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _error(message: str):
    from sealgate.cli.main import CommandError

    return CommandError(message)


@contextlib.contextmanager
def recordedSession(args):
    """The session named by C{args.id}: a bundle file (verified first, no store needed) or a stored session."""
    from sealgate.recording.offline import BundleRefused, BundleSession, isBundle

    if isBundle(args.id):
        try:
            session = BundleSession.open(args.id, trustedKey(args))
        except BundleRefused as e:
            raise _error(f"{args.id} does not verify, so it is not shown: {e}")
        except OSError as e:
            raise _error(f"cannot read {args.id}: {e.strerror}")
        for w in session.report.warnings:
            print(f"warning: {w}", file=sys.stderr)
        yield session
        return
    if Path(args.id).exists():
        raise _error(f"{args.id} is not a sealgate bundle (nor a session id: a path by that name exists)")
    with storeReader(args) as r, r.snapshot():
        session = r.recorded(args.id)
        if session is None:
            raise _error(f"no session {args.id!r} in {r.stateDir}")
        yield session


def listSessions(args) -> int:
    try:
        query = SessionQuery(identity=args.identity, connection=args.connection, protocol=args.protocol,
                             client=args.client, state=args.state, since=args.since, until=args.until,
                             command=args.command, limit=args.limit)
    except ValueError as e:
        raise _error(str(e))
    with storeReader(args) as r:
        rows = r.findSessions(query)
    if args.json:
        json.dump([s.asJSON() for s in rows], sys.stdout, indent=1)
        print()
        return 0
    print(f"{'SESSION':26} {'OPENED':20} {'STATE':8} {'PROTOCOL':9} {'CONNECTION':14} {'IDENTITY':16} "
          f"{'FRAMES':>7} {'BYTES':>11}")
    for s in rows:
        print(f"{s.id:26} {when(s.opened):20} {s.state:8} {s.protocol or '-':9} "
              f"{s.connection or '-':14} {s.identity or '?':16} {s.frames:>7} "
              f"{s.bytesFromClient + s.bytesToClient:>11}")
    return 0


#: `show` prints this much of a transcript; replay and export give all of it.
SHOW_LIMIT = 256 * 1024


def _transcript(session, limit: int = SHOW_LIMIT) -> bytes:
    from sealgate.export import formatsFor, writeBounded

    text, cut = writeBounded(formatsFor(session.record.protocol)["transcript"], session, limit)
    if cut:
        text += (f"\n(cut at {limit // 1024} KiB: sealgate replay --no-wait or "
                 "export --format transcript prints all of it)\n").encode()
    return text


def showSession(args) -> int:
    from sealgate.recording.offline import BundleSession

    with recordedSession(args) as session:
        s = session.record
        events = session.events()
        offline = isinstance(session, BundleSession)
        redactions = session.redactions()
        text = None if args.json else _transcript(session)
    source = {"bundle": session.path, "verified": True, "warnings": session.report.warnings} if offline else {}
    if args.json:
        json.dump({"session": s.asJSON(), "log": events, "redacted": sorted(redactions), **source},
                  sys.stdout, indent=1)
        print()
        return 0
    if offline:
        print(f"bundle      {session.path}  (verified: {s.frames} frames, "
              f"{len(events)} log leaves proven in the signed log)")
    print(f"session     {s.id}  ({s.state})")
    print(f"opened      {when(s.opened)}   closed {when(s.closed)}   reason {s.reason or '-'}")
    print(f"protocol    {s.protocol or '-'}   connection {s.connection or '-'}   identity {s.identity or '?'}"
          f"   client {s.client or '-'}")
    print(f"frames      {s.frames}   bytes from client {s.bytesFromClient}   "
          f"to client {s.bytesToClient}   redacted {len(redactions)}")
    print(f"root        {s.root or '-'}")
    print("log:")
    for e in events:
        detail = {k: v for k, v in e.items() if k not in ("n", "prev", "type", "time", "session")}
        print(f"  {e['n']:>8} {when(e['time'])} {e['type']:8} {json.dumps(detail, sort_keys=True)}")
    print("transcript:")
    sys.stdout.flush()
    sys.stdout.buffer.write(text or b"")
    return 0


def exportCommand(args) -> int:
    from sealgate.export import UnknownFormat, describe, findFormat, formatsFor

    name, out = args.format or "bundle", args.out
    for flag, value in (("har", args.har), ("asciicast", args.asciicast)):
        if value:
            name, out = flag, value
    with recordedSession(args) as session:
        protocol = session.record.protocol
        if args.formats:
            formats = describe(formatsFor(protocol))
            if args.json:
                json.dump(formats, sys.stdout, indent=1)
                print()
            for f in [] if args.json else formats:
                print(f"{f['name']:12} {f['media_type']:32} {f['title']}")
            return 0
        try:
            fmt = findFormat(protocol, name)
        except UnknownFormat as e:
            raise _error(str(e))
        if out is None and fmt.name == "bundle" and sys.stdout.isatty():
            raise _error("a bundle is binary: pass --out FILE (or redirect standard output)")
        summary = _write(session, fmt, out)
    result = {"session": session.record.id, "format": fmt.name, "media_type": fmt.mediaType,
              "out": out, "summary": summary}
    report = sys.stderr if out is None else sys.stdout
    if args.json:
        json.dump(result, report, indent=1)
        print(file=report)
    else:
        print(f"wrote {out or 'standard output'}: {summary}, session {session.record.id}", file=report)
    return 0


def _write(session, fmt, out) -> str:
    """Write the export atomically (to FILE.part, then renamed); a writer's ValueError is reported, not raised."""
    from sealgate.recording._engine import StoreError

    if out is None:
        try:
            summary = fmt.write(session, sys.stdout.buffer)
            sys.stdout.flush()
            return summary
        except (ValueError, StoreError) as e:
            raise _error(f"session {session.record.id} cannot be exported as {fmt.name}: {e}")
    path = Path(out)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            summary = fmt.write(session, f)
    except (ValueError, StoreError) as e:
        tmp.unlink(missing_ok=True)
        raise _error(f"session {session.record.id} cannot be exported as {fmt.name}: {e}")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _error(f"cannot write {out}: {e.strerror}")
    tmp.replace(path)
    return summary


def replayCommand(args) -> int:
    from sealgate.export import transcript
    from sealgate.plugins import protocolPlugins

    speed = None if args.no_wait else args.speed
    if speed is not None and speed <= 0:
        raise _error("--speed must be positive")
    out = sys.stdout.buffer
    with recordedSession(args) as session:
        protocol = session.record.protocol
        plugin = protocolPlugins().get(protocol or "")
        try:
            render = plugin.replay if plugin is not None else None
        except (AttributeError, ImportError):
            render = None
        try:
            if render is not None:
                try:
                    render(session.frames(), out, speed)
                    out.flush()
                    return 0
                except (NotImplementedError, ImportError) as e:
                    print(f"sealgate: the {protocol} plugin cannot replay ({e}); "
                          "showing a plain transcript", file=sys.stderr)
            transcript(session.frames(), out, speed, sleep=time.sleep)
            out.flush()
        except BrokenPipeError:
            pass  # the reader (a pager, head) went away
    return 0
