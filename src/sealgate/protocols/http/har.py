"""Recorded HTTP sessions as HAR 1.2 (``sealgate export --har``) and as text (``sealgate replay``)."""

import base64
import datetime
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from sealgate.masking import MaskingFailed, decodeContent, isTextType, mediaType, textCodec
from sealgate.protocols.http import _wire

FROM_CLIENT, TO_CLIENT = 0, 1


def _payload(frame) -> bytes | None:
    for name in ("data", "payload"):
        if hasattr(frame, name):
            value = getattr(frame, name)
            return None if value is None else bytes(value)
    if isinstance(frame, (tuple, list)):
        return bytes(frame[-1])
    raise TypeError(f"frame without a payload: {frame!r}")


def _filled(frames):
    """
    The frames with redacted payloads (None) replaced by as many "*" bytes
    as they held (from the next frame's stream offset), so the stream still
    parses; an unknown length yields nothing.
    """
    frames = list(frames)
    nextOffset: dict[int, int | None] = {}
    lengths = [0] * len(frames)
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        d = getattr(f, "direction", None)
        off = getattr(f, "offset", None)
        if _payload(f) is None:
            after = nextOffset.get(d)
            lengths[i] = (after - off) if (after is not None and off is not None) else 0
        nextOffset[d] = off
    for f, n in zip(frames, lengths, strict=True):
        data = _payload(f)
        yield f, (b"*" * n if data is None else data)


class _Message:
    def __init__(self, head: _wire.Head, at: float):
        self.head = head
        self.started = at
        self.ended = at
        self.body = bytearray()
        self.complete = False


class _Exchange:
    def __init__(self, request: _Message):
        self.request = request
        self.response: _Message | None = None
        self.informational: list[_Message] = []
        self.websocket: list[dict] = []


def exchanges(frames) -> list[_Exchange]:
    """
    Parse a recorded session back into exchanges (request, response,
    WebSocket messages after an upgrade).  Raises L{_wire.ProtocolError}
    on bytes that are not HTTP/1.1 as sealgate records it.
    """
    requests = _wire.MessageReader(responses=False)
    responses = _wire.MessageReader(responses=True)
    wsIn: _wire.WebSocketReader | None = None
    wsOut: _wire.WebSocketReader | None = None
    out: list[_Exchange] = []
    pendingReq: list[_Exchange] = []
    current: dict[int, _Message | None] = {FROM_CLIENT: None, TO_CLIENT: None}
    for frame, data in _filled(frames):
        direction = getattr(frame, "direction", None)
        if direction is None:
            direction = frame[1]
        at = float(getattr(frame, "time", 0.0) or 0.0)
        if direction == FROM_CLIENT:
            if wsIn is not None:
                wsIn.receive_data(data)
                _wsDrain(wsIn, out[-1], "send", at)
                continue
            requests.receive_data(data)
            while (ev := requests.next_event()) is not _wire.NEED_DATA:
                if isinstance(ev, _wire.Head):
                    msg = _Message(ev, at)
                    current[FROM_CLIENT] = msg
                    ex = _Exchange(msg)
                    out.append(ex)
                    pendingReq.append(ex)
                    responses.expect(ev.method)
                else:
                    _feed(current[FROM_CLIENT], ev, at)
        else:
            if wsOut is not None:
                wsOut.receive_data(data)
                _wsDrain(wsOut, out[-1], "receive", at)
                continue
            responses.receive_data(data)
            while (ev := responses.next_event()) is not _wire.NEED_DATA:
                if isinstance(ev, _wire.Head):
                    msg = _Message(ev, at)
                    current[TO_CLIENT] = msg
                    if not pendingReq:
                        raise _wire.ProtocolError("a response without a request")
                    if 100 <= ev.status < 200 and ev.status != 101:
                        pendingReq[0].informational.append(msg)
                    else:
                        pendingReq.pop(0).response = msg
                    if ev.status == 101:
                        wsIn, wsOut = _wire.WebSocketReader(), _wire.WebSocketReader()
                        leftover = bytes(requests._buf)
                        requests._buf.clear()
                        if leftover:
                            wsIn.receive_data(leftover)
                            _wsDrain(wsIn, out[-1], "send", at)
                elif isinstance(ev, _wire.Raw):
                    wsOut = wsOut or _wire.WebSocketReader()
                    wsOut.receive_data(ev.data)
                    _wsDrain(wsOut, out[-1], "receive", at)
                else:
                    _feed(current[TO_CLIENT], ev, at)
    end = responses.closed()
    if end is not None:
        # Only a response head puts the reader in its read-until-close state.
        last = current[TO_CLIENT]
        assert last is not None
        _feed(last, end, last.ended)
    return out


