"""The http plugin's options, its interface, routing, and replay of a recorded session."""

import io

import attrs
import pytest
from zope.interface.verify import verifyObject

from sealgate.config import ConfigError, Where
from sealgate.interfaces import IProtocolPlugin
from sealgate.protocols.http import _wire
from sealgate.protocols.http._routing import Router, endpointHostPort
from sealgate.protocols.http.plugin import parseOptions, plugin

WHERE = Where("sealgate.toml", "connections[0] (web).options")


def test_plugin_provides_the_protocol_interface():
    assert verifyObject(IProtocolPlugin, plugin)
    assert plugin.name == "http"


def test_backend_credentials_are_resolved_and_kept_out_of_repr(monkeypatch):
    monkeypatch.setenv("WEB_TOKEN", "tok-123")
    monkeypatch.setenv("WEB_PW", "pw-456")
    monkeypatch.setenv("WEB_KEY", "key-789")
    bearer = parseOptions({"backend_bearer_env": "WEB_TOKEN"}, WHERE)
    assert bearer.inject == ((b"Authorization", b"Bearer tok-123"),)
    basic = parseOptions({"backend_basic_user": "svc", "backend_basic_password_env": "WEB_PW"}, WHERE)
    assert basic.inject == ((b"Authorization", b"Basic c3ZjOnB3LTQ1Ng=="),)
    header = parseOptions({"backend_header": "X-Api-Key", "backend_header_env": "WEB_KEY",
                           "secret_headers": ["X-Session"]}, WHERE)
    assert header.inject == ((b"X-Api-Key", b"key-789"),)
    assert {b"x-api-key", b"x-session", b"authorization", b"cookie", b"set-cookie"} <= header.secret_headers
    for opts in (bearer, basic, header):
        assert "tok-123" not in repr(opts) and "pw-456" not in repr(opts) and "key-789" not in repr(opts)


@pytest.mark.parametrize("options,key", [
    ({"backend_bearer_env": "SEALGATE_TEST_UNSET_VAR"}, "backend_bearer_env"),
    ({"backend_basic_user": "svc"}, "backend_basic_user"),
    ({"backend_header": "X-Key"}, "backend_header"),
    ({"backend_header": "bad header", "backend_header_env": "HOME"}, "backend_header"),
    ({"path_prefix": "grafana"}, "path_prefix"),
    ({"tls_cert": "/nonexistent.pem"}, "tls_cert"),
    ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "tls_cert"),
    ({"hosts": "a.example"}, None),
    ({"max_masked_body": 10}, "max_masked_body"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_name_the_key_and_the_fix(options, key, monkeypatch):
    monkeypatch.delenv("SEALGATE_TEST_UNSET_VAR", raising=False)
    if key is None:
        assert parseOptions(options, WHERE).hosts == ("a.example",)
        return
    with pytest.raises(ConfigError) as e:
        parseOptions(options, WHERE)
    text = str(e.value)
    assert f"{WHERE.table}.{key}" in text and "sealgate.toml" in text


def test_endpoint_strings_give_host_and_port():
    assert endpointHostPort("tcp:host=10.0.0.5:port=8080") == ("10.0.0.5", 8080)
    assert endpointHostPort("tcp:app.internal:443") == ("app.internal", 443)
    assert endpointHostPort("tls:host=api.example:port=8443:trustRoots=/etc/ca") == ("api.example", 8443)


@attrs.frozen
class _B:
    name: str
    options: object


def _backend(name, **kw):
    return _B(name, parseOptions(kw, WHERE))


def test_router_prefers_host_then_longest_prefix():
    plain = _backend("plain")
    grafana = _backend("grafana", path_prefix="/grafana")
    deep = _backend("deep", path_prefix="/grafana/api/")
    admin = _backend("admin", hosts=["admin.internal"])
    r = Router([plain, grafana, deep, admin])
    assert r.route(b"gw:8080", b"/x").name == "plain"
    assert r.route(b"gw", b"/grafana").name == "grafana"
    assert r.route(b"gw", b"/grafana?x=1").name == "grafana"
    assert r.route(b"gw", b"/grafanax").name == "plain"
    assert r.route(b"gw", b"/grafana/api/users").name == "deep"
    assert r.route(b"Admin.Internal:443", b"/grafana").name == "admin"
    assert Router([grafana]).route(b"gw", b"/other") is None


@attrs.frozen
class _Frame:
    direction: int
    data: bytes | None
    time: float = 0.0
    offset: int = 0


def test_replay_prints_exchanges_with_secrets_as_recorded():
    req = _wire.serializeHead(b"POST /api/x HTTP/1.1", [
        (b"Host", b"gw"), (b"Authorization", b"[redacted]"),
        (b"Content-Type", b"application/json"), (b"Content-Length", b"7")]) + b'{"a":1}'
    resp = _wire.serializeHead(b"HTTP/1.1 201 Created", [
        (b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")]) + \
        _wire.chunk(b"made it") + _wire.LAST_CHUNK
    out = io.BytesIO()
    plugin.replay([_Frame(0, req[:20]), _Frame(0, req[20:], 0.1), _Frame(1, resp, 0.2)], out, None)
    text = out.getvalue().decode()
    assert "> POST /api/x HTTP/1.1" in text and "> Authorization: [redacted]" in text
    assert '{"a":1}' in text and "< HTTP/1.1 201 Created" in text and "made it" in text


def test_har_keeps_parsing_after_a_redacted_frame():
    from sealgate.protocols.http.har import toHar

    first = _wire.serializeHead(b"GET /a HTTP/1.1", [(b"Host", b"gw")])
    resp1 = _wire.serializeHead(b"HTTP/1.1 200 OK", [(b"Content-Type", b"text/plain"),
                                                   (b"Content-Length", b"6")])
    second = _wire.serializeHead(b"GET /b HTTP/1.1", [(b"Host", b"gw")])
    resp2 = _wire.serializeHead(b"HTTP/1.1 204 No Content", [])
    frames = [_Frame(0, first, 0, 0), _Frame(1, resp1, 0, 0), _Frame(1, None, 0, len(resp1)),
              _Frame(0, second, 0, len(first)), _Frame(1, resp2, 0, len(resp1) + 6)]
    entries = toHar(frames)["log"]["entries"]
    assert [e["request"]["url"] for e in entries] == ["http://gw/a", "http://gw/b"]
    assert [e["response"]["status"] for e in entries] == [200, 204]
    assert entries[0]["response"]["content"]["text"] == "******"


def test_browser_login_options(monkeypatch):
    monkeypatch.setenv("OIDC_SECRET", "client-secret-1")
    opts = parseOptions({"browser_login": True, "oidc_client_id": "gw",
                         "oidc_client_secret_env": "OIDC_SECRET", "session_lifetime": "1h"}, WHERE)
    assert (opts.browser_login, opts.oidc_client_id, opts.session_lifetime) == (True, "gw", 3600.0)
    assert opts.oidc_client_secret == "client-secret-1" and "client-secret-1" not in repr(opts)
    with pytest.raises(ConfigError, match="oidc_scopes"):
        parseOptions({"browser_login": True, "oidc_scopes": ["email"]}, WHERE)
