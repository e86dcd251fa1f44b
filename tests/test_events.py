"""The audit event stream: every sealed leaf reaches syslog and webhook sinks once, in order, across restarts."""

import hashlib
import hmac
import re
import signal
import urllib.request

from sealgate.events import syslogMessage
from sealgate.recording.reader import StoreReader
from tests.harness.siem import SyslogReceiver, WebhookReceiver, waitFor
from tests.harness.twistd import GatewayProcess
from tests.test_plugin_api import CONFIG, PLUGIN_DIR, LineClient, echoBackend  # noqa: F401

SECRET = "siem-hook-secret"


def test_syslog_message_is_rfc5424_with_the_log_index_framed_by_octet_count():
    record = {"index": 41, "node": "sealgate/a", "session": "s1", "type": "event", "time": 1.5,
              "leaf": {"event": "command", "fields": {"verdict": "deny", "command": 'rm "x"]'}}}
    framed = syslogMessage(record, "host1", 99)
    length, message = framed.split(b" ", 1)
    assert int(length) == len(message)
    # PRI: facility 13 (log audit) * 8 + severity 4 (warning, for a denial).
    assert re.match(rb'^<108>1 1970-01-01T00:00:01\.500000Z host1 sealgate 99 event\.command '
                    rb'\[sealgate@32473 index="41" node="sealgate/a" session="s1"\] \xef\xbb\xbf\{',
                    message), message


def _session(gw, key, lines):
    c = LineClient(gw.port("echo"))
    c.send(f"AUTH {key}")
    assert c.read().startswith("OK ")
    for line in lines:
        c.send(line)
        c.read()
    c.close()


def _logSize(state) -> int:
    with StoreReader(state) as r:
        return r.logSize()


def test_every_sealed_event_reaches_both_sinks_once_in_order_across_restarts(tmp_path, echoBackend):  # noqa: F811
    syslog = SyslogReceiver().start()
    hook = WebhookReceiver(failFirst=2).start()
    config = CONFIG.replace("{backend}", str(echoBackend)) + f'''
[[events]]
name = "siem"
kind = "syslog"
address = "tcp:host=127.0.0.1:port={syslog.port}"
confirm = "0.3s"
backoff = "0.1s"
max_backoff = "0.5s"

[[events]]
name = "hook"
kind = "webhook"
url = "{hook.url}"
secret_env = "SIEM_HOOK_SECRET"
backoff = "0.1s"
'''
    gw = GatewayProcess(tmp_path, config, [PLUGIN_DIR])
    gw.env["SIEM_HOOK_SECRET"] = SECRET
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.splitlines()[-1]
    state = tmp_path / "state"
    gw.start()
    try:
        _session(gw, key, ["hello", "rm x"])
        size = lambda: _logSize(state)  # noqa: E731
        waitFor(lambda: size() > 0 and set(syslog.indices()) >= set(range(size()))
                and hook.indices() == list(range(size())), what="both sinks to catch up")
        # The receiver goes away (its connections reset) and comes back on its port.
        port = syslog.port
        syslog.stop()
        _session(gw, key, ["after the receiver died", "rm y"])
        restarted = SyslogReceiver(port)
        restarted.start()
        waitFor(lambda: set(syslog.indices()) | set(restarted.indices()) >= set(range(size())),
                what="the restarted receiver to get what was sent while it was down")
        before = size()
    finally:
        assert gw.stop(signal.SIGTERM) == 0
    # A gateway restart resumes from each sink's cursor: nothing confirmed is sent again.
    gw.start()
    try:
        _session(gw, key, ["after the gateway restarted"])
        waitFor(lambda: set(restarted.indices()) >= set(range(before, size()))
                and hook.indices() == list(range(size())), what="the sinks after a restart")
        final = size()
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.adminPort}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        assert 'sealgate_events_pending{sink="hook"} 0.0' in metrics
    finally:
        assert gw.stop(signal.SIGTERM) == 0
        restarted.stop()
        hook.stop()

    got = syslog.indices() + restarted.indices()
    # In order, nothing missing; a repeat only of what was unconfirmed when a
    # connection died, and with the same index and the same content.
    firsts = sorted(set(got), key=got.index)
    assert firsts == sorted(firsts) and set(got) >= set(range(before))
    bodies = {}
    for i, _, body in syslog.messages + restarted.messages:
        assert bodies.setdefault(i, body) == body
    # The webhook got every index, in order, after two failed attempts it
    # retried; a batch in flight at the SIGTERM may come again after the
    # restart (at least once), never out of order and never with a gap.
    indices = hook.indices()
    assert list(dict.fromkeys(indices)) == list(range(len(set(indices))))
    assert set(indices) >= set(range(final))
    for (headers, _), raw in zip(hook.batches, hook.bodies, strict=True):
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["X-Sealgate-Signature"] == expected
    # What the sinks carry is the sealed log: the denial is there as sealed.
    denials = [b for _, _, b in syslog.messages if (b["leaf"].get("fields") or {}).get("verdict") == "deny"]
    assert denials and denials[0]["leaf"]["fields"]["command"] == "rm x"
    assert SECRET not in gw.log() and key not in gw.log()
