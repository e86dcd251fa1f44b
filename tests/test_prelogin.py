"""The pre-login guard and the login throttle without a reactor: caps, timeout, byte cap, backoff, aggregation."""

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sealgate.config import Limits
from sealgate.interfaces import IPreLoginClient
from sealgate.prelogin import (
    BUSY,
    SOURCE_BUSY,
    TIMEOUT,
    TOO_LARGE,
    OncePer,
    PreLoginGuard,
    httpRefusal,
)
from sealgate.throttle import LoginThrottle, sourceOfClient


@implementer(IPreLoginClient)
class Client:
    def __init__(self):
        self.refused: list[tuple[str, str]] = []

    def refuseLogin(self, kind, message):
        self.refused.append((kind, message))


class Transport(StringTransport):
    aborted = False

    def abortConnection(self):
        self.aborted = True


def transport(host="192.0.2.1"):
    return Transport(peerAddress=IPv4Address("TCP", host, 40000))


def guard(**kw):
    clock = MemoryReactorClock()
    return PreLoginGuard(Limits(**kw), clock), clock


def test_every_built_in_listener_provides_the_hook():
    from sealgate.admin.api import _AdminChannel
    from sealgate.protocols.http._relay import ClientConnection
    from sealgate.protocols.postgres._client import ClientLeg
    from sealgate.protocols.ssh.server import ServerTransport
    from sealgate.testing import fakeGateway

    factory = attrs.make_class("Factory", {"gateway": attrs.field(), "lenient": attrs.field(default=False)})(
        fakeGateway())
    for client in (Client(), ClientLeg(factory), ServerTransport(), ClientConnection(factory),
                   _AdminChannel()):
        assert verifyObject(IPreLoginClient, client)


def test_a_silent_client_is_refused_at_the_login_timeout_and_its_socket_cut_later():
    g, clock = guard(login_timeout=10.0)
    c, t = Client(), transport()
    ticket = g.admit("db", t, c)
    clock.advance(9.9)
    assert c.refused == [] and g.pending == 1
    clock.advance(0.2)
    assert c.refused == [(TIMEOUT, "no login within 10s")] and g.pending == 0
    assert g.perSource == {}
    clock.advance(5)
    assert t.aborted  # it never read its error: the socket does not stay
    ticket.connectionLost()


def test_a_login_in_time_stops_the_timer_and_frees_the_slot():
    g, clock = guard(login_timeout=1.0)
    c = Client()
    ticket = g.admit("db", transport(), c)
    ticket.authenticated()
    clock.advance(100)
    assert c.refused == [] and g.pending == 0 and not clock.getDelayedCalls()
    assert ticket.dataReceived(10 << 20)  # no byte cap after login


def test_more_bytes_than_the_allowance_before_login_are_refused():
    g, clock = guard(max_prelogin_bytes=4096)
    c = Client()
    ticket = g.admit("db", transport(), c)
    assert ticket.dataReceived(4000)
    assert not ticket.dataReceived(100)
    assert c.refused[0][0] == TOO_LARGE and "4096 bytes" in c.refused[0][1]
    assert not ticket.dataReceived(1)  # later data of a refused client is dropped
    assert g.pending == 0


def test_caps_per_source_and_in_total_refuse_at_once_and_free_on_close():
    g, clock = guard(max_unauthenticated=3, max_unauthenticated_per_source=2)
    a1, a2 = g.admit("db", transport("192.0.2.1"), Client()), g.admit("db", transport("192.0.2.1"), Client())
    third = Client()
    g.admit("db", transport("192.0.2.1"), third)
    assert [k for k, _ in third.refused] == [SOURCE_BUSY]
    g.admit("db", transport("192.0.2.2"), Client())
    fourth = Client()
    g.admit("db", transport("192.0.2.3"), fourth)
    assert [k for k, _ in fourth.refused] == [BUSY]
    a1.connectionLost()
    again = Client()
    g.admit("db", transport("192.0.2.1"), again)
    assert again.refused == []
    a2.authenticated()
    assert g.pending == 2 and g.perSource == {"192.0.2.1": 1, "192.0.2.2": 1}


