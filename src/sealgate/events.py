"""The audit event stream: every sealed log leaf, in order, to a SIEM ([[events]]: webhook, syslog).

Each sink keeps a cursor (the next log index to deliver) in the state
directory and reads the sealed log from there, so what it sends is what the
evidence says, a restart resumes where it stopped, and the receiver can
prove it saw every index.  Delivery is at least once, in log order: an
event may arrive twice only after a failure (a lost webhook answer, a
syslog connection that dropped before its confirmation window), and then
with the same index.
"""

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import attrs
import orjson
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from sealgate.configtable import Table, resolveSecret
from sealgate.webhook import makeAgent, postJSON, sign

SINK_KINDS = ("webhook", "syslog")
#: Private enterprise number reserved for documentation (RFC 5612), as the
#: SD-ID suffix of the structured data every syslog message carries.
SD_ID = "sealgate@32473"
#: Facility "log audit" (RFC 5424 section 6.2.1).
FACILITY_AUDIT = 13
BATCH = 200


@attrs.frozen
class EventSink:
    name: str
    kind: str
    url: str | None = attrs.field(default=None, repr=False)
    secret: str | None = attrs.field(default=None, repr=False)
    address: str | None = None
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float = 10.0
    #: Seconds a syslog connection must stay up after a write before the
    #: events written count as delivered (TCP has no application ack).
    confirm: float = 2.0
    start: str = "beginning"


def parseSink(t: Table, names: set[str]) -> EventSink:
    """One C{[[events]]} table."""
    name = t.str("name", required=True)
    if name in names or not name.replace("-", "").replace("_", "").isalnum():
        raise t.where.error("name", f"{name!r} is a duplicate or not a plain name",
                            "give each [[events]] entry its own name of letters, digits, - and _")
    kind = t.str("kind", required=True)
    if kind not in SINK_KINDS:
        raise t.where.error("kind", f"unknown kind {kind!r}", f"use one of: {', '.join(SINK_KINDS)}")
    url = secret = address = None
    if kind == "webhook":
        url = t.str("url", required=True)
        if not url.startswith(("https://", "http://")):
            raise t.where.error("url", "is not an http(s) URL", 'write e.g. "https://siem.example.com/in"')
        secret = resolveSecret(t, "secret", required=True)
    else:
        address = t.str("address", required=True)
        try:
            endpoints.clientFromString(None, address)
        except Exception as e:
            raise t.where.error("address", f"cannot parse endpoint {address!r} ({e})",
                                'write e.g. "tcp:host=127.0.0.1:port=601" or "tls:host=siem:port=6514"')
    start = t.str("start", "beginning")
    if start not in ("beginning", "now"):
        raise t.where.error("start", f"unknown start {start!r}", 'use "beginning" or "now"')
    sink = EventSink(name=name, kind=kind, url=url, secret=secret, address=address,
                     backoff=t.duration("backoff", 1.0), max_backoff=t.duration("max_backoff", 60.0),
                     timeout=t.duration("timeout", 10.0), confirm=t.duration("confirm", 2.0),
                     start=start)
    t.finish()
    return sink


def eventRecord(origin: str, n: int, session: str | None, kind: str, body: dict) -> dict:
    """What a sink sends for one log leaf: its index, node, session and the sealed fields."""
    return {"index": n, "node": origin, "session": session, "type": kind,
            "time": body.get("time"), "leaf": body}


def syslogMessage(record: dict, hostname: str, pid: int) -> bytes:
    """RFC 5424 message (BOM + JSON as MSG), framed by octet counting (RFC 6587 3.4.1)."""
    leaf = record["leaf"]
    severity = 4 if _isWarning(record) else 6
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["time"] or 0))
    stamp += f".{int(((record['time'] or 0) % 1) * 1e6):06d}Z"
    msgid = record["type"] if record["type"] != "event" else f"event.{leaf.get('event', '-')}"
    sd = (f'[{SD_ID} index="{record["index"]}" node="{_sdEscape(record["node"])}"'
          f' session="{_sdEscape(record["session"] or "-")}"]')
    head = f"<{FACILITY_AUDIT * 8 + severity}>1 {stamp} {hostname} sealgate {pid} {msgid[:32]} {sd} "
    message = head.encode() + b"\xef\xbb\xbf" + orjson.dumps(record)
    return str(len(message)).encode() + b" " + message


