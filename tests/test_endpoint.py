"""Endpoint strings read back the way Twisted reads them: host and port, loopback-only listeners."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import endpoints

from sealgate.endpoint import hostPort, listensOnLoopbackOnly, split


def test_keyword_and_positional_client_endpoints_give_host_and_port():
    assert hostPort("tcp:host=db.internal:port=5432") == ("db.internal", 5432)
    assert hostPort("tcp:db.internal:5432") == ("db.internal", 5432)
    assert hostPort(r"tcp:host=\:\:1:port=5432") == ("::1", 5432)
    assert hostPort("tls:host=h:port=443:trustRoots=/etc/ca") == ("h", 443)
    assert hostPort("unix:path=/tmp/s", 80) == ("", 80)


def test_loopback_only_listeners():
    assert listensOnLoopbackOnly("tcp:6432:interface=127.0.0.1")
    assert listensOnLoopbackOnly(r"tcp6:0:interface=\:\:1")
    assert listensOnLoopbackOnly("unix:/run/sealgate.sock")
    assert not listensOnLoopbackOnly("tcp:6432")
    assert not listensOnLoopbackOnly("tcp:6432:interface=0.0.0.0")


_NAME = st.text(st.sampled_from("abcdefgh:.\\-"), min_size=1, max_size=12).filter(
    lambda s: not s.endswith("\\"))


@given(_NAME, st.integers(1, 65535))
def test_what_twisted_would_connect_to_is_what_we_read(host, port):
    escaped = host.replace("\\", "\\\\").replace(":", "\\:")
    description = f"tcp:host={escaped}:port={port}"
    parsed = endpoints.clientFromString(None, description)
    assert hostPort(description) == (parsed._host, port)
    assert split(description)[0] == "tcp"
