"""[logging]: level and format of the gateway's log, library noise out by default, nothing but the text in JSON."""

import json
import signal

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogPublisher

from sealgate.logconfig import JSONLinesObserver, LoggingConfig, levelPredicate
from tests.harness.twistd import GatewayProcess
from tests.test_twistd import sampleConfig


class Lines:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def publish(config, events):
    out = Lines()
    pub = LogPublisher(FilteringLogObserver(JSONLinesObserver(out), [levelPredicate(config)]))
    for namespace, level, fmt, fields in events:
        Logger(namespace=namespace, observer=pub).emit(level, fmt, **fields)
    return out.text


def test_library_info_is_dropped_and_our_info_kept_by_default():
    text = publish(LoggingConfig(format="json"), [
        ("twisted.web.server.Site", LogLevel.info, "Starting factory {f}", {"f": "x"}),
        ("sealgate.service", LogLevel.info, "Admin API on {a}", {"a": "here"}),
        ("twisted.conch.ssh.transport", LogLevel.warn, "bad packet", {}),
        ("sealgate.gateway", LogLevel.debug, "chatty", {}),
    ])
    lines = [json.loads(line) for line in text.splitlines()]
    assert [r["text"] for r in lines] == ["Admin API on here", "bad packet"]
    assert lines[0]["level"] == "info" and lines[0]["namespace"] == "sealgate.service"


def test_debug_level_shows_our_debug_and_libraries_level_lets_them_in():
    text = publish(LoggingConfig(level="debug", libraries="info", format="json"), [
        ("twisted.web.server.Site", LogLevel.info, "Starting factory", {}),
        ("sealgate.gateway", LogLevel.debug, "chatty", {}),
    ])
    assert [json.loads(line)["text"] for line in text.splitlines()] == ["Starting factory", "chatty"]


def test_json_lines_carry_the_formatted_text_never_other_event_fields():
    text = publish(LoggingConfig(format="json"), [
        ("sealgate.identity", LogLevel.warn, "login failed for {who}",
         {"who": "ci-bot", "credential": "sk-do-not-log-me"}),
    ])
    record = json.loads(text)
    assert record["text"] == "login failed for ci-bot"
    assert "sk-do-not-log-me" not in text


def test_twistd_logs_json_lines_with_logging_format_json(tmp_path):
    text = sampleConfig()
    assert 'format = "text"' in text
    gw = GatewayProcess(tmp_path, text.replace('format = "text"', 'format = "json"')).start()
    assert gw.stop(signal.SIGTERM) == 0
    lines = [line for line in gw.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert any(r["text"].startswith("Admin API on") for r in records)
    # twistd's default text observer would have written the Site's
    # "Starting factory" lines; the default library level keeps them out.
    assert not any("Starting factory" in r["text"] for r in records)


def test_default_text_log_leaves_library_chatter_out(tmp_path):
    gw = GatewayProcess(tmp_path, sampleConfig()).start()
    assert gw.stop(signal.SIGTERM) == 0
    log = gw.log()
    assert "Admin API on" in log and "Starting factory" not in log


def test_unknown_logging_format_is_a_config_error(tmp_path):
    from sealgate.config import ConfigError, loadConfig

    cfg = tmp_path / "c.toml"
    cfg.write_text(sampleConfig().replace('format = "text"', 'format = "xml"'))
    try:
        loadConfig(cfg)
    except ConfigError as e:
        assert "logging.format: unknown format 'xml'" in str(e) and "text, json" in str(e)
    else:
        raise AssertionError("accepted format = 'xml'")
