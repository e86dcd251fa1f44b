"""Messages between the gateway and its store writer process: marshal'd item lists, bulk frames raw."""

import marshal
import os
import struct

from sealgate.recording import _format as fmt

#: kind (0: a marshal'd list, 1: one raw frame), body length.
HEADER = struct.Struct(">BI")
#: A raw frame's fields before its payload: session handle, time, channel, direction.
RAW_FRAME = struct.Struct(">QdIB")
#: Frames at least this big skip marshal: their payload goes to the pipe as it is.
RAW_MIN = 32 * 1024

LIST, RAW = 0, 1


class PipeError(ValueError):
    """The other side sent something that is not a message."""


def encode(items: list) -> list:
    """
    Buffers carrying C{items} in order, for one C{os.writev}.  Frame items
    are C{(handle, time, channel, direction, data)}; the rest are tuples of
    marshal's types.

    @raise ValueError: an item holds something marshal cannot carry.
    """
    out: list = []
    start = 0
    for i, item in enumerate(items):
        if len(item) == 5 and type(item[0]) is int and len(item[4]) >= RAW_MIN:
            if i > start:
                _list(out, items[start:i])
            data = item[4]
            out.append(HEADER.pack(RAW, RAW_FRAME.size + len(data)))
            out.append(RAW_FRAME.pack(*item[:4]))
            out.append(data)
            start = i + 1
    if start < len(items):
        _list(out, items[start:] if start else items)
    return out


def _list(out: list, items: list) -> None:
    blob = marshal.dumps(items)
    out.append(HEADER.pack(LIST, len(blob)))
    out.append(blob)


def writeMessage(sink, message) -> None:
    """One reply (a tuple of marshal's types) to a binary file."""
    blob = marshal.dumps(message)
    sink.write(HEADER.pack(LIST, len(blob)) + blob)


def readMessages(source):
    """
    Yield each message's items (a list) from a binary file until end of
    file (see L{MessageReader}).

    @raise PipeError: a message is cut short or does not decode.
    """
    return MessageReader(source).messages()


class MessageReader:
    """
    Messages from a binary file with C{readinto} (the writer's unbuffered
    pipe): small ones are parsed out of reads of up to L{CHUNK} bytes into
    one reused buffer, and a body that did not arrive with its header (a
    raw frame's payload) is read straight into a buffer of its own, so a
    bulk payload is copied once, from the pipe to where it stays.  It
    keeps what it read ahead, so its L{messages} may be taken up again.
    """

    #: Bytes asked for per read into the shared buffer.
    CHUNK = 64 * 1024

    def __init__(self, source):
        # A buffered file's readinto waits to fill the whole buffer: readinto1 reads what is there.
        self._readinto = getattr(source, "readinto1", None) or source.readinto
        self._buf = bytearray(self.CHUNK)
        self._view = memoryview(self._buf)
        self._at = self._end = 0

    def _more(self, need: int) -> bool:
        """At least C{need} unread bytes in the buffer; False at end of file first."""
        at, end = self._at, self._end
        if at:
            rest = self._view[at:end]
            # bytearray slice assignment copies with memcpy: never from an overlapping view
            self._buf[: end - at] = rest if end - at <= at else bytes(rest)
            self._at, self._end = 0, end - at
        while self._end < need:
            n = self._readinto(self._view[self._end :])
            if not n:
                return False
            self._end += n
        return True

    def messages(self):
        """Yield each message's items until end of file. @raise PipeError: as L{readMessages}."""
        unpackHead = HEADER.unpack_from
        unpackRaw = RAW_FRAME.unpack_from
        headSize = HEADER.size
        while True:
            if self._end - self._at < headSize and not self._more(headSize):
                if self._end:
                    raise PipeError("message header cut short")
                return
            kind, size = unpackHead(self._buf, self._at)
            start = self._at + headSize
            have = self._end - start
            body: memoryview
            if have >= size:
                body = self._view[start : start + size]
                self._at = start + size
                if kind == RAW:
                    body = memoryview(bytes(body))  # the shared buffer is reused
            else:
                own = bytearray(size)
                own[:have] = self._view[start : self._end]
                self._at = self._end = 0
                body = memoryview(own)
                while have < size:
                    n = self._readinto(body[have:])
                    if not n:
                        raise PipeError("message cut short")
                    have += n
            if kind == RAW:
                if size < RAW_FRAME.size:
                    raise PipeError("raw frame cut short")
                yield [(*unpackRaw(body), body[RAW_FRAME.size :])]
            elif kind == LIST:
                try:
                    items = marshal.loads(body)
                except (EOFError, ValueError, TypeError) as e:
                    raise PipeError(f"message does not decode: {e}") from None
                yield items
            else:
                raise PipeError(f"unknown message kind {kind}")


#: What one item costs the gateway's memory while it waits to be durable,
#: beside a frame's payload (its tuple, time, deque slot): counted against
#: C{[gateway] max_unsealed} by the gateway and in the writer's durable
#: count alike, so both sides agree on what is pending.
FRAME_COST = 200
#: The same for any other item (an open, an event, a close), whatever its fields.
ITEM_COST = 1024
#: The problems a writer reports, as the gateway shows them.
DISK_FULL = "the disk is full"
CANNOT_WRITE = "the recording store cannot write to its disk"


def writeAll(fd: int, buffers: list) -> None:
    """Every buffer, in order, to a blocking pipe (one write may take part of them)."""
    i = 0
    while i < len(buffers):
        done = os.writev(fd, buffers[i : i + 1024])
        while done:
            size = len(buffers[i])
            if done >= size:
                done -= size
                i += 1
            else:
                buffers[i] = memoryview(buffers[i])[done:]
                done = 0


def encodeItems(items: list) -> list:
    """L{encode}, with what marshal cannot carry made plain first."""
    try:
        return encode(items)
    except ValueError:
        return encode([_marshalable(i) for i in items])


def _marshalable(item: tuple) -> tuple:
    """
    An item whose fields marshal cannot carry, made plain the way the log
    stores them anyway (L{fmt.scrub}: unknown values become their text).
    """
    if len(item) == 5 and type(item[0]) is int:
        return item
    return tuple(fmt.scrub(v) for v in item)
