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


def encode(items: list, raw: bool = True) -> list:
    """
    Buffers carrying C{items} in order, for one C{os.writev}.  Frame items
    are C{(handle, time, channel, direction, data)}; the rest are tuples of
    marshal's types.  With C{raw} false (the sender knows no frame of at
    least L{RAW_MIN} bytes was queued) the items are not looked through:
    they go in one marshal'd list.

    @raise ValueError: an item holds something marshal cannot carry.
    """
    out: list = []
    if not raw:
        if items:
            _list(out, items)
        return out
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
    Yield each message's items (a list) from a buffered binary file until
    end of file.

    @raise PipeError: a message is cut short or does not decode.
    """
    while True:
        head = source.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            raise PipeError("message header cut short")
        kind, size = HEADER.unpack(head)
        body = source.read(size)
        if len(body) < size:
            raise PipeError("message cut short")
        if kind == RAW:
            yield [(*RAW_FRAME.unpack_from(body), memoryview(body)[RAW_FRAME.size:])]
        elif kind == LIST:
            try:
                yield marshal.loads(body)
            except (EOFError, ValueError, TypeError) as e:
                raise PipeError(f"message does not decode: {e}") from None
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


def encodeItems(items: list, raw: bool = True) -> list:
    """L{encode}, with what marshal cannot carry made plain first."""
    try:
        return encode(items, raw)
    except ValueError:
        return encode([_marshalable(i) for i in items], raw)


def _marshalable(item: tuple) -> tuple:
    """
    An item whose fields marshal cannot carry, made plain the way the log
    stores them anyway (L{fmt.scrub}: unknown values become their text).
    """
    if len(item) == 5 and type(item[0]) is int:
        return item
    return tuple(fmt.scrub(v) for v in item)
