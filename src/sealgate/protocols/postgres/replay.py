"""Replay a recorded PostgreSQL session as an SQL transcript with results, as the client saw them."""

import time

from sealgate.protocols.postgres import _wire as w
from sealgate.session import FROM_CLIENT

_MAX_ROWS_SHOWN = 1000


def _cell(v: bytes | None, binary: bool) -> str:
    if v is None:
        return "NULL"
    if binary:
        return "\\x" + v.hex()
    return v.decode("utf-8", "replace")


class _Transcript:
    def __init__(self, out):
        self.out = out
        self.client = w.Reader(frontend=True, startup=True)
        self.server = w.Reader(frontend=False)
        self.columns: tuple = ()
        self.rows = 0
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}

    def line(self, text: str) -> None:
        self.out.write((text + "\n").encode("utf-8", "replace"))

    def fromClient(self, data: bytes) -> None:
        self.client.receive_data(data)
        while (f := self.client.next_event()) is not w.NEED_DATA:
            msg = w.decodeFrame(f, True)
            if isinstance(msg, w.StartupMessage):
                self.line(f"-- connect user={msg.get('user')} database={msg.get('database')}")
            elif isinstance(msg, w.Query):
                self.line(f"=> {msg.text}")
            elif isinstance(msg, w.Parse):
                self.statements[msg.name] = msg.query
            elif isinstance(msg, w.Bind):
                self.portals[msg.portal] = msg.statement
                if msg.params:
                    fmts = _formats(msg.paramFormats, len(msg.params))
                    shown = ", ".join(_cell(p, fmt == 1)
                                      for p, fmt in zip(msg.params, fmts, strict=False))
                    self.line(f"-- parameters: {shown}")
            elif isinstance(msg, w.Execute):
                text = self.statements.get(self.portals.get(msg.portal, ""), "")
                self.line(f"=> {text}")
            elif isinstance(msg, w.Terminate):
                self.line("-- disconnect")

    def fromServer(self, data: bytes) -> None:
        self.server.receive_data(data)
        while (f := self.server.next_event()) is not w.NEED_DATA:
            msg = w.decodeFrame(f, False)
            if isinstance(msg, w.RowDescription):
                self.columns = msg.columns
                self.rows = 0
                self.line(" | ".join(c.name for c in msg.columns))
            elif isinstance(msg, w.DataRow):
                self.rows += 1
                if self.rows <= _MAX_ROWS_SHOWN:
                    cols = self.columns
                    self.line(" | ".join(
                        _cell(v, i < len(cols) and cols[i].format == 1)
                        for i, v in enumerate(msg.values)))
            elif isinstance(msg, w.CommandComplete):
                if self.rows > _MAX_ROWS_SHOWN:
                    self.line(f"-- ({self.rows - _MAX_ROWS_SHOWN} more rows)")
                self.rows = 0
                self.line(f"-- {msg.tag}")
            elif isinstance(msg, w.CopyData):
                self.out.write(msg.data)
            elif isinstance(msg, (w.ErrorResponse, w.NoticeResponse)):
                sev = msg.get("S", "ERROR")
                self.line(f"{sev}:  {msg.get('M', '')}" + (f" ({msg.get('C')})" if msg.get("C") else ""))
                if msg.get("D"):
                    self.line(f"DETAIL:  {msg.get('D')}")
            elif isinstance(msg, w.NotificationResponse):
                self.line(f'-- notification "{msg.channel}": {msg.payload}')


def _formats(formats, n):
    if not formats:
        return [0] * n
    if len(formats) == 1:
        return list(formats) * n
    return list(formats)


def exportTranscript(session, out) -> str:
    """The C{transcript} export format's writer (L{sealgate.interfaces.IExportFormat})."""
    replay(session.frames(), out)
    return "SQL transcript"


def replay(frames, out, speed=None, sleep=time.sleep) -> None:
    """
    Write the transcript of a recorded session to C{out} (binary file).

    @param speed: None to print at once, else wait the recorded gaps divided
        by C{speed}.
    """
    t = _Transcript(out)
    last = None
    for f in frames:
        if speed and last is not None and f.time > last:
            sleep((f.time - last) / speed)
        last = f.time
        if f.data is None:
            t.line("-- [redacted frame]")
            continue
        try:
            if f.direction == FROM_CLIENT:
                t.fromClient(f.data)
            else:
                t.fromServer(f.data)
        except w.ProtocolError as e:
            t.line(f"-- [undecodable frame: {e}]")
            t.client = w.Reader(frontend=True)
            t.server = w.Reader(frontend=False)
        out.flush()