def test_refusals_are_logged_once_per_source_per_interval(logs):
    g, clock = guard(max_unauthenticated_per_source=1, refusal_log_interval=60.0,
                     login_timeout=1000.0)
    g.admit("db", transport(), Client())
    for _ in range(500):
        g.admit("db", transport(), Client())
    lines = [line for line in logs if "Refused a login" in line]
    assert len(lines) == 1 and "192.0.2.1" in lines[0]
    clock.advance(61)
    g.admit("db", transport(), Client())
    lines = [line for line in logs if "Refused a login" in line]
    assert len(lines) == 2 and "499 more like it" in lines[1]
    assert g.refusals == {SOURCE_BUSY: 501}


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 100)), max_size=60))
def test_once_per_lets_one_through_per_key_and_interval_and_counts_the_rest(events):
    now = [0.0]
    once = OncePer(10.0, lambda: now[0])
    through: dict[str, list[float]] = {}
    held = 0
    for key, step in events:
        now[0] += step
        r = once.note(key)
        if r is None:
            held += 1
        else:
            times = through.setdefault(key, [])
            assert not times or now[0] - times[-1] >= 10.0
            times.append(now[0])
            held -= r
    assert held >= 0


def test_an_http_refusal_is_a_whole_problem_response():
    raw = httpRefusal(TIMEOUT, "no login within 10s")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in head
    assert b"application/problem+json" in head and b"Content-Length: %d" % len(body) in head
    assert b'"detail": "no login within 10s"' in body
    assert httpRefusal(SOURCE_BUSY, "x").startswith(b"HTTP/1.1 429 ")
    assert httpRefusal(BUSY, "x").startswith(b"HTTP/1.1 503 ")


# -- the throttle ------------------------------------------------------------------------


@attrs.define
class Store:
    events: list = attrs.field(factory=list)

    def auditEvent(self, event):
        self.events.append(dict(event))


def throttle(**kw):
    clock = MemoryReactorClock()
    store = Store()
    kw.setdefault("login_backoff_base", 0.5)
    kw.setdefault("login_backoff_max", 4.0)
    return LoginThrottle(Limits(**kw), clock, store), clock, store


def fired(d):
    out = []
    d.addCallback(out.append)
    return bool(out)


def test_the_source_is_the_address_without_the_port_and_ipv6_counts_by_its_64():
    assert sourceOfClient("192.0.2.1:5432") == "192.0.2.1"
    assert sourceOfClient("::1:5432") == "::/64"
    assert sourceOfClient("[2001:db8:1:2::7]:22") == "2001:db8:1:2::/64"
    assert sourceOfClient("::ffff:192.0.2.9:22") == "192.0.2.9"
    assert sourceOfClient("unix") == "unix"


def test_addresses_of_one_ipv6_64_share_the_per_source_cap():
    g, clock = guard(max_unauthenticated_per_source=2)
    for n in (1, 2):
        g.admit("db", Transport(peerAddress=IPv6Address("TCP", f"2001:db8::{n}", 1)), Client())
    third = Client()
    g.admit("db", Transport(peerAddress=IPv6Address("TCP", "2001:db8::ffff:3", 1)), third)
    assert [k for k, _ in third.refused] == [SOURCE_BUSY]
    other = Client()
    g.admit("db", Transport(peerAddress=IPv6Address("TCP", "2001:db8:0:1::1", 1)), other)
    assert other.refused == []


def test_backoff_doubles_per_failure_up_to_the_cap_and_spaces_parallel_attempts():
    t, clock, _ = throttle()
    assert fired(t.wait("192.0.2.1", ["ci"]))
    for _ in range(3):
        t.failed("192.0.2.1", ["ci"], {"kind": "login_failed"})
    # After 3 failures: 0.5 * 2^2 = 2s.  Two attempts at once: the second one backoff later.
    first, second = t.wait("192.0.2.1", []), t.wait("192.0.2.1", [])
    clock.advance(1.9)
    assert not fired(first)
    clock.advance(0.2)
    assert fired(first) and not fired(second)
    clock.advance(2.0)
    assert fired(second)
    for _ in range(10):
        t.failed("192.0.2.1", [], {})
    assert t.delay(13) == 4.0


