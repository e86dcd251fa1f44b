"""A real ssh exec, recorded through the gateway, exports as a cast that plays like the terminal showed it."""

import json
import sys
from pathlib import Path

import pytest_twisted

from tests.test_ssh_e2e import _newClosedSession, _sessionIds, env  # noqa: F401 (env is a fixture)


@pytest_twisted.ensureDeferred
async def test_exec_output_exports_as_a_cast_without_a_staircase(env):  # noqa: F811
    from sealgate.cli.main import main

    before = _sessionIds(env)
    r = await env.ssh("printf 'one\\ntwo\\n'; printf 'err\\n' >&2")
    assert r.returncode == 0 and r.stdout == b"one\ntwo\n" and r.stderr == b"err\n"
    sessionId = await _newClosedSession(env, before)
    cast = env.tmp / "exec.cast"
    assert main(["export", sessionId, "--format", "asciicast", "--out", str(cast),
                 "--state-dir", str(env.gw.stateDir)]) == 0
    lines = cast.read_text().splitlines()
    assert json.loads(lines[0])["command"] == "printf 'one\\ntwo\\n'; printf 'err\\n' >&2"
    output = "".join(e[2] for e in map(json.loads, lines[1:]) if e[1] == "o")
    assert sorted(output.split("\r\n")) == ["", "err", "one", "two"]  # each line ends CR LF, none bare
    played = await env.run([str(Path(sys.executable).parent / "asciinema"), "cat", str(cast)])
    assert played.returncode == 0, played.stderr
    assert b"one\r\ntwo\r\n" in played.stdout
