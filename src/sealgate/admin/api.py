"""The admin HTTP API: health, readiness, sessions and approval decisions (JSON)."""

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from sealgate.approvals import ApprovalError
from sealgate.identity import AuthenticationFailed


def _json(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, default=str).encode() + b"\n"


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, service):
        super().__init__()
        self.service = service


class Health(_Leaf):
    def render_GET(self, request):
        return _json(request, 200, {"status": "ok"})


class Ready(_Leaf):
    def render_GET(self, request):
        svc = self.service
        problem = None if svc.ready else "starting or stopping"
        if problem is None and svc.store is not None:
            problem = svc.store.healthy()
        if problem:
            return _json(request, 503, {"status": "unavailable", "reason": problem})
        return _json(request, 200, {"status": "ready"})


class Authenticated(_Leaf):
    """Calls C{handle(request, identity, path)} with the identity of the bearer token."""

    _log = Logger()

    def render(self, request):
        auth = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if not auth.lower().startswith("bearer "):
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, 401, {"error": "a bearer token (OIDC token or API key) is required"})
        d = defer.maybeDeferred(self.service.identity.authenticate, auth[7:].strip())

        def ok(identity):
            return self.handle(request, identity, [p.decode() for p in request.postpath if p])

        def done(body):
            if not request.finished:
                request.write(body)
                request.finish()

        def failed(f):
            if f.check(AuthenticationFailed):
                body = _json(request, 401, {"error": f.value.reason})
            elif f.check(ApprovalError):
                body = _json(request, f.value.status, {"error": str(f.value)})
            else:
                self._log.failure("Admin API error", f)
                body = _json(request, 500, {"error": "internal error"})
            done(body)

        d.addCallback(ok).addCallbacks(done, failed)
        return server.NOT_DONE_YET


class ApprovalsAPI(Authenticated):
    """GET /api/approvals; POST /api/approvals/ID/approve|deny|cancel {"reason": ...}."""

    def handle(self, request, identity, path):
        approvals = self.service.approvals
        method = request.method.decode()
        if method == "GET" and not path:
            everything = request.args.get(b"all") == [b"1"]
            tickets = approvals.tickets.values() if everything else approvals.pending()
            return _json(request, 200, {"tickets": [t.asDict() for t in tickets]})
        if method == "GET" and len(path) == 1:
            return _json(request, 200, approvals.get(path[0]).asDict())
        if method == "POST" and len(path) == 2 and path[1] in ("approve", "deny", "cancel"):
            try:
                body = json.loads(request.content.read() or b"{}")
            except ValueError:
                return _json(request, 400, {"error": "the body must be JSON"})
            reason = str(body.get("reason", ""))
            action = getattr(approvals, path[1])
            return _json(request, 200, action(path[0], identity, reason).asDict())
        return _json(request, 404, {"error": "no such endpoint"})


class SessionsAPI(Authenticated):
    """GET /api/sessions: the live sessions."""

    def handle(self, request, identity, path):
        live = [{
            "id": s.id, "connection": s.connection.name, "protocol": s.protocol,
            "identity": s.identity.subject, "client": s.client, "started": s.started,
            "bytes_from_client": s.bytesFromClient, "bytes_to_client": s.bytesToClient,
        } for s in self.service.gateway.sessions.values()]
        return _json(request, 200, {"sessions": live})


def makeAdminSite(service) -> server.Site:
    root = resource.Resource()
    root.putChild(b"healthz", Health(service))
    root.putChild(b"readyz", Ready(service))
    api = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"approvals", ApprovalsAPI(service))
    api.putChild(b"sessions", SessionsAPI(service))
    site = server.Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
