"""Any bytes a logged-in postgres client sends: relayed, or an 08P01 FATAL; never an exception out of the relay."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sealgate.protocols.postgres import _wire as w
from tests.test_pg_relay import relay

_TYPES = sorted(w.FRONTEND_TYPES)


def _tagged(typ: bytes, body: bytes) -> bytes:
    return typ + (len(body) + 4).to_bytes(4, "big") + body


_message = st.one_of(
    st.builds(_tagged, st.sampled_from(_TYPES), st.binary(max_size=24)),  # framed right, any body
    st.builds(lambda m: m.encode(), st.sampled_from([w.Sync(), w.Query("select 1"), w.Flush()])),
    st.binary(min_size=1, max_size=12),  # not framed at all
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_message, min_size=1, max_size=6), st.integers(1, 7))
def test_any_client_bytes_are_relayed_or_end_the_session_with_08P01(messages, chunk):
    leg, client, backend, s = relay()
    data = b"".join(messages)
    for at in range(0, len(data), chunk):
        leg.dataReceived(data[at : at + chunk])  # must not raise, however the bytes are split
    if client.disconnecting:
        r = w.Reader(frontend=False)
        r.receive_data(client.value())
        last = None
        while (f := r.next_event()) is not w.NEED_DATA:
            last = w.decodeFrame(f, False)
        assert isinstance(last, w.ErrorResponse) and last.get("C") in ("08P01",), last
        assert s.recording.bytesTo().endswith(last.encode())  # the refusal is recorded too
