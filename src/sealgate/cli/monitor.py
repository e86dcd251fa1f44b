"""C{sealgate monitor URL}: follow a gateway's or a witness's checkpoints and report a fork or a rollback."""

import base64
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sealgate.cli._common import CommandError
from sealgate.cli.quorum import addWitnessOptions, witnessPolicy

#: Exit codes for cron and alerting.
EXIT_OK, EXIT_ERROR, EXIT_FORK, EXIT_ROLLBACK = 0, 1, 3, 4
KEEP = 1000


def register(sub) -> None:
    p = sub.add_parser("monitor", help="follow a gateway's or witness's checkpoints; exit 3 on a fork, 4 on a rollback")
    p.add_argument("url", help="the gateway's admin URL (its /api/log) or a witness's URL (its /checkpoint)")
    p.add_argument("--key", required=True, metavar="NAME+HASH+KEY", help="the log's verifier key")
    p.add_argument("--state", metavar="FILE",
                   help="where the checkpoints seen are kept (default: ~/.local/state/sealgate/monitor/ORIGIN.json)")
    p.add_argument("--token", help="for a gateway: an auditor's token (default: $SEALGATE_TOKEN)")
    p.add_argument("--follow", action="store_true", help="keep polling (default: check once, for cron)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between polls with --follow")
    addWitnessOptions(p)
    p.set_defaults(handler=monitor_)


def monitor_(args) -> int:
    from sealgate.recording.checkpoint import NoteError, Verifier

    try:
        key = Verifier.fromVkey(args.key)
    except NoteError as e:
        raise CommandError(f"--key: {e}")
    witnesses, quorum = witnessPolicy(args)
    state = Path(args.state) if args.state else _defaultState(key.name)
    while True:
        code = _once(args, key, witnesses, quorum, state)
        if not args.follow or code in (EXIT_FORK, EXIT_ROLLBACK):
            return code
        time.sleep(args.interval)


def _once(args, key, witnesses, quorum, state: Path) -> int:
    from sealgate.monitor import OK, ROLLBACK, Seen, judge
    from sealgate.recording.checkpoint import NoteError, openCheckpoint
    from sealgate.recording.cosignature import quorumProblem

    try:
        note, proof = _fetch(args, key.name)
        cp = openCheckpoint(note, key, key.name)
    except (CommandError, NoteError) as e:
        print(f"sealgate monitor: ERROR {key.name}: {e}")
        return EXIT_ERROR
    seen = _load(state)
    new = Seen(cp, note)
    # The verdict first: a fork is evidence even when (as a rewritten log's would) it carries no cosignatures.
    verdict = judge(seen, new, proof)
    if verdict.kind != OK:
        assert verdict.earlier is not None
        print(f"sealgate monitor: {verdict.line}")
        print(f"--- seen earlier (kept in {state}):\n{verdict.earlier.note}--- served now by {args.url}:\n{note}", end="")
        return EXIT_ROLLBACK if verdict.kind == ROLLBACK else EXIT_FORK
    problem = quorumProblem(note, witnesses, quorum)
    if problem:
        print(f"sealgate monitor: UNWITNESSED {key.name} at size {cp.size}: {problem}")
        return EXIT_ERROR
    print(f"sealgate monitor: {verdict.line}")
    if all(s.checkpoint.size != cp.size for s in seen):
        _save(state, [*seen, new][-KEEP:])
    return EXIT_OK


def _fetch(args, origin: str):
    """C{(note, proof function or None)}: the gateway's log API, else a witness's /checkpoint."""
    base = args.url.rstrip("/")
    token = args.token or os.environ.get("SEALGATE_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        body = _get(f"{base}/api/log/checkpoint", headers)
        note = json.loads(body)["note"]
    except (_NotFound, ValueError, KeyError):
        return _get(f"{base}/checkpoint?origin={urllib.parse.quote(origin)}", {}).decode(), None

    def proof(first: int, second: int) -> list[bytes]:
        got = json.loads(_get(f"{base}/api/log/consistency?first={first}&second={second}", headers))
        return [base64.b64decode(h) for h in got["proof"]]

    return note, proof


class _NotFound(CommandError):
    pass


def _get(url: str, headers: dict) -> bytes:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFound(url)
        raise CommandError(f"GET {url.split('?')[0]}: HTTP {e.code}")
    except urllib.error.URLError as e:
        raise CommandError(f"cannot reach {url.split('?')[0]}: {e.reason}")


def _defaultState(origin: str) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sealgate" / "monitor" / (re.sub(r"[^A-Za-z0-9._-]", "_", origin) + ".json")


def _load(state: Path) -> list:
    from sealgate.monitor import Seen

    try:
        return [Seen.fromDict(d) for d in json.loads(state.read_text())["checkpoints"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CommandError(f"{state}: cannot read the monitor's kept checkpoints ({e}); move it aside to start over")


def _save(state: Path, seen) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_name(state.name + ".part")
    tmp.write_text(json.dumps({"checkpoints": [s.asDict() for s in seen]}, indent=1))
    tmp.replace(state)
