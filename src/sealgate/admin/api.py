"""The admin HTTP site: health, readiness, metrics, OpenAPI, the JSON API and the console."""


from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server, static

from sealgate.admin._http import (
    STATIC,
    AdminRequest,
    Authenticated,
    BadRequest,
    Leaf,
    NotFound,
    jsonBody,
    jsonObject,
    problem,
)
from sealgate.admin.console import Logins
from sealgate.admin.metrics import Metrics
from sealgate.admin.notify import Notifier
from sealgate.admin.roles import may, mayReveal, require, rolesOf
from sealgate.prelogin import GuardedChannel

# Kept for older imports.
_json = jsonBody


def storeProblem(store) -> str | None:
    """
    Why the store cannot record as it must, or None: its writer is down,
    its disk is full, its backlog is over max_unsealed, or it failed.
    """
    if store is None:
        return None
    status = getattr(store, "status", None)
    if status is None:
        return store.healthy()
    s = status()
    if not s["writer_up"]:
        return s["reason"] or "the recording store's writer process is down"
    return s["reason"]


class Health(Leaf):
    """Liveness: a gateway whose store cannot record is not alive as an audit gateway."""

    def render_GET(self, request):
        problem = storeProblem(self.admin.service.store)
        if problem:
            return jsonBody(request, 503, {"status": "unhealthy", "reason": problem})
        return jsonBody(request, 200, {"status": "ok"})


class Ready(Leaf):
    def render_GET(self, request):
        svc = self.admin.service
        problem = None if svc.ready else "starting or stopping"
        if problem is None:
            problem = storeProblem(svc.store)
        fleet = getattr(svc, "fleet", None)
        if problem is None and fleet is not None and not fleet.lease.renewed:
            problem = f"node {fleet.node} cannot reach the fleet database"
        witnessing = getattr(svc, "witnessing", None)
        # Shown, never failing readiness: sessions go on while a witness is down (the lag says so).
        extra = {"witnessing": witnessing.status()} if witnessing is not None and witnessing.pumps else {}
        if problem:
            return jsonBody(request, 503, {"status": "unavailable", "reason": problem, **extra})
        return jsonBody(request, 200, {"status": "ready", **extra})


class Me(Authenticated):
    """GET /api/me: who the caller is, their roles, and (console logins) the CSRF token."""

    def handle(self, request, identity, path):
        login = self.admin.logins.get(request.getCookie(b"sealgate_login"))
        body = {**identity.asDict(), "roles": sorted(rolesOf(identity, self.admin.service.config))}
        if login is not None and login.identity == identity:
            body["csrf"] = login.csrf
            body["expires"] = login.expires
        return jsonBody(request, 200, body)


class ApprovalsAPI(Authenticated):
    """
    GET /api/approvals[?all=1]; GET /api/approvals/ID;
    POST /api/approvals/ID/approve|deny|cancel {"reason": ...}.
    """

    def ticket(self, t, identity) -> dict:
        d = t.asDict(reveal=mayReveal(identity, self.admin.service.config, t))
        d["notifications"] = self.admin.notifier.forTicket(t.id)
        return d

    def handle(self, request, identity, path):
        return defer.ensureDeferred(self._handle(request, identity, path))

    async def _handle(self, request, identity, path):
        # One path for both: with a fleet, tickets are every node's and decided in its database.
        approvals = self.admin.service.approvals
        config = self.admin.service.config
        method = request.method.decode()
        reader = may(identity, config, "read")
        if method == "GET" and not path:
            everything = request.args.get(b"all") == [b"1"]
            tickets = await approvals.listing(everything)
            if not reader:
                # Anyone may follow their own tickets.
                tickets = [t for t in tickets if t.requester.id == identity.id]
            return jsonBody(request, 200, {"tickets": [self.ticket(t, identity) for t in tickets]})
        if method == "GET" and len(path) == 1:
            t = await approvals.fetch(path[0])
            if not reader and t.requester.id != identity.id:
                require(identity, config, "read")
            return jsonBody(request, 200, self.ticket(t, identity))
        if method == "POST" and len(path) == 2 and path[1] in ("approve", "deny", "cancel"):
            body = jsonObject(request)
            reason = str(body.get("reason", ""))[:1000]
            t = await approvals.fetch(path[0])
            mine = t.requester.id == identity.id
            if path[1] == "cancel":
                if not mine:
                    require(identity, config, "cancel-any")
                t = await approvals.decide(t.id, identity, "cancel", reason, anyone=not mine)
                return jsonBody(request, 200, self.ticket(t, identity))
            if path[1] == "deny" and not reason:
                raise BadRequest("a denial needs a reason")
            if not mine:
                # The requester gets the specific refusal from the tickets themselves.
                require(identity, config, "decide")
            t = await approvals.decide(t.id, identity, path[1], reason)
            return jsonBody(request, 200, self.ticket(t, identity))
        raise NotFound("no such endpoint")


