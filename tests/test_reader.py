"""The store's read interface: sessions from their sealed leaves, queries, proofs, and no SQL elsewhere."""

import ast
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from sealgate.interfaces import IExportFormat, IProtocolPlugin, IRecordedSession, IRecordingReader
from sealgate.recording import merkle
from sealgate.recording._engine import Engine, SessionState, dbPath
from sealgate.recording.reader import StoreReader
from sealgate.recording.records import SessionQuery, parseTime

ORIGIN = "sealgate/reader"
SRC = Path(__file__).resolve().parents[1] / "src" / "sealgate"


def _identity(name):
    return {"subject": name, "groups": ["eng"], "method": "apikey", "issuer": None}


def _session(engine, sid, t, who, connection, protocol, commands, close=True, cutoff=False):
    s = SessionState(sid)
    items = [("open", s, {"identity": _identity(who), "connection": connection, "protocol": protocol,
                          "client": "127.0.0.1:5000"}, None, None, False, t)]
    items += [(s, t + 0.1, 0, 0, b"in;"), (s, t + 0.2, 0, 1, b"out!!")]
    items += [("event", s, "command", {"kind": "sql", "command": c, "verdict": "allow"}, None, False, t + 0.3)
              for c in commands]
    if close:
        items.append(("close", s, "client closed", {}, None, cutoff, t + 1))
    engine.apply(items, now=t + 1)
    return s


@pytest.fixture
def store(tmp_path):
    e = Engine(tmp_path, ORIGIN)
    e.open()
    _session(e, "a1", 1000.0, "alice", "db", "postgres", ["SELECT * FROM customers"])
    _session(e, "b1", 2000.0, "bob", "web", "http", ["GET /admin"], cutoff=True)
    _session(e, "a2", 3000.0, "alice", "shell", "ssh", ["uptime"], close=False)
    e.apply([], now=3005.0)  # a checkpoint, and a PROGRESS for the open one
    e.close()
    return tmp_path


def test_reader_and_recorded_sessions_provide_the_interfaces(store):
    with StoreReader(store) as r:
        assert verifyObject(IRecordingReader, r)
        assert verifyObject(IRecordedSession, r.recorded("a1"))
        assert r.recorded("nope") is None and r.sessionRecord("nope") is None


def test_every_builtin_protocol_declares_valid_export_formats():
    from sealgate.plugins import protocolPlugins

    plugins = protocolPlugins()
    want = {"postgres": {"transcript"}, "ssh": {"asciicast", "transcript"}, "http": {"har", "transcript"}}
    for name, formats in want.items():
        plugin = plugins[name]
        assert verifyObject(IProtocolPlugin, plugin._load())
        declared = {f.name: f for f in plugin.exportFormats}
        assert set(declared) == formats, name
        for f in declared.values():
            assert verifyObject(IExportFormat, f)
            assert callable(getattr(__import__(f.writer.split(":")[0], fromlist=["x"]), f.writer.split(":")[1]))


def test_sessions_are_described_by_their_sealed_leaves(store):
    with StoreReader(store) as r:
        rows = {s.id: s for s in r.findSessions()}
    assert [s for s in rows] == ["a2", "b1", "a1"]  # newest first
    a1, b1, a2 = rows["a1"], rows["b1"], rows["a2"]
    assert (a1.state, a1.identity, a1.connection, a1.protocol, a1.client) == (
        "closed", "alice", "db", "postgres", "127.0.0.1:5000")
    assert (a1.opened, a1.closed, a1.frames, a1.bytesFromClient, a1.bytesToClient, a1.reason) == (
        1000.0, 1001.0, 2, 3, 5, "client closed")
    assert b1.state == "cut off" and a2.state == "open" and a2.closed is None and a2.root is None
    assert a2.frames == 2 and a2.bytesToClient == 5  # from its PROGRESS leaf
    assert len(a1.root) == 64


def test_an_edited_session_table_changes_nothing_the_reader_shows(store):
    with StoreReader(store) as r:
        before = [s.asJSON() for s in r.findSessions()]
    db = sqlite3.connect(dbPath(store))
    with db:
        db.execute("UPDATE sessions SET info = '{\"identity\": {\"subject\": \"mallory\"}, "
                   "\"connection\": \"other\", \"protocol\": \"line\"}', protocol = 'line', opened = 1, "
                   "closed = NULL, cutoff = 0, bytes_to_client = 999, size = 77, reason = 'forged'")
        db.execute("DELETE FROM sessions WHERE id = 'a1'")
    db.close()
    with StoreReader(store) as r:
        after = [s.asJSON() for s in r.findSessions()]
        assert [s.id for s in r.findSessions(SessionQuery(identity="mallory"))] == []
        assert r.sessionRecord("a1").identity == "alice"
        assert r.sessions()[0]["reason"] == "forged"  # the table itself did change: verify's business
    assert after == before


