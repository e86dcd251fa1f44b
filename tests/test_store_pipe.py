"""The gateway-to-writer pipe format: what goes in comes out, in order; a cut message is an error."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealgate.recording import _pipe

frames = st.tuples(st.integers(0, 2**40), st.floats(allow_nan=False), st.integers(0, 2**32 - 1),
                   st.integers(0, 1), st.one_of(st.binary(max_size=64),
                                                st.binary(min_size=_pipe.RAW_MIN, max_size=_pipe.RAW_MIN + 9)))
others = st.one_of(
    st.tuples(st.just("event"), st.none() | st.integers(0, 99), st.text(max_size=9),
              st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)),
              st.floats(allow_nan=False)),
    st.tuples(st.just("stop")),
)


def _roundTrip(items, raw=True):
    wire = b"".join(bytes(b) for b in _pipe.encode(items, raw))
    out = []
    for message in _pipe.readMessages(io.BufferedReader(io.BytesIO(wire))):
        out.extend(message)
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in item) for item in out]


@given(st.lists(st.one_of(frames, others), max_size=20))
def test_items_come_out_as_they_went_in(items):
    assert _roundTrip(items) == items


def test_big_frames_travel_raw_beside_the_marshalled_items():
    big = b"x" * _pipe.RAW_MIN
    items = [("event", 1, "a", {}, 1.0), (1, 2.0, 0, 1, big), (1, 3.0, 0, 0, b"small")]
    buffers = _pipe.encode(items)
    assert any(b is big for b in buffers)  # handed to writev as it is, not copied
    assert _roundTrip(items) == items


def test_something_marshal_cannot_carry_is_refused_at_encoding():
    with pytest.raises(ValueError):
        _pipe.encode([("event", 1, "a", {"when": object()}, 1.0)])


@pytest.mark.parametrize("cut", [1, _pipe.HEADER.size + 2])
def test_a_cut_message_is_an_error(cut):
    wire = b"".join(bytes(b) for b in _pipe.encode([("stop",)]))
    with pytest.raises(_pipe.PipeError, match="cut short"):
        list(_pipe.readMessages(io.BufferedReader(io.BytesIO(wire[:cut]))))



class _Trickle(io.RawIOBase):
    """A pipe that hands out at most the next of C{sizes} bytes per read, as a busy pipe does."""

    def __init__(self, wire: bytes, sizes: list):
        self.wire, self.at, self.sizes = wire, 0, sizes or [1]

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.sizes[self.at % len(self.sizes)], len(self.wire) - self.at)
        buf[:n] = self.wire[self.at : self.at + n]
        self.at += n
        return n


@given(st.lists(st.one_of(frames, others), max_size=12), st.lists(st.integers(1, 70_000), max_size=5),
       st.integers(0, 3))
def test_the_writer_gets_every_message_however_the_pipe_splits_them(items, sizes, split):
    wire = b"".join(bytes(b) for b in _pipe.encode(items))
    source = io.BufferedReader(_Trickle(wire, sizes), 1 << 16)
    out = []
    # The writer takes one message (the resume handles), then goes on with a new reader of the same file.
    for message in _pipe.readMessages(source):
        out.extend(message)
        if len(out) >= split:
            break
    for message in _pipe.readMessages(source):
        out.extend(message)
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in item) for item in out] == items


@pytest.mark.parametrize("cut", [1, _pipe.HEADER.size + 2, _pipe.HEADER.size + _pipe.RAW_FRAME.size + 5])
def test_a_raw_frame_cut_short_is_an_error(cut):
    wire = b"".join(bytes(b) for b in _pipe.encode([(1, 2.0, 0, 1, b"y" * _pipe.RAW_MIN)]))
    with pytest.raises(_pipe.PipeError, match="cut short"):
        list(_pipe.readMessages(io.BufferedReader(_Trickle(wire[:cut], [7000]))))


@given(st.lists(st.one_of(frames, others), max_size=12))
def test_without_a_big_frame_queued_the_sender_ships_one_marshalled_list(items):
    buffers = _pipe.encode(items, raw=False)
    assert len(buffers) == (2 if items else 0)  # no look for raw frames: one header, one body
    assert _roundTrip(items, raw=False) == items  # a big frame counted late still arrives, marshal'd