def _isWarning(record: dict) -> bool:
    fields = record["leaf"].get("fields") or {}
    return fields.get("verdict") == "deny" or fields.get("kind") == "login_failed"


def _sdEscape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def readLeaves(stateDir: Path, start: int, limit: int) -> tuple[str, int, list]:
    """(origin, log size, records from C{start}) read in a thread."""
    from sealgate.recording import _format as fmt
    from sealgate.recording.reader import StoreReader

    with StoreReader(stateDir) as r, r.snapshot():
        out = []
        origin = r.origin
        for n, session, kind, leaf in r.logLeavesFrom(start, limit):
            try:
                body = fmt.parseLogLeaf(leaf)
            except fmt.FormatError:
                body = {"unreadable": True}   # verify names it; the stream keeps its place
            out.append(eventRecord(origin, n, session, kind, body))
        return origin, r.logSize(), out


def _cursorPath(stateDir: Path, name: str) -> Path:
    return stateDir / "events" / f"{name}.json"


def loadCursor(stateDir: Path, name: str) -> int | None:
    try:
        return int(json.loads(_cursorPath(stateDir, name).read_text())["next"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def saveCursor(stateDir: Path, name: str, value: int) -> None:
    path = _cursorPath(stateDir, name)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"next": value}))
    os.replace(tmp, path)


class _SyslogClient(protocol.Protocol):
    def __init__(self, lost: defer.Deferred):
        self.lost = lost

    def connectionLost(self, reason):
        if not self.lost.called:
            self.lost.callback(None)


