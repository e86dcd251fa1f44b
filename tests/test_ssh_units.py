"""SSH plugin pieces without a network: options, key store and CLI, host keys, asciicast, hold-back bound."""

import io
import json
import subprocess
import time
from pathlib import Path

import attrs
import pytest
from zope.interface.verify import verifyObject

from sealgate.config import ConfigError, Where
from sealgate.interfaces import IProtocolPlugin
from sealgate.protocols.ssh.hostkeys import knownHostsName
from sealgate.protocols.ssh.plugin import plugin


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ada@laptop", "-f",
                    str(path)], check=True)
    return path


@pytest.fixture
def keys(tmp_path):
    key = _keygen(tmp_path / "id")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    return key, kh


def test_plugin_provides_the_interface():
    assert verifyObject(IProtocolPlugin, plugin)
    assert plugin.name == "ssh" and "commands" in plugin.ruleKeys


def test_options_with_a_key(keys):
    key, kh = keys
    o = plugin.parseOptions({"username": "deploy", "private_key_file": str(key),
                             "known_hosts": str(kh), "allow_agent_forwarding": True,
                             "mask_holdback": "3ms"}, Where("g.toml", "connections[0].options"))
    assert o.privateKey is not None and o.password is None
    assert o.allow_agent_forwarding and not o.allow_port_forwarding
    assert o.mask_holdback == pytest.approx(0.003)
    assert o.env_allow == ("LANG", "LC_*")


def test_password_is_never_shown(keys, monkeypatch):
    _, kh = keys
    monkeypatch.setenv("SG_BACKEND_PW", "hunter2-secret")
    o = plugin.parseOptions({"username": "deploy", "password_env": "SG_BACKEND_PW",
                             "known_hosts": str(kh)}, Where("g.toml", "c"))
    assert o.password == "hunter2-secret"
    assert "hunter2" not in repr(o) and "hunter2" not in str(o)


@pytest.mark.parametrize("options, key, words", [
    ({"private_key_file": "K"}, "username", "missing"),
    ({"username": "u"}, "private_key_file", "no backend credential"),
    ({"username": "u", "private_key_file": "/nonexistent"}, "private_key_file", "cannot load"),
    ({"username": "u", "private_key_file": "K", "password_env": "X"}, "private_key_file", "both"),
    ({"username": "u", "private_key_file": "K", "mask_holdback": "2s"}, "mask_holdback", "100ms"),
    ({"username": "u", "private_key_file": "K", "colour": 1}, "colour", "unknown key"),
    ({"username": "u", "private_key_file": "K", "known_hosts": "/nope"}, "known_hosts",
     "not a readable file"),
])
def test_option_mistakes_name_the_key_and_the_fix(keys, options, key, words):
    k, kh = keys
    options = {**{"known_hosts": str(kh)}, **options}
    options = {n: (str(k) if v == "K" else v) for n, v in options.items()}
    with pytest.raises(ConfigError) as e:
        plugin.parseOptions(options, Where("g.toml", "connections[0].options"))
    assert f"connections[0].options.{key}" in str(e.value)
    assert words in str(e.value)


def test_known_hosts_names_follow_openssh():
    assert knownHostsName("tcp:host=10.0.0.5:port=22") == b"10.0.0.5"
    assert knownHostsName("tcp:host=db.internal:port=2222") == b"[db.internal]:2222"
    assert knownHostsName("tcp:web.internal:2200") == b"[web.internal]:2200"
    assert knownHostsName(r"tcp6:host=fd00\:\:5:port=2222") == b"[fd00::5]:2222"
    with pytest.raises(ValueError):
        knownHostsName("unix:path=/run/sshd.sock")