def _feed(msg: _Message | None, ev, at: float) -> None:
    if msg is None:
        return
    msg.ended = at
    if isinstance(ev, _wire.Body):
        msg.body += ev.data
    elif isinstance(ev, _wire.End):
        msg.complete = True


def _wsDrain(reader: _wire.WebSocketReader, ex: _Exchange, kind: str, at: float) -> None:
    while (fr := reader.next_event()) is not _wire.NEED_DATA:
        text = fr.opcode == 1
        ex.websocket.append({
            "type": kind, "time": at, "opcode": fr.opcode,
            "data": fr.payload.decode("utf-8", "replace") if text
            else base64.b64encode(fr.payload).decode("ascii"),
        })


def _decoded(msg: _Message) -> bytes:
    """The body with its coding undone (bounded, as masking decodes it), else as recorded."""
    body = bytes(msg.body)
    try:
        return decodeContent(body, msg.head.get(b"content-encoding"))
    except MaskingFailed:
        return body


def _asText(mime: str, body: bytes) -> str | None:
    """A body of a text type (masking's one list) in its own charset, or None."""
    media = mediaType(mime)
    if not media.textual:
        return None
    try:
        bom, codec = textCodec(body, media.charset)
        return body[len(bom):].decode(codec)
    except (MaskingFailed, UnicodeDecodeError):
        return None


def _headers(head: _wire.Head) -> list[dict]:
    return [{"name": n.decode("latin-1"), "value": v.decode("latin-1")} for n, v in head.headers]


