"""The gateway's log output: [logging] level and format, library noise kept out by default."""

import sys
import time
from typing import IO, Any

import attrs
import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error, "critical": LogLevel.critical}
FORMATS = ("text", "json")

#: Namespaces whose info lines operators want: ours, and twistd's own
#: start-up lines (version, reactor, pid).
_OWN = ("sealgate", "twisted.application", "twisted.scripts")


@attrs.frozen
class LoggingConfig:
    """
    @ivar level: the lowest level written for sealgate's own events.
    @ivar libraries: the lowest level written for every other library's
        events (Twisted's factories, Conch's key exchange chatter...).
    """

    level: str = "info"
    format: str = "text"
    libraries: str = "warn"


def parseLogging(t) -> LoggingConfig:
    """Read a C{[logging]} L{sealgate.config.Table}."""
    values = {}
    for key, default, valid in (("level", "info", LEVELS), ("libraries", "warn", LEVELS),
                                ("format", "text", FORMATS)):
        v = t.str(key, default)
        if v not in valid:
            raise t.where.error(key, f"unknown {key} {v!r}", f"use one of: {', '.join(valid)}")
        values[key] = v
    t.finish()
    return LoggingConfig(**values)


def levelPredicate(config: LoggingConfig):
    """Keep an event when it is at least the level for its namespace."""
    own, other = LEVELS[config.level], LEVELS[config.libraries]

    def predicate(event: dict) -> Any:
        level = event.get("log_level", LogLevel.info)
        namespace = event.get("log_namespace") or ""
        floor = own if namespace.startswith(_OWN) else other
        if level < floor:
            return PredicateResult.no
        return PredicateResult.maybe
    return predicate


@implementer(ILogObserver)
@attrs.define
class JSONLinesObserver:
    """
    One JSON object a line: time, level, namespace, system and the formatted
    text (with the failure's traceback when there is one).  Only what the
    text format would show is written, never an event's other fields: those
    may hold objects nobody meant to log.
    """

    out: IO[str]

    def __call__(self, event: dict) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.get("log_time", 0)))
            + f".{int((event.get('log_time', 0) % 1) * 1000):03d}Z",
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace"),
            "system": event.get("log_system"),
            "text": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.out.write(orjson.dumps(record).decode() + "\n")
        self.out.flush()


def makeObserver(config: LoggingConfig, serverOptions=None) -> ILogObserver:
    """
    The observer twistd should log to, honouring its C{--logfile} and
    C{--nodaemon} the way twistd's own default does.
    """
    out: IO[str]
    logfile = (serverOptions or {}).get("logfile") or ""
    nodaemon = (serverOptions or {}).get("nodaemon", True)
    if logfile == "-" or (not logfile and nodaemon):
        out = sys.stdout
    else:
        from twisted.python import logfile as lf

        out = lf.LogFile.fromFullPath(logfile or "twistd.log")  # type: ignore[assignment]
    sink = JSONLinesObserver(out) if config.format == "json" else textFileLogObserver(out)
    return FilteringLogObserver(sink, [levelPredicate(config)])
