"""C{sealgate approvals list|approve|deny|cancel}: talks to the running gateway's admin API."""

import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from sealgate.cli._common import CommandError, hasConfig, loadConfigFor

#: Where a gateway started with the sample config keeps its state, relative
#: to the directory it runs in (the README's run command).
DEFAULT_STATE_DIR = Path("var/sealgate")


def adminURL(args) -> str:
    """
    The admin API base URL: --admin-url or $SEALGATE_ADMIN_URL; else what the
    running gateway wrote into its state directory (from --state-dir, the
    config, or ./var/sealgate); else the config's [gateway] admin endpoint.
    No config is needed when the gateway runs from this directory.
    """
    explicit = getattr(args, "admin_url", None) or os.environ.get("SEALGATE_ADMIN_URL")
    if explicit:
        return explicit.rstrip("/")
    config = loadConfigFor(args) if hasConfig(args) else None
    if getattr(args, "state_dir", None):
        stateDir = Path(args.state_dir)
    elif config is not None:
        stateDir = config.gateway.state_dir
    else:
        stateDir = DEFAULT_STATE_DIR
    try:
        # Written by the running gateway: right even when the config says port 0.
        return json.loads((stateDir / "admin.json").read_text())["url"]
    except (OSError, ValueError, KeyError):
        pass
    if config is None:
        raise CommandError(f"no running gateway found in {stateDir}: pass --admin-url URL "
                           "(the gateway logs it at start: 'Admin API on ...'), --state-dir DIR "
                           "or --config PATH")
    desc = config.gateway.admin
    m = re.match(r"^(tcp6?|ssl):(\d+)(.*)$", desc)
    if not m:
        raise CommandError(f"cannot derive a URL from admin endpoint {desc!r}; pass --admin-url")
    iface = re.search(r"interface=([^:]+)", m.group(3))
    host = iface.group(1) if iface else "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if m.group(1) == "ssl" else "http"
    return f"{scheme}://{host}:{m.group(2)}"


def call(args, method: str, path: str, body=None) -> dict:
    token = getattr(args, "token", None) or os.environ.get("SEALGATE_TOKEN")
    if not token:
        raise CommandError("no credential: set SEALGATE_TOKEN or pass --token")
    url = adminURL(args) + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            message = e.reason
        raise CommandError(f"{method} {path}: {e.code}: {message}")
    except urllib.error.URLError as e:
        raise CommandError(f"cannot reach the gateway's admin API at {url}: {e.reason}")


def _list(args) -> int:
    tickets = call(args, "GET", "/api/approvals" + ("?all=1" if args.all else ""))["tickets"]
    if args.json:
        json.dump(tickets, sys.stdout, indent=2)
        print()
        return 0
    if not tickets:
        print("no pending tickets")
    for t in tickets:
        print(f"{t['id']}  {t['state']:9}  {t['requester']:20}  {t['connection']:12}  "
              f"rule={t['rule']}  {t['command'][:80]}")
        if t.get("summary"):
            why = f"  (held: {t['rule_reason']})" if t.get("rule_reason") else ""
            print(f"          {t['summary']}{why}")
    return 0


def _decide(action):
    def handler(args) -> int:
        body = {"reason": getattr(args, "reason", "") or ""}
        t = call(args, "POST", f"/api/approvals/{args.id}/{action}", body)
        print(f"ticket {t['id']}: {t['state']}"
              + (f" ({len(t['approvals'])}/{t['needed']} approvals)" if t["state"] == "pending" else ""))
        return 0
    return handler


def register(sub) -> None:
    p = sub.add_parser("approvals", help="list and decide approval tickets")
    p.add_argument("--token", help="API key or OIDC token (default: $SEALGATE_TOKEN)")
    p.add_argument("--admin-url", help="admin API URL (default: $SEALGATE_ADMIN_URL, else "
                   "found in the running gateway's state directory)")
    p.add_argument("--state-dir", help="the running gateway's state directory "
                   "(default: from --config, else ./var/sealgate)")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    s.required = True
    ls = s.add_parser("list", help="pending tickets")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="decided tickets too")
    ls.set_defaults(handler=_list)
    for action in ("approve", "deny", "cancel"):
        a = s.add_parser(action, help=f"{action} a ticket")
        a.add_argument("id")
        a.add_argument("--reason", required=(action == "deny"), default="")
        a.set_defaults(handler=_decide(action))
