"""Console logins over HTTP: API key form, OIDC code + PKCE against the local issuer, cookies and CSRF."""

from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from sealgate.testing import startGateway
from tests.test_admin_api import CONFIG, Admin


def cookies(response) -> dict:
    out = {}
    for raw in response.headers.getRawHeaders(b"set-cookie", []):
        name, _, rest = raw.decode().partition("=")
        out[name] = (rest.split(";")[0], rest.lower())
    return out


async def get(url, jar=None, **kw):
    return await treq.get(url, allow_redirects=False, cookies=jar or {}, persistent=False, **kw)


@pytest.fixture
def admin(tmp_path, oidc_issuer):
    text = f'[identity]\noidc_issuer = "{oidc_issuer.issuer}"\n' + CONFIG
    running = pytest_twisted.blockon(defer.ensureDeferred(startGateway(text, tmp_path)))
    a = Admin(running)
    a.issuer = oidc_issuer
    yield a
    pytest_twisted.blockon(running.stop())


@pytest_twisted.ensureDeferred
async def test_api_key_login_sets_a_cookie_and_changes_need_the_csrf_token(admin):
    r = await get(admin.base + "/")
    assert r.code == 302 and r.headers.getRawHeaders(b"location") == [b"/console/"]
    r = await get(admin.base + "/console/")
    assert r.code == 200 and b'src="/console/app.js"' in await r.content()
    assert b"frame-ancestors 'none'" in r.headers.getRawHeaders(b"content-security-policy")[0]

    r = await treq.post(admin.base + "/login/key", data={"key": "sgk_wrong"}, allow_redirects=False,
                        persistent=False)
    assert r.code == 302 and r.headers.getRawHeaders(b"location")[0].startswith(b"/login?error=")
    assert "sealgate_login" not in cookies(r)

    r = await treq.post(admin.base + "/login/key", data={"key": admin.keys["bob"]}, allow_redirects=False,
                        persistent=False, headers={"origin": "https://evil.example"})
    assert r.code == 403 and "sealgate_login" not in cookies(r)
    r = await treq.post(admin.base + "/login/key", data={"key": admin.keys["bob"]}, allow_redirects=False,
                        persistent=False, headers={"origin": admin.base})
    assert r.code == 302 and r.headers.getRawHeaders(b"location") == [b"/console/"]
    token, attrs = cookies(r)["sealgate_login"]
    assert "httponly" in attrs and "samesite=lax" in attrs and admin.keys["bob"] not in token
    jar = {"sealgate_login": token}
    me = await (await get(admin.base + "/api/me", jar)).json()
    assert me["subject"] == "bob" and me["roles"] == ["approver"] and me["csrf"]

    s = await admin.session("alice")
    held = admin.hold(s)
    url = f"{admin.base}/api/approvals/{held.ticket}/approve"
    r = await treq.post(url, json={"reason": "ok"}, cookies=jar, persistent=False)
    assert r.code == 403 and "CSRF" in (await r.json())["error"]
    r = await treq.post(url, json={"reason": "ok"}, cookies=jar, persistent=False,
                        headers={"x-sealgate-csrf": "guess"})
    assert r.code == 403 and not held.result.called
    r = await treq.post(url, json={"reason": "ok"}, cookies=jar, persistent=False,
                        headers={"x-sealgate-csrf": me["csrf"]})
    assert r.code == 200 and (await r.json())["decided_by"] == "apikey:bob"

    r = await treq.post(admin.base + "/logout", cookies=jar, headers={"x-sealgate-csrf": me["csrf"]},
                        persistent=False)
    assert r.code == 200
    assert (await get(admin.base + "/api/me", jar)).code == 401
    await s.end("closed")


@pytest_twisted.ensureDeferred
async def test_oidc_authorization_code_with_pkce_logs_in_and_binds_state_to_the_browser(admin):
    admin.issuer.loginAs = ("bob", ("leads",))
    start = await get(admin.base + "/login/oidc")
    assert start.code == 302
    to = start.headers.getRawHeaders(b"location")[0].decode()
    assert to.startswith(admin.issuer.issuer + "/authorize?")
    q = parse_qs(urlparse(to).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert q["client_id"] == ["sealgate"] and q["redirect_uri"] == [admin.base + "/login/callback"]
    state = cookies(start)["sealgate_oidc"][0]
    assert state == q["state"][0]

    back = await get(to)
    callback = back.headers.getRawHeaders(b"location")[0].decode()
    assert callback.startswith(admin.base + "/login/callback?code=")

    # Without the browser's state cookie (another browser, a forged link): refused.
    r = await get(callback)
    assert r.headers.getRawHeaders(b"location")[0].startswith(b"/login?error=")

    # The right browser, but the state was used up by the refused attempt: start again.
    start = await get(admin.base + "/login/oidc")
    state = cookies(start)["sealgate_oidc"][0]
    back = await get(start.headers.getRawHeaders(b"location")[0].decode())
    callback = back.headers.getRawHeaders(b"location")[0].decode()
    done = await get(callback, {"sealgate_oidc": state})
    assert done.code == 302 and done.headers.getRawHeaders(b"location") == [b"/console/"]
    jar = {"sealgate_login": cookies(done)["sealgate_login"][0]}
    me = await (await get(admin.base + "/api/me", jar)).json()
    assert (me["subject"], me["method"], me["roles"]) == ("bob", "oidc", ["approver"])

    # A code is good once.
    again = await get(callback, {"sealgate_oidc": state})
    assert again.headers.getRawHeaders(b"location")[0].startswith(b"/login?error=")

    admin.issuer.loginAs = None
    start = await get(admin.base + "/login/oidc")
    back = await get(start.headers.getRawHeaders(b"location")[0].decode())
    r = await get(back.headers.getRawHeaders(b"location")[0].decode(),
                  {"sealgate_oidc": cookies(start)["sealgate_oidc"][0]})
    assert b"access_denied" in r.headers.getRawHeaders(b"location")[0]