def test_backoff_follows_a_claimed_identity_across_sources_and_ends_on_success():
    t, clock, _ = throttle()
    for n in range(4):
        t.failed(f"192.0.2.{n}", ["alice"], {})
    d = t.wait("198.51.100.7", ["alice"])
    assert not fired(d)
    clock.advance(4.0)
    assert fired(d)
    t.succeeded(["alice"])
    assert fired(t.wait("198.51.100.8", ["alice"]))


def test_failures_are_forgotten_after_a_quiet_interval():
    t, clock, _ = throttle(failed_login_interval=60.0)
    for _ in range(5):
        t.failed("192.0.2.1", [], {})
    clock.advance(61)
    assert fired(t.wait("192.0.2.1", []))


def test_a_thousand_failures_from_one_source_seal_one_event_per_interval_with_a_count():
    t, clock, store = throttle(failed_login_interval=60.0)
    for n in range(1000):
        t.failed("192.0.2.1", [f"user{n % 3}"], {"kind": "login_failed", "connection": "db",
                                                  "protocol": "postgres", "claimed": f"user{n % 3}",
                                                  "reason": "unknown API key"})
    assert len(store.events) == 1 and store.events[0]["count"] == 1
    clock.advance(60)
    assert len(store.events) == 2
    agg = store.events[1]
    assert agg["aggregated"] and agg["count"] == 999 and agg["source"] == "192.0.2.1"
    assert agg["claimed"] == {"user0": 333, "user1": 333, "user2": 333}
    assert agg["reasons"] == {"unknown API key": 999}
    # Still failing: the window stays open and the next ones fold in too.
    t.failed("192.0.2.1", [], {"kind": "login_failed", "reason": "x"})
    assert len(store.events) == 2
    clock.advance(60)
    assert len(store.events) == 3 and store.events[2]["count"] == 1
    clock.advance(60)  # a quiet interval: forgotten; the next one is sealed as it is
    t.failed("192.0.2.1", [], {"kind": "login_failed", "reason": "y"})
    assert len(store.events) == 4 and store.events[3]["count"] == 1


def test_stop_seals_what_is_pending_and_many_claims_are_listed_bounded():
    t, clock, store = throttle()
    for n in range(50):
        t.failed("192.0.2.1", [], {"kind": "login_failed", "claimed": f"u{n}", "reason": "bad"})
    t.stop()
    assert len(store.events) == 2 and store.events[1]["count"] == 49
    assert len(store.events[1]["claimed"]) == 11 and store.events[1]["claimed"]["(others)"] == 39
    assert not clock.getDelayedCalls()


def test_every_limit_is_documented_with_its_key_and_in_the_sample_config():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "operations.md").read_text()
    sample = (root / "config" / "sealgate.toml").read_text()
    defaults = Limits()
    for field in attrs.fields(Limits):
        value = getattr(defaults, field.name)
        shown = f"{value:g}s" if isinstance(value, float) else str(value)
        assert f"| `{field.name}` | `{shown}` |" in docs, field.name
        written = f'"{shown}"' if isinstance(value, float) else shown
        assert f"\n{field.name} = {written}\n" in sample, field.name


@given(st.lists(st.tuples(st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.3"]),
                          st.floats(0, 30)), max_size=200))
def test_every_failure_is_counted_once_in_a_bounded_number_of_sealed_events(failures):
    t, clock, store = throttle(failed_login_interval=60.0)
    for source, wait in failures:
        clock.advance(wait)
        t.failed(source, ["x"], {"kind": "login_failed", "reason": "bad"})
        assert t.delay(t._backoff[("source", source)].failures) <= t.limits.login_backoff_max
    t.stop()
    assert sum(e["count"] for e in store.events) == len(failures)
    intervals = clock.seconds() / 60.0 + 1
    # Per source: one event as it happens and one aggregate per interval at most.
    assert len(store.events) <= 3 * (2 * intervals + 1)
