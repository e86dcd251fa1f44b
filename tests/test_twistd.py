"""The gateway as operators run it: twistd start-up, health, config errors, reload and drain."""

import json
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.harness.twistd import BIN, REPO, GatewayProcess
from tests.test_plugin_api import CONFIG, PLUGIN_DIR, LineClient, echoBackend  # noqa: F401


def sampleConfig() -> str:
    """config/sealgate.toml as shipped, with the admin port left to the OS."""
    text = (REPO / "config" / "sealgate.toml").read_text()
    assert 'admin = "tcp:8700:interface=127.0.0.1"' in text
    return text.replace('admin = "tcp:8700:interface=127.0.0.1"', 'admin = "tcp:0:interface=127.0.0.1"')


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_twistd_lists_the_installed_plugin_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(BIN / "twistd"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert any(line.split()[:1] == ["sealgate"] for line in out.stdout.splitlines())


def test_sample_config_starts_serves_health_and_exits_0_on_sigterm(tmp_path):
    gw = GatewayProcess(tmp_path, sampleConfig()).start()
    try:
        assert get(gw.adminPort, "/healthz") == (200, {"status": "ok"})
        assert get(gw.adminPort, "/readyz") == (200, {"status": "ready"})
        assert (tmp_path / "var" / "sealgate").is_dir()
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    assert "Traceback" not in gw.log()


def run(tmp_path, text):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    return subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "sealgate", "--config", str(cfg)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=GatewayProcess(tmp_path / "x", "").env)


def test_bad_config_gives_one_message_and_no_traceback(tmp_path):
    r = run(tmp_path, sampleConfig().replace("[masking]", "[masking]\ncolour = 1"))
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert f"{tmp_path / 'bad.toml'}: masking.colour: unknown key" in err
    assert "fix:" in err and "Traceback" not in err


def test_port_already_taken_names_the_key_and_exits_nonzero(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        r = run(tmp_path, sampleConfig().replace('admin = "tcp:0:', f'admin = "tcp:{port}:'))
    finally:
        taken.close()
    err = r.stdout + r.stderr
    assert r.returncode == 1
    assert f"gateway.admin: cannot listen on 'tcp:{port}:interface=127.0.0.1'" in err
    assert "Address already in use" in err and "fix:" in err and "Traceback" not in err


def test_second_gateway_on_the_same_state_dir_is_refused(tmp_path):
    first = GatewayProcess(tmp_path, sampleConfig()).start()
    try:
        r = run(tmp_path, sampleConfig())
        assert r.returncode != 0
        assert "lock" in (r.stdout + r.stderr) and "Traceback" not in r.stdout + r.stderr
    finally:
        assert first.stop() == 0


def test_sighup_reloads_rules_and_a_bad_reload_keeps_them(tmp_path, echoBackend):  # noqa: F811
    config = CONFIG.replace("{backend}", str(echoBackend))
    gw = GatewayProcess(tmp_path, config, [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.splitlines()[-1]
    gw.start()
    try:
        def tryRm():
            c = LineClient(gw.port("echo"))
            c.send(f"AUTH {key}")
            assert c.read().startswith("OK ")
            c.send("rm x")
            answer = c.read()
            c.close()
            return answer

        assert tryRm().startswith("ERR denied by no-rm")
        gw.config.write_text(config + "\n[broken\n")
        mark = len(gw.log())
        gw.process.send_signal(signal.SIGHUP)
        _waitFor(gw, "Reload refused", mark)
        assert tryRm().startswith("ERR denied by no-rm")
        gw.config.write_text(config.replace('commands = ["^rm "]', 'commands = ["^rmdir "]'))
        mark = len(gw.log())
        gw.process.send_signal(signal.SIGHUP)
        _waitFor(gw, "Reloaded", mark)
        assert tryRm() == "rm x"
    finally:
        assert gw.stop() == 0


def test_sigterm_drains_then_closes_open_sessions_and_exits_0(tmp_path, echoBackend):  # noqa: F811
    config = CONFIG.replace("{backend}", str(echoBackend)).replace(
        'state_dir = "state"', 'state_dir = "state"\ndrain_timeout = "2s"')
    gw = GatewayProcess(tmp_path, config, [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.splitlines()[-1]
    gw.start()
    c = LineClient(gw.port("echo"))
    c.send(f"AUTH {key}")
    assert c.read().startswith("OK ")
    assert gw.stop(signal.SIGTERM) == 0
    assert c.read() == "ERR the gateway is shutting down"
    assert "Closing session" in gw.log()
    assert "SIGTERM: stop listening, wait up to 2.0s for 1 live session(s) (echo: 1), exit" in gw.log()
    sessions = json.loads(gw.cli("sessions", "list", "--json").stdout)
    assert len(sessions if isinstance(sessions, list) else sessions["sessions"]) == 1
    gw.cli("verify")


def _waitFor(gw, text, start, timeout=30):
    import time

    deadline = time.monotonic() + timeout
    while text not in gw.log()[start:]:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{gw.log()[start:]}"
        time.sleep(0.05)


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert "bash .ci/test" in readme
    assert "exec bash .ci/test" in (REPO / ".ci" / "run").read_text()
    assert "twistd -n --pidfile= sealgate --config config/sealgate.toml" in readme
    assert Path(REPO / "config" / "sealgate.toml").exists()
