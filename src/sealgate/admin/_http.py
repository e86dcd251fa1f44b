"""Shared pieces of the admin site: JSON replies, authentication by bearer token or console login."""

import json
import secrets

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import resource, server

from sealgate.admin.roles import Forbidden
from sealgate.approvals import ApprovalError
from sealgate.identity import AuthenticationFailed

LOGIN_COOKIE = b"sealgate_login"
CSRF_HEADER = b"x-sealgate-csrf"


class NotFound(Exception):
    status = 404


class BadRequest(Exception):
    status = 400


def jsonBody(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, default=str).encode() + b"\n"


def intArg(request, name: str, default=None, minimum: int | None = None):
    raw = request.args.get(name.encode())
    if not raw:
        if default is None:
            raise BadRequest(f"query parameter {name} is required")
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer")
    if minimum is not None and value < minimum:
        raise BadRequest(f"query parameter {name} must be at least {minimum}")
    return value


def strArg(request, name: str) -> str | None:
    raw = request.args.get(name.encode())
    return raw[0].decode("utf-8", "replace") if raw else None


def inThread(admin, fn, *args):
    """
    Run blocking work (SQLite, segment files, hashing) off the reactor
    thread, in the admin site's own small pool: however busy the console
    gets, it cannot take the threads that API-key logins need.
    """
    return deferToThreadPool(admin.reactor, admin.pool, fn, *args)


class Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, admin):
        super().__init__()
        self.admin = admin


def clientOf(request) -> str:
    """C{host:port} of an admin request's client, as protocols write it."""
    peer = request.getClientAddress()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


class Authenticated(Leaf):
    """
    Calls C{handle(request, identity, path)} (which may return a Deferred)
    with the identity of the bearer token (OIDC token or API key) or of the
    console login cookie.  A cookie-authenticated change also needs the
    login's CSRF token in C{X-Sealgate-CSRF}: a cross-site form cannot set it.
    """

    _log = Logger()

    def identify(self, request) -> defer.Deferred:
        auth = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            # Through the gateway: the admin listener gets the same login backoff.
            return self.admin.service.gateway.authenticate("admin", auth[7:].strip(),
                                                           clientOf(request))
        login = self.admin.logins.get(request.getCookie(LOGIN_COOKIE))
        if login is None:
            return defer.fail(AuthenticationFailed(
                "a bearer token (OIDC token or API key) or a console login is required"))
        if request.method not in (b"GET", b"HEAD"):
            given = (request.getHeader(CSRF_HEADER) or b"").decode("ascii", "replace")
            if not secrets.compare_digest(given, login.csrf):
                return defer.fail(Forbidden("the console's CSRF token is missing or wrong"))
        return defer.succeed(login.identity)

    def render(self, request):
        d = self.identify(request)

        def ok(identity):
            return self.handle(request, identity, [p.decode() for p in request.postpath if p])

        def done(body):
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(f):
            if f.check(AuthenticationFailed):
                request.setHeader(b"www-authenticate", b"Bearer")
                body = jsonBody(request, 401, {"error": f.value.reason})
            elif f.check(ApprovalError, Forbidden, NotFound, BadRequest):
                body = jsonBody(request, f.value.status, {"error": str(f.value)})
            else:
                self._log.failure("Admin API error", f)
                body = jsonBody(request, 500, {"error": "internal error"})
            done(body)

        d.addCallback(ok).addCallbacks(done, failed)
        return server.NOT_DONE_YET
