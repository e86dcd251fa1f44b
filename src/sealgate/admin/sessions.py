"""GET /api/sessions...: recorded sessions, their audit events, frames, transcripts, exports, verification."""

import base64
import re
import tempfile
import time
from typing import Any
from urllib.parse import quote

from twisted.protocols.basic import FileSender

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
from sealgate.export import UnknownFormat, describe, findFormat, formatsFor, writeBounded
from sealgate.recording._engine import StoreError
from sealgate.recording.records import SessionQuery, parseTime

#: A transcript stops here; the frames endpoint pages through anything longer.
TRANSCRIPT_LIMIT = 4 * 1024 * 1024
#: An export download is written to a temporary file this size before it spills to disk.
SPOOL = 4 * 1024 * 1024
FILTERS = ("protocol", "connection", "identity", "state", "client", "command")


def summary(record) -> dict:
    """A L{SessionRecord} as the API lists it."""
    s = record.asJSON()
    del s["info"], s["open_leaf"], s["seal_leaf"]
    return s


def _timeArg(request, name: str) -> float | None:
    raw = strArg(request, name)
    try:
        return None if not raw else parseTime(raw)
    except ValueError as e:
        raise BadRequest(f"{name}: {e}")


class Unrenderable(BadRequest):
    """The recording does not render in the format asked for (the writer says why)."""

    status = 422


class SessionsAPI(Authenticated):
    """
    GET /api/sessions[?protocol=&connection=&identity=&state=&client=&command=&since=&until=&limit=];
    GET /api/sessions/ID (with its export formats); /ID/frames?after=SEQ&limit=N; /ID/transcript;
    /ID/asciicast; /ID/export/FORMAT (a download); /ID/verify.
    Everything is read through the store's read interface, in the admin site's threads.
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
            return self._export(request, sid, "asciicast", attachment=False)
        if len(path) == 3 and path[1] == "export":
            return self._export(request, sid, path[2], attachment=True)
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
        d = self.admin.service.store.redact(sid, int(seq), reason, actor=identity.id)

        def refused(f):
            f.trap(StoreError)
            raise BadRequest(str(f.value))
        return d.addCallbacks(
            lambda index: jsonBody(request, 200, {"session": sid, "frame": int(seq),
                                                  "redacted_by": identity.id, "log_index": index}),
            refused)

    def _reader(self):
        from sealgate.recording.pgreader import openReader

        return openReader(self.admin.service.config.gateway)

    def _query(self, request, live: dict) -> SessionQuery:
        filters: dict[str, Any] = {k: v for k in FILTERS if (v := strArg(request, k))}
        if filters.get("state") == "live":
            filters["state"] = "open"
            filters["ids"] = frozenset(live)
        limit = min(intArg(request, "limit", 100, minimum=1), 1000)
        try:
            return SessionQuery(since=_timeArg(request, "since"), until=_timeArg(request, "until"),
                                limit=limit, **filters)
        except ValueError as e:
            raise BadRequest(str(e))

    def _list(self, request):
        live = {s.id: (s.bytesFromClient, s.bytesToClient)
                for s in self.admin.service.gateway.sessions.values()}
        query = self._query(request, live)
        if query.ids is not None and not query.ids:
            return jsonBody(request, 200, {"sessions": []})

        def read():
            with self._reader() as r:
                rows = [summary(record) for record in r.findSessions(query)]
            for s in rows:
                if s["id"] in live:
                    s["state"] = "live"
                    s["bytes_from_client"], s["bytes_to_client"] = live[s["id"]]
            return {"sessions": rows}

        return inThread(self.admin, read).addCallback(lambda d: jsonBody(request, 200, d))

    def _detail(self, sid: str, live) -> dict:
        with self._reader() as r, r.snapshot():
            record = r.sessionRecord(sid)
            events = r.events(sid) if record is not None else []
        if record is None and live is None:
            raise NotFound(f"no session {sid!r}")
        if record is None:
            # Opened a moment ago: the store's writer has not committed it yet.
            return {"id": sid, "state": "live", "opened": live.started, "closed": None,
                    "protocol": live.protocol, "connection": live.connection.name,
                    "identity": live.identity.id, "client": live.client, "frames": 0,
                    "bytes_from_client": live.bytesFromClient, "bytes_to_client": live.bytesToClient,
                    "reason": None, "root": None, "info": {}, "events": [], "formats": []}
        s = summary(record)
        if live is not None:
            s["state"] = "live"
            s["bytes_from_client"], s["bytes_to_client"] = live.bytesFromClient, live.bytesToClient
        s["info"] = record.info
        s["events"] = events
        s["formats"] = [{**f, "url": f"/api/sessions/{quote(sid)}/export/{quote(f['name'])}"}
                        for f in describe(formatsFor(record.protocol))]
        return s

    def _frames(self, sid: str, after: int, limit: int) -> dict:
        frames: list[dict[str, Any]] = []
        more = False
        with self._reader() as r:
            if r.sessionRecord(sid) is None:
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
        """The session's transcript format (its plugin's, else the sealed commands and frames), bounded."""
        with self._reader() as r:
            session = r.recorded(sid)
            if session is None:
                raise NotFound(f"no session {sid!r}")
            return writeBounded(formatsFor(session.record.protocol)["transcript"], session, TRANSCRIPT_LIMIT)

    def _render(self, sid: str, name: str):
        """Write one export to a spooled temporary file (thread); @return: (format, file at 0)."""
        with self._reader() as r:
            session = r.recorded(sid)
            if session is None:
                raise NotFound(f"no session {sid!r}")
            try:
                fmt = findFormat(session.record.protocol, name)
            except UnknownFormat as e:
                raise NotFound(str(e))
            spool = tempfile.SpooledTemporaryFile(SPOOL)
            try:
                fmt.write(session, spool)
            except (ValueError, StoreError) as e:
                spool.close()
                raise Unrenderable(f"session {sid} cannot be exported as {name}: {e}")
        spool.seek(0)
        return fmt, spool

    def _export(self, request, sid: str, name: str, attachment: bool):
        def send(result):
            fmt, spool = result
            request.setHeader(b"content-type", fmt.mediaType.encode())
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"x-content-type-options", b"nosniff")
            if attachment:
                filename = re.sub(r"[^A-Za-z0-9._-]", "_", sid) + fmt.extension
                request.setHeader(b"content-disposition", f'attachment; filename="{filename}"'.encode())
            d = FileSender().beginFileTransfer(spool, request)

            def sent(result):
                spool.close()
                return b""  # the body went out already; a client gone midway just stops it
            return d.addBoth(sent)

        return inThread(self.admin, self._render, sid, name).addCallback(send)

    def _text(self, result, request) -> bytes:
        text, cut = result
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if cut:
            text += b"\n[transcript cut at 4 MiB: download it whole (export/transcript) or page through /frames]\n"
        return text

    def _verify(self, sid: str) -> dict:
        from sealgate.recording.verify import Report, trustedKey, verifyStore

        started = time.monotonic()
        with self._reader() as r:
            if r.sessionRecord(sid) is None:
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
