"""Browser login through the HTTP proxy: OIDC authorization code with PKCE against a local issuer, cookie, logout."""

import base64
import hashlib
import json
import os
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest_twisted
from twisted.web import resource, server

from sealgate.testing import startGateway
from tests.test_http_proxy import _ENV, BACKEND_SECRET, _config, _curl


class _AuthServer(resource.Resource):
    """
    The issuer's authorization and token endpoints: logs "alice" in at
    once, and checks the PKCE verifier like a real issuer does.
    """

    isLeaf = True

    def __init__(self, issuer):
        super().__init__()
        self.issuer = issuer
        self.codes: dict[str, dict] = {}
        self.tokenRequests: list[dict] = []

    def render_GET(self, request):
        q = {k.decode(): v[0].decode() for k, v in request.args.items()}
        assert request.path == b"/authorize"
        code = secrets.token_hex(8)
        self.codes[code] = q
        back = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        request.setResponseCode(302)
        request.setHeader(b"location", back.encode())
        return b""

    def render_POST(self, request):
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.tokenRequests.append(form)
        asked = self.codes.pop(form.get("code", ""), None)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(form.get("code_verifier", "").encode()).digest()).rstrip(b"=").decode()
        request.setHeader(b"content-type", b"application/json")
        if (asked is None or asked["code_challenge"] != challenge
                or asked["code_challenge_method"] != "S256"
                or asked["redirect_uri"] != form.get("redirect_uri")):
            request.setResponseCode(400)
            return json.dumps({"error": "invalid_grant"}).encode()
        token = self.issuer.mint("alice", ["eng"], aud=asked["client_id"], nonce=asked["nonce"])
        return json.dumps({"id_token": token, "access_token": "opaque", "token_type": "Bearer"}).encode()


async def _start(tmp_path, http_backend, oidc_issuer):
    from twisted.internet import reactor

    auth = _AuthServer(oidc_issuer)
    port = reactor.listenTCP(0, server.Site(auth), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    discovery = oidc_issuer.discovery

    def withEndpoints():
        doc = discovery()
        doc.update(authorization_endpoint=base + "/authorize", token_endpoint=base + "/token")
        return doc

    oidc_issuer.discovery = withEndpoints
    os.environ[_ENV] = BACKEND_SECRET
    g = await startGateway(_config(
        http_backend, extra_options="browser_login = true",
        head=f'[identity]\noidc_issuer = "{oidc_issuer.issuer}"\noidc_audience = "sealgate"\n'),
        tmp_path)
    return g, auth, port


@pytest_twisted.ensureDeferred
async def test_browser_logs_in_with_pkce_gets_a_cookie_and_logs_out(tmp_path, http_backend, oidc_issuer):
    g, auth, port = await _start(tmp_path, http_backend, oidc_issuer)
    jar = str(tmp_path / "cookies")
    html = ("-H", "Accept: text/html")
    try:
        base = f"http://127.0.0.1:{g.port('web')}"
        r = await _curl("-L", "-c", jar, "-b", jar, *html, "-b", "theme=dark",
                        f"{base}/echo/dashboard?x=1")
        doc = json.loads(r.stdout)
        assert doc["path"] == "/echo/dashboard" and doc["query"] == "x=1"
        headers = {k.lower(): v for k, v in doc["headers"]}
        # The backend sees its own credential and the app's cookies, never the gateway's.
        assert headers["authorization"] == f"Bearer {BACKEND_SECRET}"
        assert "sealgate_session" not in headers.get("cookie", "") and "theme=dark" in headers["cookie"]
        assert auth.tokenRequests[0]["code_verifier"]
        cookies = open(jar).read()
        assert "#HttpOnly_127.0.0.1" in cookies and "sealgate_session" in cookies

        # Logged in: no redirect now, for pages and API calls alike.
        r = await _curl("-i", "-b", jar, f"{base}/json")
        assert r.stdout.startswith(b"HTTP/1.1 200")

        r = await _curl("-i", "-b", jar, "-c", jar, f"{base}/.sealgate/logout")
        assert r.stdout.startswith(b"HTTP/1.1 200") and b"sealgate_session=;" in r.stdout
        r = await _curl("-i", "-b", jar, *html, f"{base}/json")
        assert r.stdout.startswith(b"HTTP/1.1 302")
        location = [line for line in r.stdout.split(b"\r\n") if line.lower().startswith(b"location:")][0]
        q = parse_qs(urlsplit(location.split(b" ", 1)[1].decode()).query)
        assert q["code_challenge_method"] == ["S256"] and q["client_id"] == ["sealgate"]
        # An API client without a token still gets 401, not a login page.
        r = await _curl("-i", "-b", jar, f"{base}/json")
        assert r.stdout.startswith(b"HTTP/1.1 401")
    finally:
        await g.stop()
        await port.stopListening()
    from sealgate.recording.reader import StoreReader

    with StoreReader(g.stateDir) as reader:
        subjects = {s["info"]["identity"]["subject"] for s in reader.sessions()}
    assert subjects == {"alice"}


@pytest_twisted.ensureDeferred
async def test_forged_callback_state_is_refused(tmp_path, http_backend, oidc_issuer):
    g, _auth, port = await _start(tmp_path, http_backend, oidc_issuer)
    try:
        base = f"http://127.0.0.1:{g.port('web')}"
        r = await _curl("-i", f"{base}/.sealgate/callback?code=abc&state=forged")
        assert r.stdout.startswith(b"HTTP/1.1 403")
        assert b"this login was not started here or took too long" in r.stdout and b"Set-Cookie" not in r.stdout
    finally:
        await g.stop()
        await port.stopListening()