def _content(mime: str, body: bytes) -> dict:
    if not body:
        return {"text": ""}
    text = _asText(mime, body)
    if text is not None:
        return {"text": text}
    return {"text": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


def toHar(frames, info: dict | None = None) -> dict:
    """
    A HAR 1.2 log of one recorded session.

    @param frames: the session's frames in order (objects with
        C{direction}, C{time} and C{data} or C{payload}).
    @param info: the session's OPEN record (C{meta.tls}, C{meta.host},
        C{identity}...) to build full URLs and a comment; optional.
    """
    info = info or {}
    meta = info.get("meta") or {}
    scheme = "https" if meta.get("tls") else "http"
    entries = []
    for ex in exchanges(frames):
        req, resp = ex.request, ex.response
        host = (req.head.get(b"host") or meta.get("host", "").encode() or b"localhost").decode("latin-1")
        target = req.head.target.decode("latin-1")
        url = target if "://" in target else f"{scheme}://{host}{target}"
        query = target.partition("?")[2]
        reqMime = (req.head.get(b"content-type") or b"").decode("latin-1")
        request: dict[str, Any] = {
            "method": req.head.method.decode("latin-1"), "url": url,
            "httpVersion": req.head.version.decode("latin-1"), "cookies": [],
            "headers": _headers(req.head),
            "queryString": [{"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)],
            "headersSize": -1, "bodySize": len(req.body),
        }
        if req.body:
            request["postData"] = {"mimeType": reqMime, **_content(reqMime, bytes(req.body))}
            request["postData"].pop("encoding", None)
        if resp is not None:
            mime = (resp.head.get(b"content-type") or b"").decode("latin-1")
            decoded = _decoded(resp)
            response = {
                "status": resp.head.status, "statusText": resp.head.reason.decode("latin-1"),
                "httpVersion": resp.head.version.decode("latin-1"), "cookies": [],
                "headers": _headers(resp.head),
                "content": {"size": len(decoded), "mimeType": mime, **_content(mime, decoded)},
                "redirectURL": (resp.head.get(b"location") or b"").decode("latin-1"),
                "headersSize": -1, "bodySize": len(resp.body),
            }
            if not resp.complete and resp.head.status != 101:
                response["comment"] = "response incomplete in the recording"
            wait = max(0.0, resp.started - req.ended) * 1000
            receive = max(0.0, resp.ended - resp.started) * 1000
        else:
            response = {"status": 0, "statusText": "", "httpVersion": "", "cookies": [],
                        "headers": [], "content": {"size": 0, "mimeType": ""},
                        "redirectURL": "", "headersSize": -1, "bodySize": -1,
                        "comment": "no response recorded"}
            wait = receive = 0.0
        send = max(0.0, req.ended - req.started) * 1000
        entry = {
            "startedDateTime": _iso(req.started), "time": round(send + wait + receive, 3),
            "request": request, "response": response, "cache": {},
            "timings": {"send": round(send, 3), "wait": round(wait, 3), "receive": round(receive, 3)},
        }
        if ex.informational:
            entry["comment"] = "; ".join(
                f"{m.head.status} {(m.head.get(b'sealgate-notice') or b'').decode('utf-8', 'replace')}"
                for m in ex.informational)
        if ex.websocket:
            entry["_resourceType"] = "websocket"
            entry["_webSocketMessages"] = ex.websocket
        entries.append(entry)
    comment = ""
    if info.get("identity"):
        comment = f"sealgate session of {info['identity'].get('subject')}"
    return {"log": {"version": "1.2", "creator": {"name": "sealgate", "version": _version()},
                    "pages": [], "entries": entries, "comment": comment}}


def writeHar(frames, out, info: dict | None = None) -> int:
    """
    Write one session as HAR 1.2 to a text or binary file.

    @return: the number of entries written.
    """
    har = toHar(frames, info)
    text = json.dumps(har, indent=1)
    try:
        out.write(text)
    except TypeError:
        out.write(text.encode())
    return len(har["log"]["entries"])


def exportHar(session, out) -> str:
    """The C{har} export format's writer (L{sealgate.interfaces.IExportFormat})."""
    try:
        return f"HAR 1.2, {writeHar(session.frames(), out, session.record.info)} entries"
    except _wire.ProtocolError as e:
        raise ValueError(f"it does not parse as HTTP/1.1: {e}")


def exportTranscript(session, out) -> str:
    """The C{transcript} export format's writer: the exchanges as text."""
    try:
        replay(session.frames(), out)
    except _wire.ProtocolError as e:
        raise ValueError(f"it does not parse as HTTP/1.1: {e}")
    return "HTTP exchanges as text"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sealgate")
    except Exception:
        return "0"


def replay(frames, out, speed=None, maxBody: int = 2048) -> None:
    """
    Print each exchange of a recorded session: request and response heads
    and the start of text bodies; with C{speed}, wait between exchanges
    as long as they were apart (divided by C{speed}).
    """
    previous = None
    for ex in exchanges(frames):
        if speed and previous is not None:
            time.sleep(max(0.0, ex.request.started - previous) / speed)
        previous = ex.request.started
        lines = [f"--- {_iso(ex.request.started)}", "> " + ex.request.head.first.decode("latin-1")]
        lines += [f"> {h['name']}: {h['value']}" for h in _headers(ex.request.head)]
        if ex.request.body:
            lines.append(_bodyText(ex.request.head, bytes(ex.request.body), maxBody))
        for m in ex.informational:
            lines.append("< " + m.head.first.decode("latin-1"))
        if ex.response is not None:
            lines.append("< " + ex.response.head.first.decode("latin-1"))
            lines += [f"< {h['name']}: {h['value']}" for h in _headers(ex.response.head)]
            body = _decoded(ex.response)
            if body:
                lines.append(_bodyText(ex.response.head, body, maxBody))
        for ws in ex.websocket:
            arrow = ">>" if ws["type"] == "send" else "<<"
            lines.append(f"{arrow} ws opcode {ws['opcode']}: {ws['data'][:maxBody]}")
        out.write(("\n".join(lines) + "\n").encode("utf-8", "replace"))


def _bodyText(head: _wire.Head, body: bytes, limit: int) -> str:
    mime = (head.get(b"content-type") or b"").decode("latin-1")
    if isTextType(mime):
        text = body[:limit].decode("utf-8", "replace")
        more = f"\n[... {len(body) - limit} more bytes]" if len(body) > limit else ""
        return text + more
    return f"[{len(body)} bytes of {mime or 'unknown type'}]"
