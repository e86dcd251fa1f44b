"""Shared pieces of the admin site: JSON replies, authentication by bearer token or console login."""

import json
import secrets
from pathlib import Path

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import http, resource, server

from sealgate.admin.roles import Forbidden
from sealgate.approvals import ApprovalError
from sealgate.identity import AuthenticationFailed

#: The console's files (HTML, JS, CSS, the vendored player).
STATIC = Path(__file__).parent / "static"

LOGIN_COOKIE = b"sealgate_login"
CSRF_HEADER = b"x-sealgate-csrf"


class NotFound(Exception):
    status = 404


class BadRequest(Exception):
    status = 400


def jsonBody(request, status: int, body) -> bytes:
    """A JSON reply; an error (status 400 and up, C{{"error": ...}}) is an RFC 9457 problem."""
    if status >= 400 and isinstance(body, dict) and "error" in body:
        return problem(request, status, str(body["error"]), **{k: v for k, v in body.items() if k != "error"})
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, default=str).encode() + b"\n"


def problem(request, status: int, detail: str, **extra) -> bytes:
    """
    An RFC 9457 problem document.  C{error} repeats the detail: the console
    and scripts written against the earlier replies read that key.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/problem+json")
    request.setHeader(b"cache-control", b"no-store")
    title = http.RESPONSES.get(status, b"Error").decode()
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "error": detail, **extra}
    return json.dumps(body, default=str).encode() + b"\n"


#: What unreadable input raises where it is decoded: the client's fault, not ours.
BAD_INPUT = (BadRequest, UnicodeError, RecursionError)


def badInput(failure) -> str:
    """The 400 detail for a failure of one of L{BAD_INPUT}."""
    if failure.check(BadRequest):
        return str(failure.value)
    if failure.check(RecursionError):
        return "the request is nested too deeply to read"
    return "the request is not valid UTF-8 where text is expected"


def pathSegments(request) -> list:
    """The request's remaining path as text. @raise BadRequest: it is not UTF-8."""
    try:
        return [p.decode() for p in request.postpath if p]
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8")


def jsonObject(request) -> dict:
    """The request body as a JSON object (C{{}} when empty). @raise BadRequest: anything else."""
    raw = request.content.read() if request.content is not None else b""
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise BadRequest("the body is JSON nested too deeply")
    except ValueError:
        raise BadRequest("the body must be JSON")
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


class Reply:
    """
    Finishes a request later, unless its client has gone meanwhile:
    Twisted raises on a finish after the connection was lost, which would
    surface as an unhandled error in the Deferred that produced the body.
    """

    def __init__(self, request):
        self.request = request
        self.gone = False
        request.notifyFinish().addErrback(self._gone)

    def _gone(self, _reason) -> None:
        self.gone = True

    def send(self, body: bytes = b"") -> None:
        if not self.gone and not self.request.finished:
            if body:
                self.request.write(body)
            self.request.finish()


class AdminRequest(server.Request):
    """A request whose unhandled errors are problem documents: 400 for unreadable input, else 500."""

    _log = Logger()

    def processingFailed(self, reason):
        if reason.check(*BAD_INPUT):
            body = problem(self, getattr(reason.value, "status", 400), badInput(reason))
        else:
            self._log.failure("Admin site error on {path}", reason, path=self.path[:200])
            body = problem(self, 500, "internal error")
        if not self._disconnected and not self.finished:
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
            self.finish()
        return reason


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
        reply = Reply(request)

        def ok(identity):
            return self.handle(request, identity, pathSegments(request))

        def failed(f):
            if f.check(AuthenticationFailed):
                request.setHeader(b"www-authenticate", b"Bearer")
                body = problem(request, 401, f.value.reason)
            elif f.check(ApprovalError, Forbidden, NotFound):
                body = problem(request, f.value.status, str(f.value))
            elif f.check(*BAD_INPUT):
                # A BadRequest may name its own 4xx (422: cannot be rendered).
                body = problem(request, getattr(f.value, "status", 400), badInput(f))
            else:
                self._log.failure("Admin API error", f)
                body = problem(request, 500, "internal error")
            reply.send(body)

        d.addCallback(ok).addCallbacks(reply.send, failed)
        return server.NOT_DONE_YET