@pytest.mark.parametrize("query, want", [
    (SessionQuery(identity="ALI"), ["a2", "a1"]),
    (SessionQuery(identity="ali", protocol="ssh"), ["a2"]),
    (SessionQuery(connection="web"), ["b1"]),
    (SessionQuery(connection="we"), []),
    (SessionQuery(client="127.0.0.1:5000"), ["a2", "b1", "a1"]),
    (SessionQuery(state="open"), ["a2"]),
    (SessionQuery(state="closed"), ["a1"]),
    (SessionQuery(state="cut off"), ["b1"]),
    (SessionQuery(since=2000.0), ["a2", "b1"]),
    (SessionQuery(until=2000.0), ["a1"]),
    (SessionQuery(since=1500.0, until=2500.0), ["b1"]),
    (SessionQuery(command="from CUSTOMERS"), ["a1"]),
    (SessionQuery(command="drop"), []),
    (SessionQuery(ids=frozenset({"a1", "zz"})), ["a1"]),
    (SessionQuery(limit=2), ["a2", "b1"]),
    (SessionQuery(identity="' OR 1=1 --"), []),
])
def test_session_queries_filter_on_sealed_facts(store, query, want):
    with StoreReader(store) as r:
        assert [s.id for s in r.findSessions(query)] == want


def test_a_query_names_a_bad_state():
    with pytest.raises(ValueError, match="state must be one of open, closed, cut off"):
        SessionQuery(state="live")


def test_times_parse_as_iso_8601_or_unix_and_a_bare_time_is_utc():
    assert parseTime("1700000000.5") == 1700000000.5
    assert parseTime("2026-12-02T09:00:00Z") == parseTime("2026-12-02T10:00:00+01:00") == 1796202000.0
    assert parseTime("2026-12-02T09:00:00") == 1796202000.0
    with pytest.raises(ValueError, match="neither ISO 8601"):
        parseTime("yesterday")


def test_proofs_from_the_reader_check_against_the_signed_checkpoint(store):
    with StoreReader(store) as r:
        size = r.latestCheckpoint()[0]
        assert size == r.logSize()
        leaves = list(r.logLeaves(2, 4))
        assert [n for n, *_ in leaves] == [2, 3]
        p = r.inclusionProof(3)
        merkle.verifyInclusion(3, size, p["leaf_hash"], p["proof"], p["root"])
        c = r.consistencyProof(2, size)
        merkle.verifyConsistency(2, size, c["first_root"], c["second_root"], c["proof"])
        with pytest.raises(ValueError, match="outside a tree"):
            r.inclusionProof(size)
        with pytest.raises(ValueError, match="only"):
            r.consistencyProof(1, size + 5)


def _sqlUsers():
    """Modules outside recording/ that import sqlite3 or run SQL against the store's tables."""
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(("recording/", "identity/", "witness/", "fleet/")) or rel == "fleetdb.py":
            # The store itself; identity keeps its own key tables and fleet/ the
            # fleet's shared control state (tickets, keys, logins, leases: its
            # own tables, never the store's); a witness is a separate service
            # with a store of its own.
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "sqlite3" in names:
                    found.append(f"{rel}: imports sqlite3")
            elif (isinstance(node, ast.Attribute) and node.attr == "db"
                  and not (isinstance(node.value, ast.Attribute) and node.value.attr == "fleet")):
                # (a fleet's control database, self.fleet.db, is not the store's)
                found.append(f"{rel}:{node.lineno}: reaches a reader's database")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.upper()
                if any(k in text for k in ("FROM LOG", "FROM SESSIONS", "FROM CHUNKS", "FROM CHECKPOINTS",
                                           "JSON_EXTRACT(")):
                    found.append(f"{rel}:{node.lineno}: SQL over the store")
    return found


def test_no_sql_outside_the_store():
    assert _sqlUsers() == []


def test_admin_sessions_imports_neither_the_cli_nor_a_protocol_package():
    tree = ast.parse((SRC / "admin" / "sessions.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m.startswith(("sealgate.cli", "sealgate.protocols"))]


@given(st.text(max_size=30), st.text(max_size=6))
def test_the_command_prefilter_never_hides_a_match(text, needle):
    from sealgate.recording import _format as fmt
    from sealgate.recording.records import leafMayMatch

    leaf = fmt.logLeaf({"n": 0, "prev": "", "type": "event", "session": "s", "event": "command",
                        "fields": {"command": text}})
    if needle.lower() in text.lower():
        assert leafMayMatch(leaf, needle)
    elif needle.isalnum() and needle.isascii() and text.isascii():
        around = fmt.logLeaf({"n": 0, "prev": "", "type": "event", "session": "s", "event": "command",
                              "fields": {"command": ""}}).lower()
        if needle.lower().encode() not in around:
            assert not leafMayMatch(leaf, needle)  # it does skip: a leaf without the text is not parsed
