"""Export formats: how protocol plugins declare them, and the one dispatch the CLI and the admin API use."""

import contextlib
import importlib
import io
import time
from collections.abc import Callable

import attrs
from zope.interface import implementer

from sealgate.interfaces import IExportFormat

TEXT = "text/plain; charset=utf-8"


class UnknownFormat(LookupError):
    """No export format of that name for the session's protocol; the message lists the ones there are."""


@implementer(IExportFormat)
@attrs.frozen
class ExportFormat:
    """
    An export format, as a protocol plugin declares it in C{exportFormats}.

    @ivar writer: C{writer(session, out) -> summary}, or its dotted name
        C{"package.module:function"}, imported on first use so that
        declaring formats keeps a lazy plugin lazy.
    """

    name: str
    mediaType: str
    extension: str
    title: str
    writer: Callable | str = attrs.field(repr=False)
    player: str | None = None

    def write(self, session, out) -> str:
        fn = self.writer
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        return fn(session, out)


@contextlib.contextmanager
def textOut(out):
    """C{out} (binary) as a UTF-8 text file for writers that write text, left open afterwards."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        yield text
    finally:
        text.flush()
        text.detach()


class _Full(Exception):
    """The bounded output is full: the writer is stopped there."""


class _Bounded(io.RawIOBase):
    def __init__(self, limit: int):
        self.buf = bytearray()
        self.limit = limit

    def writable(self):
        return True

    def write(self, data):
        room = self.limit - len(self.buf)
        self.buf += bytes(data)[:room]
        if len(data) > room:
            raise _Full
        return len(data)


def writeBounded(fmt, session, limit: int) -> tuple[bytes, bool]:
    """
    At most C{limit} bytes of C{session} in format C{fmt}, the writer
    stopped once they are written (a long session is not rendered whole to
    show its start): C{(data, cut)}.  A recording that stops rendering
    ends with a note saying why.
    """
    out = _Bounded(limit)
    try:
        fmt.write(session, out)
    except _Full:
        return bytes(out.buf), True
    except ValueError as e:
        out.buf += f"\n(the transcript stops here: {e})\n".encode()
    return bytes(out.buf), False


def _writeBundle(session, out) -> str:
    header = session.bundle(out)
    return (f"sealgate bundle, {len(header['leaves'])} log leaves with inclusion proofs, "
            f"checkpoint at size {header['checkpoint'].split(chr(10))[1]}")


def _writeFrames(session, out) -> str:
    out.write(commandsTranscript(session.events(), session.record.opened))
    out.write(b"\n---- frames ----\n")
    transcript(session.frames(), out, None)
    return "sealed commands and every frame as text"


#: Every session has these two, whatever its protocol.
BUNDLE = ExportFormat("bundle", "application/vnd.sealgate.bundle", ".bundle",
                      "evidence bundle (sealgate verify-bundle, replay, show)", _writeBundle)
FRAMES = ExportFormat("frames", TEXT, ".txt", "sealed commands and every frame as text", _writeFrames,
                      player="text")


def _replayWriter(plugin) -> Callable:
    def write(session, out) -> str:
        plugin.replay(session.frames(), out, None)
        return f"{plugin.name} transcript"
    return write


def formatsFor(protocol: str | None, plugins: dict | None = None) -> dict:
    """
    The export formats of a session of C{protocol}, by name: its plugin's
    own, then C{transcript} (from the plugin's replay, if it declares none),
    C{frames} and C{bundle}.
    """
    if plugins is None:
        from sealgate.plugins import protocolPlugins

        plugins = protocolPlugins()
    plugin = plugins.get(protocol or "")
    found: dict = {}
    if plugin is not None:
        try:
            declared = tuple(getattr(plugin, "exportFormats", ()) or ())
        except ImportError:
            declared = ()  # a broken plugin still leaves its sessions exportable as frames
        for f in declared:
            if IExportFormat.providedBy(f):
                found.setdefault(f.name, f)
        if "transcript" not in found and callable(getattr(plugin, "replay", None)):
            found["transcript"] = ExportFormat("transcript", TEXT, ".txt", f"{plugin.name} transcript",
                                               _replayWriter(plugin), player="text")
    found.setdefault("transcript", FRAMES)
    found.setdefault(FRAMES.name, FRAMES)
    found.setdefault(BUNDLE.name, BUNDLE)
    return found


def findFormat(protocol: str | None, name: str, plugins: dict | None = None) -> IExportFormat:
    formats = formatsFor(protocol, plugins)
    try:
        return formats[name]
    except KeyError:
        raise UnknownFormat(f"a {protocol or 'unknown'} session has no export format {name!r}; "
                            f"it has: {', '.join(sorted(formats))}")


def describe(formats: dict) -> list[dict]:
    """The formats as the admin API lists them (the console's downloads and player)."""
    return [{"name": f.name, "media_type": f.mediaType, "extension": f.extension, "title": f.title,
             "player": f.player} for f in formats.values()]


def commandsTranscript(events, start: float) -> bytes:
    """The session's sealed commands, verdicts and ticket decisions as text lines."""
    lines = []
    for e in events:
        if e.get("type") != "event":
            continue
        f = e.get("fields") or {}
        at = f"[+{(e.get('time') or start) - start:9.3f}s]"
        if e.get("event") == "command":
            verdict = str(f.get("verdict"))
            if f.get("decided"):
                verdict += " (after approval)" if verdict == "allow" else " (decided)"
            extra = "".join(f" {k}={f[k]}" for k in ("rule", "ticket", "reason") if f.get(k))
            lines.append(f"{at} {f.get('kind')}> {f.get('command')}\n{' ' * len(at)}   -- {verdict}{extra}")
        elif e.get("event") == "approval":
            by = f" by {f['by']}" if f.get("by") else ""
            why = f": {f['reason']}" if f.get("reason") else ""
            lines.append(f"{at} ticket {f.get('ticket')} {f.get('state')}{by}{why}")
        elif e.get("event") not in (None, "progress"):
            lines.append(f"{at} {e.get('event')} {f}")
    return ("\n".join(lines) + "\n").encode() if lines else b"(no commands)\n"


def transcript(frames, out, speed, sleep=time.sleep) -> None:
    """Each frame as text when printable, else a hex dump (the replay of a protocol with none)."""
    start = last = None
    for f in frames:
        if start is None:
            start = last = f.time
        if speed is not None and f.time > last:
            sleep(min(f.time - last, 5.0) / speed)
        last = f.time
        arrow = "client>" if f.direction == 0 else "<server"
        size = "redacted" if f.data is None else f"{len(f.data)} bytes"
        out.write(f"[+{f.time - start:9.3f}s] #{f.seq} {arrow} ch{f.channel} {size}\n".encode())
        if f.data:
            out.write(_render(f.data))
        out.flush()


def _render(data: bytes) -> bytes:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return text.encode() + (b"" if text.endswith("\n") else b"\n")
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {i:08x}  {hexpart:<47}  {asc}\n")
    return "".join(lines).encode()