class Pump:
    """
    Delivers one sink: read the leaves after its cursor (thread), send them
    in order, advance the cursor once they are delivered, back off on
    failure.  Never blocks the reactor; never reorders.
    """

    _log = Logger()

    def __init__(self, sink: EventSink, stateDir: Path, reactor, threadpool, agent=None):
        self.sink = sink
        self.stateDir = stateDir
        self.reactor = reactor
        self.threadpool = threadpool
        self.agent = agent if agent is not None or sink.kind != "webhook" else makeAgent(reactor)
        self.next: int | None = None
        self.size = 0
        self.delivered = 0
        self.failures = 0
        self.lastError: str | None = None
        self._syslog: _SyslogClient | None = None
        self._unconfirmed: int | None = None   # first index written on the live connection
        self._rewind: int | None = None        # where to resume after a lost connection
        self._stopped = False
        self._wake: Any = None
        self._host = socket.gethostname() or "-"

    def pending(self) -> int:
        return max(0, self.size - (self.next or 0))

    def _thread(self, fn, *args):
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args)

    @defer.inlineCallbacks
    def run(self):
        saved = yield self._thread(loadCursor, self.stateDir, self.sink.name)
        if saved is None:
            _, size, _ = yield self._thread(readLeaves, self.stateDir, 0, 0)
            saved = size if self.sink.start == "now" else 0
        self.next = saved
        while not self._stopped:
            try:
                origin, self.size, records = yield self._thread(
                    readLeaves, self.stateDir, self.next, BATCH)
                if records:
                    yield self._deliver(records)
                    self.next = records[-1]["index"] + 1
                    if self._rewind is not None:
                        self.next, self._rewind = self._rewind, None
                    self.delivered += len(records)
                    if self.sink.kind == "webhook":
                        yield self._thread(saveCursor, self.stateDir, self.sink.name, self.next)
                    self.failures, self.lastError = 0, None
                    continue
                yield self._sleep(1.0)
            except Exception as e:
                if self._stopped:
                    break
                if self._rewind is not None:
                    self.next, self._rewind = self._rewind, None
                self.failures += 1
                self.lastError = f"{type(e).__name__}: {e}"[:300]
                wait = min(self.sink.max_backoff, self.sink.backoff * 2 ** (self.failures - 1))
                self._log.warn("Event sink {name}: {why}; retrying from index {n} in {wait}s",
                               name=self.sink.name, why=self.lastError, n=self.next, wait=wait)
                yield self._sleep(wait)

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._wake = self.reactor.callLater(seconds, d.callback, None)
        return d

    def _deliver(self, records: list) -> defer.Deferred:
        if self.sink.kind == "webhook":
            body = orjson.dumps({"type": "sealgate.events", "events": records})
            headers = {"Content-Type": "application/json", "User-Agent": "sealgate",
                       "X-Sealgate-Signature": sign(self.sink.secret or "", body),
                       "X-Sealgate-First-Index": str(records[0]["index"])}
            return postJSON(self.agent, self.reactor, self.sink.url or "", body, headers,
                            self.sink.timeout)
        return self._sendSyslog(records)

    @defer.inlineCallbacks
    def _sendSyslog(self, records: list):
        if self._syslog is None:
            yield self._connect()
        assert self._syslog is not None
        if self._unconfirmed is None:
            self._unconfirmed = records[0]["index"]
        transport = self._syslog.transport
        assert transport is not None
        transport.write(b"".join(syslogMessage(r, self._host, os.getpid()) for r in records))
        upTo = records[-1]["index"] + 1
        self.reactor.callLater(self.sink.confirm, self._confirm, self._syslog, upTo)

    def _confirm(self, client, upTo: int) -> None:
        """The connection outlived the window: what was written up to C{upTo} is delivered."""
        if client is self._syslog and not self._stopped:
            self._unconfirmed = None if upTo >= (self.next or 0) else upTo
            self._thread(saveCursor, self.stateDir, self.sink.name, upTo).addErrback(
                lambda f: self._log.failure("Event sink {name}: cannot save its cursor", f,
                                            name=self.sink.name))

    @defer.inlineCallbacks
    def _connect(self):
        lost: defer.Deferred = defer.Deferred()
        endpoint = endpoints.clientFromString(self.reactor, self.sink.address)
        client = yield endpoint.connect(protocol.Factory.forProtocol(lambda: _SyslogClient(lost)))
        self._syslog = client
        lost.addCallback(self._lost, client)

    def _lost(self, _, client) -> None:
        if client is not self._syslog:
            return
        self._syslog = None
        if self._unconfirmed is not None and not self._stopped:
            # Written but not confirmed: send again from there (same indices).
            self._rewind, self._unconfirmed = self._unconfirmed, None
            self.lastError = "the syslog connection was lost"
            if self._wake is not None and self._wake.active():
                self._wake.reset(0)

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        if self._syslog is not None and self._syslog.transport is not None:
            self._syslog.transport.loseConnection()

    def status(self) -> dict:
        return {"name": self.sink.name, "kind": self.sink.kind, "next_index": self.next,
                "pending": self.pending(), "delivered": self.delivered,
                "failures": self.failures, "error": self.lastError}


class EventStream(Service):
    """The gateway's sinks, started once its store is up."""

    def __init__(self, sinks, stateDir: Path, reactor, threadpool, agent=None):
        self.pumps = [Pump(s, stateDir, reactor, threadpool, agent) for s in sinks]
        self._runs: list = []

    def startStreaming(self) -> None:
        for p in self.pumps:
            self._runs.append(p.run())

    def stopService(self):
        for p in self.pumps:
            p.stop()
        return super().stopService()

    def status(self) -> list:
        return [p.status() for p in self.pumps]


