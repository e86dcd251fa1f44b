"""GET /api/sessions...: recorded sessions, their audit events, frames for replay, transcripts, verification."""

import base64
import io
import time
from typing import Any

from sealgate.admin._http import (
    Authenticated,
    BadRequest,
    NotFound,
    intArg,
    inThread,
    jsonBody,
    jsonObject,
    strArg,
)
from sealgate.admin.roles import require
from sealgate.recording._engine import StoreError

#: A transcript stops here; the frames endpoint pages through anything longer.
TRANSCRIPT_LIMIT = 4 * 1024 * 1024
FILTERS = ("protocol", "connection", "identity", "state", "client")


def _subject(info: dict) -> str:
    ident = info.get("identity")
    if isinstance(ident, dict):
        return str(ident.get("subject") or ident.get("name") or "")
    return str(ident or "")


def summary(row: dict) -> dict:
    info = row.get("info") or {}
    return {
        "id": row["id"], "state": row["state"], "opened": row["opened"], "closed": row["closed"],
        "protocol": row["protocol"] or info.get("protocol"), "connection": info.get("connection"),
        "identity": _subject(info), "client": info.get("client"), "frames": row["size"],
        "bytes_from_client": row["bytes_from_client"], "bytes_to_client": row["bytes_to_client"],
        "reason": row["reason"], "root": row["root"],
    }


def _query(filters: dict, since, limit: int, live) -> tuple[str, list]:
    """The filters as SQL over the store's session table (newest first), so a big store is not read whole."""
    from sealgate.recording.reader import _SESSION_COLUMNS

    where, params = [], []
    for key, want in filters.items():
        if key == "protocol":
            where.append("protocol = ?")
        elif key == "identity":
            where.append("instr(lower(coalesce(json_extract(info, '$.identity.subject'), "
                         "json_extract(info, '$.identity.name'), '')), ?) > 0")
            want = want.lower()
        elif key == "state":
            states = {"open": "closed IS NULL", "closed": "closed IS NOT NULL AND cutoff = 0",
                      "cut off": "cutoff = 1"}
            if want == "live":
                where.append(f"id IN ({', '.join('?' * len(live))})")
                params.extend(live)
            else:
                where.append(states.get(want, "0"))
            continue
        else:
            where.append(f"json_extract(info, '$.{key}') = ?")
        params.append(want)
    if since is not None:
        where.append("opened >= ?")
        params.append(since)
    sql = f"SELECT {', '.join(_SESSION_COLUMNS)} FROM sessions"
    if where:
        sql += " WHERE " + " AND ".join(f"({w})" for w in where)
    return sql + " ORDER BY opened DESC LIMIT ?", [*params, limit]


def commandsTranscript(events, start: float) -> bytes:
    """The session's sealed commands, verdicts and ticket decisions as text lines."""
    lines = []
    for e in events:
        if e.get("type") != "event":
            continue
        f = e.get("fields") or {}
        at = f"[+{(e.get('time') or start) - start:9.3f}s]"
        if e.get("event") == "command":
            verdict = str(f.get("verdict"))
            if f.get("decided"):
                verdict += " (after approval)" if verdict == "allow" else " (decided)"
            extra = "".join(f" {k}={f[k]}" for k in ("rule", "ticket", "reason") if f.get(k))
            lines.append(f"{at} {f.get('kind')}> {f.get('command')}\n{' ' * len(at)}   -- {verdict}{extra}")
        elif e.get("event") == "approval":
            by = f" by {f['by']}" if f.get("by") else ""
            why = f": {f['reason']}" if f.get("reason") else ""
            lines.append(f"{at} ticket {f.get('ticket')} {f.get('state')}{by}{why}")
        elif e.get("event") not in (None, "progress"):
            lines.append(f"{at} {e.get('event')} {f}")
    return ("\n".join(lines) + "\n").encode() if lines else b"(no commands)\n"


class _Paper(io.RawIOBase):
    """A bounded write target for a plugin's replay()."""

    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.cut = False

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        if self.size + len(data) > self.limit:
            self.cut = True
            data = data[: max(0, self.limit - self.size)]
        self.parts.append(data)
        self.size += len(data)
        return len(data)


