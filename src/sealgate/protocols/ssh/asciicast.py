"""Recorded SSH sessions as asciicast v2 (terminal) or as a transcript (exec, sftp), and replay."""

import codecs
import json
import time
from typing import Any

from sealgate.protocols.ssh import _wire
from sealgate.protocols.ssh.relay import STREAM_CONTROL, STREAM_DATA, STREAM_STDERR
from sealgate.session import FROM_CLIENT, TO_CLIENT


def _fields(frame) -> tuple[float, int, int, bytes]:
    # A redacted frame has no data: it plays as nothing.
    return float(frame.time), frame.direction, frame.channel, bytes(frame.data or b"")


class _Channel:
    def __init__(self, number: int):
        self.number = number
        self.kind: str | None = None
        self.command: str | None = None
        self.pty: dict | None = None
        self.exit: dict | None = None
        self.events: list[tuple[float, int, int, Any]] = []


def _channels(frames) -> list[_Channel]:
    chans: dict[int, _Channel] = {}
    for frame in frames:
        t, direction, rc, data = _fields(frame)
        number, stream = divmod(rc, 4)
        ch = chans.get(number)
        if ch is None:
            ch = chans[number] = _Channel(number)
        if stream == STREAM_CONTROL:
            try:
                event = json.loads(data)
            except ValueError:
                continue
            kind = event.get("type")
            if kind == "pty" and ch.pty is None:
                ch.pty = event
            elif kind in ("shell", "exec", "subsystem"):
                ch.kind = kind if kind != "subsystem" else event.get("name")
                ch.command = event.get("command")
            elif kind == "exit":
                ch.exit = event
            ch.events.append((t, direction, stream, event))
        else:
            ch.events.append((t, direction, stream, data))
    return [chans[k] for k in sorted(chans)]


def writeAsciicast(frames, out, channel: int | None = None) -> int:
    """
    Write one terminal channel of a recorded SSH session as asciicast v2
    to C{out} (a text file): a header with width, height and timestamp,
    then "o" output and "r" resize events.  C{channel} picks the SSH
    channel; by default the first one with a pty (else the first one).

    @return: the number of events written.
    @raise ValueError: when the session has no channel at all.
    """
    chans = _channels(frames)
    if not chans:
        raise ValueError("the recording has no SSH channel")
    if channel is not None:
        picked = [c for c in chans if c.number == channel]
        if not picked:
            raise ValueError(f"the recording has no SSH channel {channel}")
        ch = picked[0]
    else:
        ch = next((c for c in chans if c.pty is not None), chans[0])
    start = ch.events[0][0] if ch.events else time.time()
    pty = ch.pty or {}
    header: dict[str, Any] = {"version": 2, "width": int(pty.get("cols") or 80),
                              "height": int(pty.get("rows") or 24), "timestamp": int(start)}
    if pty.get("term"):
        header["env"] = {"TERM": pty["term"]}
    if ch.command:
        header["command"] = ch.command
    out.write(json.dumps(header) + "\n")
    decoders = {STREAM_DATA: codecs.getincrementaldecoder("utf-8")("replace"),
                STREAM_STDERR: codecs.getincrementaldecoder("utf-8")("replace")}
    count = 0
    for t, direction, stream, payload in ch.events:
        rel = round(max(0.0, t - start), 6)
        if stream == STREAM_CONTROL:
            if payload.get("type") == "resize":
                out.write(json.dumps([rel, "r", f"{payload['cols']}x{payload['rows']}"]) + "\n")
                count += 1
            continue
        if direction != TO_CLIENT:
            continue
        text = decoders[stream].decode(payload)
        if text:
            out.write(json.dumps([rel, "o", text]) + "\n")
            count += 1
    return count


def replay(frames, out, speed: float | None = None, sleep=time.sleep) -> None:
    """
    C{sealgate replay}: terminal channels are played back with their
    original timing (divided by C{speed}; None plays at once); exec and
    sftp channels print as a transcript.
    """
    for ch in _channels(frames):
        if ch.kind == "sftp":
            _sftpTranscript(ch, out)
            continue
        if ch.kind == "exec":
            out.write(f"$ {ch.command}\n".encode())
        last = None
        for t, direction, stream, payload in ch.events:
            if stream == STREAM_CONTROL or direction != TO_CLIENT:
                continue
            if speed and last is not None and t > last:
                sleep((t - last) / speed)
            last = t
            out.write(payload)
            out.flush()
        if ch.exit is not None and ch.kind == "exec":
            what = ch.exit.get("status", ch.exit.get("signal"))
            out.write(f"[exit {what}]\n".encode())


def _sftpTranscript(ch: _Channel, out) -> None:
    reader = _wire.SFTPRequests()
    for _t, direction, stream, payload in ch.events:
        if stream != STREAM_DATA or direction != FROM_CLIENT:
            continue
        reader.receive_data(payload)
        while True:
            try:
                event = reader.next_event()
            except _wire.WireError:
                out.write(b"sftp> (malformed stream)\n")
                return
            if event is _wire.NEED_DATA:
                break
            op = event[1]
            if op is not None:
                out.write(f"sftp> {op.text}\n".encode("utf-8", "surrogateescape"))
