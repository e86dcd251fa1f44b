"""Export formats through the plugins, and offline evidence: a bundle read with no store and no config."""

import io
import json
import re
import time

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from sealgate.export import FRAMES, ExportFormat, UnknownFormat, findFormat, formatsFor
from sealgate.protocols.postgres import _wire as w
from sealgate.recording import Frame
from sealgate.recording._engine import Engine, SessionState
from sealgate.recording.checkpoint import Signer
from tests.harness.twistd import environment, runCLI
from tests.test_plugin_api import echoBackend  # noqa: F401 (a fixture)
from tests.test_store import cli

ORIGIN = "sealgate/export"


def _ctl(t, channel, **fields):
    return Frame(0, t, channel * 4 + 2, 0, 0, json.dumps(fields).encode())


def _out(t, channel, data):
    return Frame(0, t, channel * 4, 1, 0, data)


def _cast(frames) -> list:
    from sealgate.protocols.ssh.asciicast import writeAsciicast

    out = io.StringIO()
    writeAsciicast(frames, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_exec_output_in_a_cast_has_the_carriage_returns_a_terminal_adds():
    frames = [_ctl(1.0, 0, type="exec", command="ls"), _out(1.1, 0, b"a\nb\r\nc\r"), _out(1.2, 0, b"\nd\n")]
    events = _cast(frames)
    assert events[0]["command"] == "ls"
    assert "".join(e[2] for e in events[1:]) == "a\r\nb\r\nc\r\nd\r\n"


def test_a_pty_cast_keeps_the_bytes_the_terminal_got():
    frames = [_ctl(1.0, 0, type="pty", term="xterm", cols=80, rows=24), _ctl(1.0, 0, type="shell"),
              _out(1.1, 0, b"raw\nlf")]
    assert [e[2] for e in _cast(frames)[1:]] == ["raw\nlf"]


@given(st.lists(st.text(alphabet="ab\r\n", max_size=12), max_size=8))
def test_newlines_translate_the_same_however_the_output_is_split(chunks):
    from sealgate.protocols.ssh.asciicast import _Newlines

    cooked = _Newlines()
    joined = "".join(cooked.translate(c) for c in chunks)
    whole = "".join(chunks)
    assert joined == re.sub(r"(?<!\r)\n", "\r\n", whole)
    assert joined.replace("\r\n", "").count("\n") == 0


def test_formats_for_a_protocol_include_its_own_then_frames_and_bundle():
    assert list(formatsFor("ssh")) == ["asciicast", "transcript", "frames", "bundle"]
    assert list(formatsFor("no-such-protocol")) == ["transcript", "frames", "bundle"]
    assert formatsFor("no-such-protocol")["transcript"] is FRAMES
    with pytest.raises(UnknownFormat, match="a postgres session has no export format 'har'; it has: "
                                            "bundle, frames, transcript"):
        findFormat("postgres", "har")


def test_a_writer_named_by_module_path_is_imported_on_first_use():
    f = ExportFormat("x", "text/plain", ".txt", "x", "sealgate.export:_writeFrames")

    class Session:
        record = type("R", (), {"opened": 0.0})()

        def events(self):
            return [{"type": "event", "event": "command", "time": 1.0,
                     "fields": {"kind": "sql", "command": "SELECT 1", "verdict": "allow"}}]

        def frames(self):
            return [Frame(0, 1.0, 0, 0, 0, b"SELECT 1")]

    out = io.BytesIO()
    assert f.write(Session(), out) == "sealed commands and every frame as text"
    assert b"sql> SELECT 1" in out.getvalue() and b"#0 client> ch0 8 bytes" in out.getvalue()


def _pgSession(engine, t):
    s = SessionState("pg1")
    client = (w.StartupMessage(params=(("user", "alice"), ("database", "app"))).encode()
              + w.Query("SELECT name FROM customers").encode())
    server = (w.RowDescription((w.Column("name", 0, 0, 25, -1, -1, 0),)).encode()
              + w.DataRow((b"Ada",)).encode() + w.CommandComplete("SELECT 1").encode())
    engine.apply([("open", s, {"identity": {"subject": "alice"}, "connection": "db", "protocol": "postgres",
                               "client": "127.0.0.1:5000"}, None, None, False, t),
                  (s, t + 0.1, 0, 0, client), (s, t + 0.2, 0, 1, server),
                  ("event", s, "command", {"kind": "sql", "command": "SELECT name FROM customers",
                                           "verdict": "allow"}, None, False, t + 0.15),
                  ("close", s, "client closed", {}, None, False, t + 1)], now=t + 1)


def _sshSession(engine, t):
    s = SessionState("ssh1")
    engine.apply([("open", s, {"identity": {"subject": "bob"}, "connection": "box", "protocol": "ssh",
                               "client": "127.0.0.1:6000"}, None, None, False, t),
                  (s, t + 0.1, 2, 0, json.dumps({"type": "exec", "command": "ls /srv"}).encode()),
                  (s, t + 0.2, 0, 1, b"app\nlogs\n"),
                  (s, t + 0.3, 2, 1, json.dumps({"type": "exit", "status": 0}).encode()),
                  ("close", s, "client closed", {}, None, False, t + 1)], now=t + 1)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A store with a postgres and an ssh session, each exported as a bundle; returns (dir, store dir, vkey)."""
    d = tmp_path_factory.mktemp("store")
    e = Engine(d, ORIGIN)
    e.open()
    _pgSession(e, 1000.0)
    _sshSession(e, 2000.0)
    e.close()
    out = tmp_path_factory.mktemp("handed-over")
    for sid in ("pg1", "ssh1"):
        code, text = cli("export", sid, "--out", str(out / f"{sid}.bundle"), "--state-dir", str(d))
        assert code == 0, text
    vkey = cli("key", "show", "--state-dir", str(d))[1].strip()
    return out, d, vkey


def test_builtin_formats_export_from_the_store_through_their_plugins(bundles, tmp_path):
    _, store, _ = bundles
    code, text = cli("export", "pg1", "--format", "transcript", "--out", str(tmp_path / "t.txt"),
                     "--state-dir", str(store), "--json")
    assert code == 0 and json.loads(text)["format"] == "transcript" and json.loads(text)["summary"] == "SQL transcript"
    sql = (tmp_path / "t.txt").read_text()
    assert "=> SELECT name FROM customers" in sql and "Ada" in sql and "-- SELECT 1" in sql
    code, _ = cli("export", "ssh1", "--format", "asciicast", "--out", str(tmp_path / "c.cast"),
                  "--state-dir", str(store))
    lines = [json.loads(x) for x in (tmp_path / "c.cast").read_text().splitlines()]
    assert code == 0 and lines[0]["command"] == "ls /srv" and lines[1][2] == "app\r\nlogs\r\n"
    code, text = cli("export", "pg1", "--format", "asciicast", "--state-dir", str(store))
    assert code == 2 and not (tmp_path / "x").exists()
    code, text = cli("export", "ssh1", "--formats", "--json", "--state-dir", str(store))
    assert [f["name"] for f in json.loads(text)] == ["asciicast", "transcript", "frames", "bundle"]


def _noConfig():
    env = environment()
    env.pop("SEALGATE_CONFIG", None)
    return env


def test_a_bundle_is_replayed_shown_and_exported_in_an_empty_directory_with_no_config(bundles, tmp_path):
    out, _, vkey = bundles
    empty = tmp_path / "auditor"
    empty.mkdir()
    env = _noConfig()
    pg, ssh = str(out / "pg1.bundle"), str(out / "ssh1.bundle")

    r = runCLI("replay", pg, "--no-wait", "--key", vkey, env=env, cwd=empty)
    assert "=> SELECT name FROM customers" in r.stdout and "Ada" in r.stdout and r.stderr == ""
    r = runCLI("replay", ssh, "--no-wait", env=env, cwd=empty)
    assert "$ ls /srv\napp\nlogs\n[exit 0]" in r.stdout
    assert "checked against the key inside the bundle" in r.stderr  # no --key: said so

    r = runCLI("show", pg, "--key", vkey, env=env, cwd=empty)
    assert "bundle      " in r.stdout and "(verified: 2 frames" in r.stdout
    assert "identity alice" in r.stdout and "connection db" in r.stdout and "1970-01-01T00:16:40Z" in r.stdout
    assert "transcript:\n" in r.stdout and "=> SELECT name FROM customers" in r.stdout
    shown = json.loads(runCLI("sessions", "show", ssh, "--json", "--key", vkey, env=env, cwd=empty).stdout)
    assert shown["verified"] is True and shown["session"]["identity"] == "bob"
    assert shown["session"]["state"] == "closed" and [e["type"] for e in shown["log"]] == ["open", "close"]

    r = runCLI("export", ssh, "--format", "asciicast", "--out", "s.cast", "--key", vkey, env=env, cwd=empty)
    assert json.loads((empty / "s.cast").read_text().splitlines()[1])[2] == "app\r\nlogs\r\n"
    r = runCLI("export", pg, "--format", "transcript", "--key", vkey, env=env, cwd=empty)
    assert "=> SELECT name FROM customers" in r.stdout
    assert sorted(p.name for p in empty.iterdir()) == ["s.cast"]  # no state directory appeared


def test_an_altered_bundle_is_refused_and_nothing_of_it_is_shown(bundles, tmp_path):
    out, _, vkey = bundles
    data = bytearray((out / "pg1.bundle").read_bytes())
    at = data.rindex(b"Ada")
    data[at : at + 3] = b"Eve"
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(data))
    for command in (["replay", str(bad), "--no-wait"], ["show", str(bad)], ["export", str(bad), "--format",
                                                                             "transcript"]):
        r = runCLI(*command, "--key", vkey, env=_noConfig(), cwd=tmp_path, check=False)
        assert r.returncode == 2 and "does not verify, so it is not shown" in r.stderr, command
        assert "Eve" not in r.stdout and "SELECT" not in r.stdout
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    r = runCLI("show", str(other), env=_noConfig(), cwd=tmp_path, check=False)
    assert r.returncode == 2 and "is not a sealgate bundle" in r.stderr


def test_verify_and_verify_bundle_print_json(bundles):
    out, store, vkey = bundles
    code, text = cli("verify", "--state-dir", str(store), "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"] is True and report["sessions"] == 2 and report["problems"] == []
    code, text = cli("verify-bundle", str(out / "ssh1.bundle"), "--key", vkey, "--json")
    report = json.loads(text)
    assert code == 0 and report["ok"] is True and report["session"] == "ssh1" and report["frames"] == 3
    other = Signer.generate(ORIGIN).verifier.vkey()
    code, text = cli("verify-bundle", str(out / "ssh1.bundle"), "--key", other, "--json")
    assert code == 1 and json.loads(text)["ok"] is False


def test_sessions_list_json_and_filters(bundles):
    _, store, _ = bundles
    code, text = cli("sessions", "list", "--json", "--state-dir", str(store), "--command", "customers")
    rows = json.loads(text)
    assert code == 0 and [s["id"] for s in rows] == ["pg1"]
    assert rows[0]["identity"] == "alice" and rows[0]["frames"] == 2 and rows[0]["state"] == "closed"
    code, text = cli("sessions", "list", "--json", "--state-dir", str(store), "--since", "1970-01-01T00:30:00Z")
    assert [s["id"] for s in json.loads(text)] == ["ssh1"]


def _lineConfig(backend: int) -> str:
    """The plugin API test's gateway, with an auditor role for the admin API."""
    from tests.test_plugin_api import CONFIG

    return CONFIG.replace("{backend}", str(backend)) + '\n[admin]\nauditors = ["audit"]\n'


def _get(url, key):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_an_out_of_tree_format_exports_through_the_cli_and_the_admin_api(tmp_path, echoBackend):  # noqa: F811
    from tests.harness.twistd import GatewayProcess
    from tests.test_plugin_api import PLUGIN_DIR, LineClient

    gw = GatewayProcess(tmp_path, _lineConfig(echoBackend), [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.strip().splitlines()[-1]
    auditor = gw.cli("keys", "create", "--name", "audrey", "--group", "audit").stdout.strip().splitlines()[-1]
    gw.start()
    try:
        c = LineClient(gw.port("echo"))
        c.send(f"AUTH {key}")
        sid = c.read()[3:]
        c.send("hello")
        assert c.read() == "hello"
        c.close()
        base = f"http://127.0.0.1:{gw.adminPort}/api/sessions/{sid}"
        for _ in range(600):  # until the session's CLOSE is sealed
            code, _, body = _get(base, auditor)
            if code == 200 and json.loads(body)["state"] == "closed":
                break
            time.sleep(0.05)
        detail = json.loads(body)
        assert [f["name"] for f in detail["formats"]] == ["lines", "transcript", "frames", "bundle"]
        lines = next(f for f in detail["formats"] if f["name"] == "lines")
        assert lines["media_type"] == "application/x-ndjson" and lines["url"] == f"/api/sessions/{sid}/export/lines"
        code, headers, api = _get(base + "/export/lines", auditor)
        assert code == 200 and headers["Content-Type"] == "application/x-ndjson"
        assert headers["Content-Disposition"] == f'attachment; filename="{sid}.jsonl"'
        code, headers, missing = _get(base + "/export/har", auditor)
        assert code == 404 and "it has: bundle, frames, lines, transcript" in json.loads(missing)["error"]
        code, headers, bundle = _get(base + "/export/bundle", auditor)
        assert code == 200 and bundle.startswith(b"SEALGATE-BUNDLE 1\n")
    finally:
        assert gw.stop() == 0

    r = gw.cli("export", sid, "--format", "lines", "--out", str(tmp_path / "s.jsonl"), "--json")
    assert json.loads(r.stdout)["summary"] == "3 lines"
    exported = (tmp_path / "s.jsonl").read_bytes()
    assert exported == api
    rows = [json.loads(x) for x in exported.splitlines()]
    assert rows[0]["session"] == sid and rows[0]["identity"] == "apikey:ci"
    assert [(x["from"], x["line"]) for x in rows[1:]] == [("server", f"OK {sid}"), ("client", "hello"),
                                                           ("server", "hello")]
    (tmp_path / "s.bundle").write_bytes(bundle)
    offline = tmp_path / "offline"
    offline.mkdir()
    r = runCLI("export", str(tmp_path / "s.bundle"), "--format", "lines", env=environment([PLUGIN_DIR]),
               cwd=offline)
    assert r.stdout.encode() == exported
    assert key not in r.stdout + gw.log() and auditor not in gw.log()


@pytest_twisted.ensureDeferred
async def test_admin_api_searches_by_command_and_time_and_refuses_what_does_not_render(tmp_path):
    from sealgate.config import ConnectionConfig
    from sealgate.testing import startGateway
    from tests.test_admin_api import Admin
    from tests.test_console_sessions_e2e import CONFIG

    g = await startGateway(CONFIG, tmp_path)
    try:
        api = Admin.__new__(Admin)
        api.running, api.base = g, f"http://127.0.0.1:{g.adminPort}"
        api.keys = {"alice": g.createKey("alice", ["eng"]), "audrey": g.createKey("audrey", ["audit"])}
        identity = await g.gateway.identity.authenticate(api.keys["alice"])
        web = ConnectionConfig("web", "http", "tcp:0", "tcp:host=127.0.0.1:port=1")
        s = g.gateway.openSession(web, identity, "127.0.0.1:5000")
        s.received(b"NOT HTTP AT ALL\r\n\r\n")
        s.decide("http", "GET /admin/users")
        s.emit(b"nope")
        await s.end("client closed")
        await api.written(s.id)
        for query, want in [("command=ADMIN/users", [s.id]), ("command=DELETE", []),
                            ("since=2000-01-01T00:00:00Z", [s.id]), ("until=2000-01-01T00:00:00%2B01:00", []),
                            ("until=9999999999", [s.id])]:
            code, body = await api.call("audrey", "GET", f"/api/sessions?{query}")
            assert code == 200 and [x["id"] for x in body["sessions"]] == want, query
        assert (await api.call("audrey", "GET", "/api/sessions?until=soon"))[0] == 400
        code, body = await api.call("audrey", "GET", f"/api/sessions/{s.id}/export/har")
        assert code == 422 and "cannot be exported as har: it does not parse as HTTP/1.1" in body["error"]
        code, body = await api.call("audrey", "GET", f"/api/sessions/{s.id}/export/nope")
        assert code == 404 and "it has: bundle, frames, har, transcript" in body["error"]
        code, text = await api.call("audrey", "GET", f"/api/sessions/{s.id}/export/frames", raw=True)
        assert code == 200 and b"http> GET /admin/users" in text and b"NOT HTTP AT ALL" in text
        assert (await api.call("alice", "GET", f"/api/sessions/{s.id}/export/frames"))[0] == 403
    finally:
        await g.stop()


def test_show_prints_a_long_transcript_only_so_far():
    from sealgate.cli.sessions import _transcript
    from sealgate.recording.records import SessionRecord

    class Long:
        record = SessionRecord("x", "closed", 0.0, 1.0, "no-such", None, "", None, 0, None, 0, 0, None, 0, None)

        def events(self):
            return []

        def frames(self):
            for i in range(10**9):  # never read to the end: show stops the writer
                yield Frame(i, 0.0, 0, 1, 0, b"y" * 100)

    text = _transcript(Long(), limit=4096)
    assert text.startswith(b"(no commands)") and b"(cut at 4 KiB: sealgate replay --no-wait" in text
    assert len(text) < 4096 + 200


def test_a_plugin_tests_its_export_format_on_a_fake_recording():
    from zope.interface.verify import verifyObject

    from sealgate.interfaces import IRecordedSession
    from sealgate.testing import FakeRecordedSession, FakeRecording
    from tests.plugins_oot.linegate import plugin

    rec = FakeRecording("s1", {"identity": {"subject": "alice"}, "connection": "echo", "protocol": "line"})
    rec.frame(0, b"hello\n")
    rec.frame(1, b"hello\n")
    rec.close("client closed", {})
    session = FakeRecordedSession(rec)
    assert verifyObject(IRecordedSession, session)
    assert session.record.bytesToClient == 6 and session.record.state == "closed"
    out = io.BytesIO()
    [lines] = plugin.exportFormats
    assert lines.write(session, out) == "2 lines"
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert rows[0]["identity"] == "alice" and [r["from"] for r in rows[1:]] == ["client", "server"]
    with pytest.raises(ValueError, match="no bundle"):
        findFormat("line", "bundle", {}).write(session, io.BytesIO())