class SessionsAPI(Authenticated):
    """
    GET /api/sessions[?protocol=&connection=&identity=&state=&client=&since=&limit=];
    GET /api/sessions/ID; /ID/frames?after=SEQ&limit=N; /ID/transcript; /ID/verify.
    """

    def handle(self, request, identity, path):
        if request.method == b"POST" and len(path) == 4 and path[1:4:2] == ["frames", "redact"]:
            return self._redact(request, identity, path[0], path[2])
        require(identity, self.admin.service.config, "read")
        if request.method != b"GET":
            raise NotFound("no such endpoint")
        if not path:
            return self._list(request)
        sid = path[0]
        if len(path) == 1:
            live = self.admin.service.gateway.sessions.get(sid)
            return inThread(self.admin, self._detail, sid, live).addCallback(
                lambda d: jsonBody(request, 200, d))
        if path[1:] == ["frames"]:
            after = intArg(request, "after", -1, minimum=-1)
            limit = min(intArg(request, "limit", 500, minimum=1), 5000)
            return inThread(self.admin, self._frames, sid, after, limit).addCallback(
                lambda d: jsonBody(request, 200, d))
        if path[1:] == ["transcript"]:
            return inThread(self.admin, self._transcript, sid).addCallback(self._text, request)
        if path[1:] == ["asciicast"]:
            return inThread(self.admin, self._asciicast, sid).addCallback(self._cast, request)
        if path[1:] == ["verify"]:
            return inThread(self.admin, self._verify, sid).addCallback(lambda d: jsonBody(request, 200, d))
        raise NotFound("no such endpoint")

    def _redact(self, request, identity, sid: str, seq: str):
        """
        POST /api/sessions/ID/frames/SEQ/redact {"reason": ...}: delete one
        frame's payload and salt while the gateway runs (admins only); the
        redaction is sealed with who and why, and every proof stays valid.
        """
        require(identity, self.admin.service.config, "redact")
        if not seq.isdigit():
            raise BadRequest("the frame number must be an integer")
        reason = str(jsonObject(request).get("reason", "")).strip()
        if not reason:
            raise BadRequest("a redaction needs a reason")
        d = self.admin.service.store.redact(sid, int(seq), reason, actor=identity.subject)

        def refused(f):
            f.trap(StoreError)
            raise BadRequest(str(f.value))
        return d.addCallbacks(
            lambda index: jsonBody(request, 200, {"session": sid, "frame": int(seq),
                                                  "redacted_by": identity.subject, "log_index": index}),
            refused)

    def _reader(self):
        from sealgate.recording.reader import StoreReader

        return StoreReader(self.admin.service.config.gateway.state_dir)

    def _list(self, request):
        filters = {k: v for k in FILTERS if (v := strArg(request, k))}
        since = request.args.get(b"since")
        try:
            since = float(since[0]) if since else None
        except ValueError:
            raise BadRequest("since must be a Unix time")
        limit = min(intArg(request, "limit", 100, minimum=1), 1000)
        live = {s.id: (s.bytesFromClient, s.bytesToClient)
                for s in self.admin.service.gateway.sessions.values()}
        if filters.get("state") == "live" and not live:
            return jsonBody(request, 200, {"sessions": []})

        def read():
            with self._reader() as r:
                rows = [summary(r._session(row)) for row in r.db.execute(*_query(filters, since, limit, live))]
            for s in rows:
                if s["id"] in live:
                    s["state"] = "live"
                    s["bytes_from_client"], s["bytes_to_client"] = live[s["id"]]
            return {"sessions": rows}

        return inThread(self.admin, read).addCallback(lambda d: jsonBody(request, 200, d))

    def _detail(self, sid: str, live) -> dict:
        with self._reader() as r:
            row = r.session(sid)
            events = r.events(sid) if row is not None else []
        if row is None and live is None:
            raise NotFound(f"no session {sid!r}")
        if row is None:
            # Opened a moment ago: the store's writer has not committed it yet.
            return {"id": sid, "state": "live", "opened": live.started, "closed": None,
                    "protocol": live.protocol, "connection": live.connection.name,
                    "identity": live.identity.subject, "client": live.client, "frames": 0,
                    "bytes_from_client": live.bytesFromClient, "bytes_to_client": live.bytesToClient,
                    "reason": None, "root": None, "info": {}, "events": []}
        s = summary(row)
        if live is not None:
            s["state"] = "live"
            s["bytes_from_client"], s["bytes_to_client"] = live.bytesFromClient, live.bytesToClient
        s["info"] = row["info"]
        s["events"] = events
        return s

    def _frames(self, sid: str, after: int, limit: int) -> dict:
        frames: list[dict[str, Any]] = []
        more = False
        with self._reader() as r:
            if r.session(sid) is None:
                raise NotFound(f"no session {sid!r}")
            for f in r.frames(sid):
                if f.seq <= after:
                    continue
                if len(frames) >= limit:
                    more = True
                    break
                frames.append({"seq": f.seq, "time": f.time, "channel": f.channel,
                               "direction": "client" if f.direction == 0 else "server",
                               "data": None if f.data is None else base64.b64encode(f.data).decode()})
        return {"frames": frames, "more": more,
                "next": frames[-1]["seq"] if frames else after}

    def _transcript(self, sid: str) -> tuple[bytes, bool]:
        from sealgate.cli.store import transcript
        from sealgate.plugins import protocolPlugins

        paper = _Paper(TRANSCRIPT_LIMIT)
        with self._reader() as r:
            row = r.session(sid)
            if row is None:
                raise NotFound(f"no session {sid!r}")
            plugin = protocolPlugins().get(row["protocol"] or "")
            try:
                render = plugin.replay if plugin is not None else None
                if render is None:
                    raise NotImplementedError
                render(r.frames(sid), paper, None)
            except (NotImplementedError, ImportError, AttributeError):
                # No replay from the plugin: the sealed commands and decisions
                # tell the story, then every frame as text or hex.
                paper = _Paper(TRANSCRIPT_LIMIT)
                paper.write(commandsTranscript(r.events(sid), row["opened"] or 0))
                paper.write(b"\n---- frames ----\n")
                transcript(r.frames(sid), paper, None)
        return b"".join(paper.parts), paper.cut

    def _asciicast(self, sid: str) -> bytes:
        """A terminal session as asciicast v2, for the console's player."""
        with self._reader() as r:
            row = r.session(sid)
            if row is None:
                raise NotFound(f"no session {sid!r}")
            if row["protocol"] != "ssh":
                raise NotFound(f"session {sid} is {row['protocol']}, not a terminal session")
            from sealgate.protocols.ssh.asciicast import writeAsciicast

            out = io.StringIO()
            try:
                writeAsciicast(r.frames(sid), out)
            except ValueError as e:
                raise NotFound(f"session {sid}: {e}")
        return out.getvalue().encode()

    def _cast(self, body: bytes, request) -> bytes:
        request.setHeader(b"content-type", b"application/x-asciicast")
        request.setHeader(b"cache-control", b"no-store")
        return body

    def _text(self, result, request) -> bytes:
        text, cut = result
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if cut:
            text += b"\n[transcript cut at 4 MiB: page through /frames for the rest]\n"
        return text

    def _verify(self, sid: str) -> dict:
        from sealgate.recording.verify import Report, trustedKey, verifyStore

        started = time.monotonic()
        with self._reader() as r:
            if r.session(sid) is None:
                raise NotFound(f"no session {sid!r}")
            # Checked afresh every time (no cache): a segment file altered
            # after an earlier check must show up as altered now.
            # Against the key pinned at the first start, as `sealgate verify` does.
            report = Report()
            report = verifyStore(r, trustedKey(report, r), sid, report=report)
        return {"session": sid, "ok": report.ok, "problems": report.problems,
                "warnings": report.warnings, "frames": report.frames, "log_size": report.logSize,
                "checkpoint": report.checkpoint, "key": report.key,
                "seconds": round(time.monotonic() - started, 3)}
