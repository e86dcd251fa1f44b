"""GET /metrics: Prometheus metrics counted from the sealed log itself, plus live gauges."""

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.logger import Logger
from twisted.web import resource, server

from sealgate.admin._http import Reply, inThread, problem

DECIDED = ("approved", "denied", "expired", "cancelled")


class Metrics:
    """
    Counters (sessions, bytes, verdicts, tickets) are read from the store's
    log, incrementally from the last leaf seen, in a thread at scrape time:
    what Prometheus shows is what the evidence says, and the hot path pays
    nothing.  Gauges (live sessions, store lag) are read on the reactor.
    """

    _log = Logger()

    def __init__(self, admin):
        self.admin = admin
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.sessions = Counter("sealgate_sessions", "Sessions opened", ["protocol"], registry=r)
        self.bytes = Counter("sealgate_session_bytes", "Bytes of closed sessions",
                             ["protocol", "direction"], registry=r)
        self.verdicts = Counter("sealgate_verdicts", "Chain verdicts on commands",
                                ["verdict", "kind"], registry=r)
        self.tickets = Counter("sealgate_tickets", "Approval ticket events", ["state"], registry=r)
        self.latency = Histogram("sealgate_ticket_decision_seconds",
                                 "Time from an approval request to its decision", ["outcome"],
                                 buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400),
                                 registry=r)
        self.active = Gauge("sealgate_sessions_active", "Sessions open now", ["protocol"], registry=r)
        self.liveBytes = Gauge("sealgate_session_live_bytes", "Bytes of the sessions open now",
                               ["direction"], registry=r)
        self.pending = Gauge("sealgate_tickets_pending", "Approval tickets waiting", registry=r)
        self.backlog = Gauge("sealgate_store_backlog_items",
                             "Items queued for the store's writer process", registry=r)
        self.writerUp = Gauge("sealgate_store_writer_up",
                              "1 while the store's writer process runs and takes items", registry=r)
        self.diskFull = Gauge("sealgate_store_disk_full",
                              "1 while the store's writer cannot write (disk full or I/O error)", registry=r)
        self.unsealedBytes = Gauge("sealgate_store_unsealed_bytes",
                                   "Bytes waiting to be made durable (payload plus a fixed cost per item)",
                                   registry=r)
        self.maxUnsealed = Gauge("sealgate_store_max_unsealed_bytes",
                                 "The configured bound on unsealed bytes ([gateway] max_unsealed)", registry=r)
        self.relaying = Gauge("sealgate_store_relaying",
                              "1 for the store's relaying state now: flowing, paused or failed",
                              ["state"], registry=r)
        self.unsealed = Gauge("sealgate_store_unsealed_leaves",
                              "Log leaves not yet covered by a signed checkpoint", registry=r)
        self.checkpointAge = Gauge("sealgate_store_checkpoint_age_seconds",
                                   "Age of the latest signed checkpoint", registry=r)
        self.logSize = Gauge("sealgate_log_leaves", "Leaves in the sealed log", registry=r)
        self.loginFailures = Counter("sealgate_login_failures", "Failed logins (sealed)",
                                     ["protocol"], registry=r)
        self.notifications = Counter("sealgate_notifications", "Notification deliveries",
                                     ["target", "outcome"], registry=r)
        self.eventsPending = Gauge("sealgate_events_pending",
                                   "Sealed log leaves an [[events]] sink has not delivered yet",
                                   ["sink"], registry=r)
        self.witnessSize = Gauge("sealgate_witness_size",
                                 "Largest log size a witness cosigned (witness=\"quorum\": that witness_quorum did)",
                                 ["witness"], registry=r)
        self.witnessLag = Gauge("sealgate_witness_lag_leaves",
                                "Leaves of the latest checkpoint a witness (or the quorum) has not cosigned yet",
                                ["witness"], registry=r)
        self._lock = threading.Lock()
        self._next = 0
        self._protocols: dict[str, str] = {}
        self._requested: dict[str, float] = {}

    def resource(self):
        return _MetricsResource(self)

    def _live(self) -> None:
        svc = self.admin.service
        byProtocol: dict[str, int] = {}
        fromClient = toClient = 0
        for s in svc.gateway.sessions.values():
            byProtocol[s.protocol] = byProtocol.get(s.protocol, 0) + 1
            fromClient += s.bytesFromClient
            toClient += s.bytesToClient
        self.active.clear()
        for p, n in byProtocol.items():
            self.active.labels(p).set(n)
        self.liveBytes.labels("from_client").set(fromClient)
        self.liveBytes.labels("to_client").set(toClient)
        self.pending.set(len(svc.approvals.pending()))
        self.backlog.set(svc.store.backlog() if hasattr(svc.store, "backlog") else 0)
        events = getattr(svc, "events", None)
        for status in (events.status() if events is not None else ()):
            self.eventsPending.labels(status["name"]).set(status["pending"])
        witnessing = getattr(svc, "witnessing", None)
        if witnessing is not None and witnessing.pumps:
            w = witnessing.status()
            for one in w["witnesses"] + [{"name": "quorum", "size": w["witnessed_size"], "lag_leaves": w["lag_leaves"]}]:
                self.witnessSize.labels(one["name"]).set(one["size"])
                self.witnessLag.labels(one["name"]).set(one["lag_leaves"])
        status = getattr(svc.store, "status", None)
        if status is not None:
            st = status()
            self.writerUp.set(int(st["writer_up"]))
            self.diskFull.set(int(st["disk_full"]))
            self.unsealedBytes.set(st["unsealed_bytes"])
            self.maxUnsealed.set(st["max_unsealed"])
            for state in ("flowing", "paused", "failed"):
                self.relaying.labels(state).set(int(st["state"] == state))

    def scan(self) -> None:
        """Count the log leaves added since the last scan (thread)."""
        from sealgate.recording import _format as fmt
        from sealgate.recording.pgreader import openReader

        with self._lock, openReader(self.admin.service.config.gateway) as r:
            for n, session, kind, leaf in r.logLeaves(self._next):
                self._next = n + 1
                try:
                    body = fmt.parseLogLeaf(leaf)
                except fmt.FormatError:
                    continue  # verify names it; metrics only count
                self._count(kind, session, body)
            latest = r.latestCheckpoint()
            size = r.logSize()
        self.logSize.set(size)
        self.unsealed.set(size - (latest[0] if latest else 0))
        if latest:
            self.checkpointAge.set(max(0.0, time.time() - latest[1]))

    def _count(self, kind: str, session, body: dict) -> None:
        if kind == "open":
            protocol = str((body.get("info") or {}).get("protocol") or "unknown")
            self._protocols[session] = protocol
            self.sessions.labels(protocol).inc()
        elif kind == "close":
            protocol = self._protocols.pop(session, "unknown")
            stats = body.get("stats") or {}
            for direction in ("from_client", "to_client"):
                value = stats.get(f"bytes_{direction}")
                if isinstance(value, (int, float)) and value >= 0:
                    self.bytes.labels(protocol, direction).inc(value)
        elif kind == "event":
            fields = body.get("fields") or {}
            what = body.get("event")
            if what == "command" and not fields.get("decided"):
                self.verdicts.labels(str(fields.get("verdict")), str(fields.get("kind"))).inc()
            elif what == "command":
                # The decision of a held command, counted under what it became.
                self.verdicts.labels(str(fields.get("verdict")) + "_after_hold",
                                     str(fields.get("kind"))).inc()
            elif what == "login_failed":
                self.loginFailures.labels(str(fields.get("protocol") or "unknown")).inc(
                    _count(fields))
            elif what == "approval":
                state = str(fields.get("state"))
                ticket = str(fields.get("ticket"))
                self.tickets.labels(state).inc()
                if state == "requested":
                    self._requested[ticket] = body.get("time") or 0
                elif state in DECIDED and ticket in self._requested:
                    self.latency.labels(state).observe(
                        max(0.0, (body.get("time") or 0) - self._requested.pop(ticket)))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _MetricsResource(resource.Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        m = self.metrics
        m._live()

        reply = Reply(request)  # a scraper that gives up early is no error of ours

        def done(body):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            reply.send(body)

        def failed(f):
            self._log.failure("Metrics scrape failed", f)
            reply.send(problem(request, 500, "metrics unavailable"))

        inThread(m.admin, lambda: (m.scan(), m.render())[1]).addCallbacks(done, failed)
        return server.NOT_DONE_YET


def _count(fields: dict) -> int:
    """Failed logins one event stands for (aggregated events carry a count)."""
    n = fields.get("count", 1)
    return n if isinstance(n, int) and n > 0 else 1
