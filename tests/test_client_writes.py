"""No byte reaches a client transport outside the core's output step: every direct write in the protocol packages is named here, with why."""

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "sealgate" / "protocols"
OOT = Path(__file__).parent / "plugins_oot"

#: Files whose writes go to a client (or may): every write in them is
#: checked.  Backend-only legs (postgres/_backend.py, ssh/backend.py) write
#: only to the backend and are left out.
CLIENT_SIDE = [
    SRC / "postgres" / "_client.py",
    SRC / "postgres" / "_relay.py",
    *sorted((SRC / "ssh").glob("*.py")),
    *sorted((SRC / "http").glob("*.py")),
    *sorted(OOT.rglob("*.py")),
]
CLIENT_SIDE = [p for p in CLIENT_SIDE if p.name != "backend.py"]

WRITES = {"write", "writeNow", "writeSequence", "writeExtended", "sendLine", "sendRequest",
          "sendPacket", "sendData", "sendExtendedData", "sendDisconnect"}

#: Receivers that are the backend leg, or a file an exporter writes.
NOT_A_CLIENT = ("peer", "self.peer", "self.backend", "self.backend.transport",
                "peer.conn", "out", "self.out", "f")

#: (file, function, call) -> why it is not a way around the output step.
ALLOWED = {
    ("ssh/relay.py", "FlowConnection._opened", "self.transport.sendPacket"):
        "channel-open confirmation: connection-layer, no session data",
    ("ssh/relay.py", "FlowConnection._openFailed", "self.transport.sendPacket"):
        "channel-open failure: connection-layer, no session data",
    ("ssh/relay.py", "RelayChannel.sendRequestAfterData", "self.conn.sendRequest"):
        "sends a request whose control record already passed session.emit",
    ("ssh/terminal.py", "Stderr.write", "self.channel.writeExtended"):
        "the stderr transport that session.send writes to",
    ("ssh/server.py", "Realm.requestAvatar", "ctx.transport.sendDisconnect"):
        "session.abort: the session's end in SSH's words, sealed as its close reason",
    ("ssh/server.py", "ServerTransport.dispatchMessage", "self.sendDisconnect"):
        "a malformed transport message: a protocol-error disconnect, no session data",
    ("ssh/server.py", "ServerTransport.refuseLogin", "self.sendDisconnect"):
        "the pre-login guard's refusal (login timeout, caps), before any session exists",
    ("ssh/server.py", "UserAuthServer.banner", "self.transport.sendPacket"):
        "login, before any session exists",
    ("ssh/server.py", "UserAuthServer.auth_keyboard_interactive", "self.transport.sendPacket"):
        "login, before any session exists",
    ("http/_backend.py", "Exchange._send", "writeNow(transport)"):
        "the request to the backend connection (conn.transport), never the client",
    ("http/_backend.py", "Exchange._send", "transport.write"):
        "the request head to the backend connection before its streamed body",
    ("http/_upgrade.py", "Relay.backendUp", "transport.write"):
        "the upgrade request to the backend connection",
    ("http/_relay.py", "ClientConnection._bodyData", "spool.write"):
        "a request body into its spool file",
    ("http/_relay.py", "ClientConnection.send", "writeNow(self.transport)"):
        "HTTP's one send: a head whose secret header values (Set-Cookie) went through "
        "session.emit redacted; the client gets them, the recording and hooks do not",
}


def _calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))

    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield from walk(child, scope + [child.name])
                continue
            if isinstance(child, ast.Call):
                f = child.func
                if isinstance(f, ast.Attribute) and f.attr in WRITES:
                    receiver = ast.unparse(f.value)
                    if receiver not in NOT_A_CLIENT:
                        yield ".".join(scope), f"{receiver}.{f.attr}"
                elif isinstance(f, ast.Name) and f.id in WRITES:
                    target = ast.unparse(child.args[0]) if child.args else ""
                    if target not in NOT_A_CLIENT:
                        yield ".".join(scope), f"{f.id}({target})"
            yield from walk(child, scope)

    yield from walk(tree, [])


def test_every_direct_write_in_client_side_code_is_accounted_for():
    found = {}
    for path in CLIENT_SIDE:
        rel = (str(path.relative_to(SRC)) if path.is_relative_to(SRC)
               else "plugins_oot/" + str(path.relative_to(OOT)))
        for scope, call in _calls(path):
            found[(rel, scope, call)] = True
    unexplained = sorted(set(found) - set(ALLOWED))
    assert unexplained == [], "write to a client outside session.send/emit"
    assert sorted(set(ALLOWED) - set(found)) == [], "stale entry in ALLOWED"