class NodesAPI(Authenticated):
    """GET /api/nodes (readers): the fleet's nodes, up or down; without a fleet, this node."""

    def handle(self, request, identity, path):
        require(identity, self.admin.service.config, "read")
        if path:
            raise NotFound("no such endpoint")
        fleet = getattr(self.admin.service, "fleet", None)
        if fleet is None:
            node = self.admin.service.config.gateway.node
            return jsonBody(request, 200, {"fleet": False, "nodes": [
                {"name": node, "state": "up", "down_reason": ""}]})
        d = fleet.nodes()
        return d.addCallback(lambda nodes: jsonBody(request, 200, {"fleet": True, "nodes": nodes}))


class NotificationsAPI(Authenticated):
    """GET /api/notifications (readers); POST /api/notifications/test (admins)."""

    def handle(self, request, identity, path):
        config = self.admin.service.config
        notifier = self.admin.notifier
        if request.method == b"GET" and not path:
            require(identity, config, "read")
            return jsonBody(request, 200, {"targets": notifier.targets(),
                                           "deliveries": notifier.recent()})
        if request.method == b"POST" and path == ["test"]:
            require(identity, config, "notify-test")
            return jsonBody(request, 202, {"deliveries": notifier.test(identity.id)})
        raise NotFound("no such endpoint")


class _Problem(resource.Resource):
    isLeaf = True

    def __init__(self, status: int, detail: str):
        super().__init__()
        self.status, self.detail = status, detail

    def render(self, request):
        return problem(request, self.status, self.detail)


class _Files(static.File):
    """The console's files; a path that is not UTF-8 is a 400 problem (static.File logs a traceback)."""

    def getChild(self, path, request):
        try:
            path.decode()
        except UnicodeDecodeError:
            return _Problem(400, "the path is not valid UTF-8")
        return super().getChild(path, request)


class _Redirect(resource.Resource):
    isLeaf = True

    def __init__(self, to: bytes):
        super().__init__()
        self.to = to

    def render(self, request):
        request.redirect(self.to)
        return b""


class Admin:
    """What the admin site's resources share: the service, logins, notifier and metrics."""

    _log = Logger()

    def __init__(self, service):
        self.service = service
        self.logins = Logins(self)
        self.metrics = Metrics(self)
        self.notifier = Notifier(self)
        self._pool = None

    @property
    def reactor(self):
        return self.service.reactor

    #: Threads for store reads, proofs and verification.
    POOL_SIZE = 2

    @property
    def pool(self):
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(0, self.POOL_SIZE, "sealgate-admin")
            self._pool.start()
        return self._pool

    def baseURL(self, request=None) -> str:
        """The console's external URL (config), else what the request used, else the admin port."""
        configured = self.service.config.admin.console_url
        if configured:
            return configured
        if request is not None:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if host:
                return f"{'https' if request.isSecure() else 'http'}://{host}/"
        port = self.service.adminPort
        if port is not None:
            h = port.getHost()
            address = h.host if h.host not in ("0.0.0.0", "::") else "127.0.0.1"
            scheme = "https" if self.service.config.gateway.admin.startswith(("ssl:", "tls:")) else "http"
            return f"{scheme}://{address}:{h.port}/"
        return "/"

    def stop(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        return self.notifier.stop()


class _AdminChannel(GuardedChannel, http.HTTPChannel):
    """HTTP/1.1 with the gateway's pre-login limits (login timeout, caps per address)."""


class _AdminSite(server.Site):
    """
    Every answer forbids framing, sniffing and foreign scripts (the console
    has none; the vendored asciinema player compiles its terminal emulator
    from WebAssembly, hence C{wasm-unsafe-eval}, which allows no JS eval).
    """

    admin: Admin
    requestFactory = AdminRequest
    protocol = _AdminChannel  # type: ignore[assignment]
    #: The gateway's pre-login guard and this listener's name, for the channels.
    prelogin: tuple

    def getResourceFor(self, request):
        request.setHeader(b"content-security-policy",
                          b"default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
                          b"frame-ancestors 'none'; form-action 'self'")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"referrer-policy", b"same-origin")
        return super().getResourceFor(request)


def makeAdminSite(service) -> server.Site:
    from sealgate.admin import console, logapi, openapi, sessions

    admin = Admin(service)
    root = resource.Resource()
    root.putChild(b"", _Redirect(b"/console/"))
    root.putChild(b"healthz", Health(admin))
    root.putChild(b"readyz", Ready(admin))
    root.putChild(b"metrics", admin.metrics.resource())
    root.putChild(b"openapi.json", openapi.OpenAPI(admin))
    api = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"me", Me(admin))
    api.putChild(b"approvals", ApprovalsAPI(admin))
    api.putChild(b"nodes", NodesAPI(admin))
    api.putChild(b"sessions", sessions.SessionsAPI(admin))
    api.putChild(b"log", logapi.LogAPI(admin))
    api.putChild(b"notifications", NotificationsAPI(admin))
    files = _Files(str(STATIC))
    files.indexNames = ["index.html"]
    root.putChild(b"console", files)
    root.putChild(b"favicon.ico", static.File(str(STATIC / "favicon.svg"), defaultType="image/svg+xml"))
    root.putChild(b"login", console.Login(admin))
    root.putChild(b"logout", console.Logout(admin))
    site = _AdminSite(root)
    site.displayTracebacks = False
    site.noisy = False
    site.admin = admin
    site.prelogin = (service.gateway.prelogin, "admin")
    return site