def test_host_keys_are_created_once_and_kept(tmp_path):
    from sealgate.protocols.ssh.hostkeys import loadHostKeys

    first = loadHostKeys(tmp_path)
    again = loadHostKeys(tmp_path)
    assert sorted(first) == [b"ecdsa-sha2-nistp256", b"ssh-ed25519"]
    assert {k: v.fingerprint() for k, v in first.items()} == \
        {k: v.fingerprint() for k, v in again.items()}
    assert (tmp_path / "ssh" / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0


def test_key_store_binds_expires_and_revokes(tmp_path):
    from sealgate.identity.sshkeys import SSHKeyError, SSHKeyStore

    store = SSHKeyStore(tmp_path / "identity.sqlite")
    key = _keygen(tmp_path / "k")
    pub = Path(str(key) + ".pub").read_text()
    rec = store.add("ada", pub, ["ops", "dba"], expires=time.time() + 60)
    blob = __import__("twisted.conch.ssh.keys", fromlist=["Key"]).Key.fromString(pub).blob()
    found = store.lookup(blob)
    assert found.identity == "ada" and found.state() == "active"
    assert found.asIdentity().groups == frozenset({"ops", "dba"})
    assert found.asIdentity().method == "sshkey"
    assert found.state(now=time.time() + 120) == "expired"
    with pytest.raises(SSHKeyError, match="already bound"):
        store.add("mallory", pub, ["ops"])
    with pytest.raises(SSHKeyError, match="private key"):
        store.add("ada", key.read_text(), ["ops"])
    assert [r.fingerprint for r in store.revoke(rec.fingerprint)] == [rec.fingerprint]
    assert store.lookup(blob).state() == "revoked"
    other = __import__("twisted.conch.ssh.keys", fromlist=["Key"]).Key.fromFile(
        str(_keygen(tmp_path / "o")) + ".pub").blob()
    assert store.lookup(other) is None


def test_ssh_keys_cli_add_list_revoke(tmp_path, capsys):
    from sealgate.cli.main import main

    cfg = tmp_path / "sealgate.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n')
    key = _keygen(tmp_path / "k")
    assert main(["--config", str(cfg), "ssh-keys", "add", "ada", str(key) + ".pub",
                 "--group", "ops", "--expires", "30d"]) == 0
    added = capsys.readouterr().out
    assert "bound to ada" in added and "groups: ops" in added
    fingerprint = added.split()[0]
    assert main(["--config", str(cfg), "ssh-keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert fingerprint in listed and "active" in listed and "ada@laptop" in listed
    assert main(["--config", str(cfg), "ssh-keys", "revoke", "ada"]) == 0
    assert main(["--config", str(cfg), "ssh-keys", "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["--config", str(cfg), "ssh-keys", "add", "ada", str(key),
                 "--group", "ops"]) == 2
    assert "private key" in capsys.readouterr().err


@attrs.frozen
class F:
    time: float
    channel: int
    direction: int
    data: bytes


def _ctl(t, ch, direction, **fields):
    return F(t, ch * 4 + 2, direction, json.dumps(fields).encode())


def test_asciicast_export_header_output_and_resize_events():
    from sealgate.protocols.ssh.asciicast import writeAsciicast

    euro = "€".encode()
    frames = [
        _ctl(100.0, 0, 0, type="pty", term="xterm", cols=100, rows=30),
        _ctl(100.1, 0, 0, type="shell"),
        F(100.5, 0, 1, b"$ "),
        F(101.0, 0, 0, b"ls\r"),
        F(101.2, 0, 1, b"price " + euro[:1]),
        F(101.3, 0, 1, euro[1:] + b"\r\n"),
        _ctl(102.0, 0, 0, type="resize", cols=120, rows=40),
        F(102.5, 4, 1, b"other channel"),
    ]
    out = io.StringIO()
    assert writeAsciicast(frames, out) == 4
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"version": 2, "width": 100, "height": 30, "timestamp": 100,
                        "env": {"TERM": "xterm"}}
    assert lines[1:] == [[0.5, "o", "$ "], [1.2, "o", "price "], [1.3, "o", "€\r\n"],
                         [2.0, "r", "120x40"]]


def test_replay_plays_terminals_with_timing_and_prints_exec_transcripts():
    from sealgate.protocols.ssh.asciicast import replay

    frames = [
        _ctl(10.0, 0, 0, type="exec", command="uptime"),
        F(10.5, 0, 1, b" 10:00 up 3 days\n"),
        _ctl(10.6, 0, 1, type="exit", status=0),
        _ctl(20.0, 1, 0, type="pty", term="xterm", cols=80, rows=24),
        _ctl(20.0, 1, 0, type="shell"),
        F(20.0, 4, 1, b"a"),
        F(22.0, 4, 1, b"b"),
    ]
    slept = []
    out = io.BytesIO()
    replay(frames, out, speed=2.0, sleep=slept.append)
    assert out.getvalue() == b"$ uptime\n 10:00 up 3 days\n[exit 0]\nab"
    assert slept == [1.0]


class _SyncPool:
    """A thread pool that runs the work at once (known_hosts is read in a thread)."""

    def callInThreadWithCallback(self, onResult, f, *a, **kw):
        onResult(True, f(*a, **kw))


def _connectBackendFakeReactor(tmp_path, timeout):
    from types import SimpleNamespace

    from twisted.internet.testing import MemoryReactorClock

    from sealgate.protocols.ssh.backend import connectBackend
    from sealgate.protocols.ssh.plugin import SSHOptions

    class Reactor(MemoryReactorClock):
        def getThreadPool(self):
            return _SyncPool()

        def callFromThread(self, f, *a, **kw):
            f(*a, **kw)

    reactor = Reactor()
    known = tmp_path / "known_hosts"
    known.write_text("")
    conn = SimpleNamespace(name="hung-1", backend="tcp:host=127.0.0.1:port=2222",
                           options=SSHOptions(username="u", known_hosts=str(known), password="x",
                                              connect_timeout=timeout))
    results: list = []
    connectBackend(reactor, conn, avatar=None).addBoth(results.append)
    return reactor, results


def test_a_backend_connect_that_never_completes_fails_after_connect_timeout(tmp_path):
    from sealgate.protocols.ssh.backend import BackendError

    reactor, results = _connectBackendFakeReactor(tmp_path, 3.0)
    [(host, port, *_)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 2222)
    reactor.advance(2.9)
    assert results == []
    reactor.advance(0.2)
    [f] = results
    assert f.check(BackendError)
    assert str(f.value) == ("the backend of hung-1 did not answer within 3 s (connect_timeout); "
                            "try again later or tell the operator")
    assert reactor.connectors[0].stoppedConnecting  # the attempt itself is given up
    assert not reactor.getDelayedCalls()


def test_a_backend_that_connects_but_never_speaks_is_dropped_after_connect_timeout(tmp_path):
    from twisted.internet.testing import StringTransport

    from sealgate.protocols.ssh.backend import BackendError

    reactor, results = _connectBackendFakeReactor(tmp_path, 2.0)
    factory = reactor.tcpClients[0][2]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value().startswith(b"SSH-2.0-")  # our banner went out; no answer comes
    reactor.advance(2.0)
    [f] = results
    assert f.check(BackendError) and "did not answer within 2 s" in str(f.value)
    assert transport.disconnecting
