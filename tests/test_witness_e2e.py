"""A gateway under twistd with two witness processes: cosigned checkpoints, a witness down, a log cut back."""

import json
import os
import re
import shutil
import signal
import urllib.request

from sealgate.recording.bundle import readBundle
from sealgate.recording.checkpoint import Signer
from sealgate.recording.cosignature import Cosigner, cosignatures
from sealgate.recording.cosigned import witnessedNote
from sealgate.recording.reader import StoreReader
from sealgate.witness.store import WitnessStore
from tests.harness.siem import waitFor
from tests.harness.twistd import GatewayProcess, runCLI
from tests.harness.witness import WitnessProcess
from tests.test_events import _session
from tests.test_plugin_api import CONFIG, PLUGIN_DIR, echoBackend  # noqa: F401

ORIGIN = "sealgate/node1"


def _latest(state):
    with StoreReader(state) as r:
        size, _, note = r.latestCheckpoint()
    return size, witnessedNote(state, size, note)


def _cosigners(state, witnesses) -> set[str]:
    _, note = _latest(state)
    return {c.name for c in cosignatures(note, [w.cosigner.verifier for w in witnesses])}


def _witnessSize(w) -> int:
    store = WitnessStore(w.directory / "state" / "witness.sqlite")
    try:
        latest = store.latest(ORIGIN)
        return latest[0] if latest else 0
    finally:
        store.close()


def _settled(state, sessions: int) -> bool:
    """C{sessions} sessions are closed in the store and its latest checkpoint covers the whole log."""
    with StoreReader(state) as r:
        found = r.findSessions()
        return (len(found) == sessions and all(s.state == "closed" for s in found)
                and r.latestCheckpoint()[0] == r.logSize())


def _get(gw, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.adminPort}{path}", timeout=30) as r:
        body = r.read().decode()
    return json.loads(body) if path != "/metrics" else body


def _metric(gw, name: str, witness: str) -> float:
    m = re.search(rf'^{name}{{witness="{re.escape(witness)}"}} (\S+)$', _get(gw, "/metrics"), re.M)
    return float(m.group(1)) if m else -1.0


def witnessedGateway(tmp_path, echoBackend):  # noqa: F811
    """
    C{(state dir, node signer, two started witnesses, gateway not yet started, API key of group eng)}:
    witness_quorum = 2, the node's key made first, as an operator would pin it in the witnesses' config.
    """
    state = tmp_path / "gw" / "state"
    state.mkdir(parents=True, mode=0o700)
    signer = Signer.generate(ORIGIN)
    fd = os.open(state / "signing.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (signer.skey() + "\n").encode())
    os.close(fd)
    logs = {ORIGIN: signer.verifier.vkey()}
    ws = [WitnessProcess(tmp_path / f"w{i}", f"witness.test/w{i}", logs).start() for i in (1, 2)]
    entries = "".join(f'\n[[witnesses]]\nurl = "{w.url}"\nvkey = "{w.vkey}"\nbackoff = "0.1s"\n'
                      f'max_backoff = "0.5s"\n' for w in ws)
    config = CONFIG.replace("{backend}", str(echoBackend)).replace(
        'state_dir = "state"', 'state_dir = "state"\nnode = "node1"\nwitness_quorum = 2') + entries + \
        '\n[admin]\nauditors = ["eng"]\n'
    gw = GatewayProcess(tmp_path / "gw", config, [PLUGIN_DIR])
    key = gw.cli("keys", "create", "--name", "ci", "--group", "eng").stdout.splitlines()[-1]
    return state, signer, ws, gw, key


def test_two_witnesses_cosign_survive_an_outage_and_refuse_a_log_cut_back(tmp_path, echoBackend):  # noqa: F811
    state, signer, ws, gw, key = witnessedGateway(tmp_path, echoBackend)
    names = {"witness.test/w1", "witness.test/w2"}
    gw.start()
    try:
        _session(gw, key, ["hello"])
        waitFor(lambda: _cosigners(state, ws) == names, what="both cosignatures on the latest checkpoint")
        # A witness goes down: sessions go on, the other keeps cosigning, the lag shows.
        ws[1].stop()
        before = _witnessSize(ws[1])
        _session(gw, key, ["while w2 is down"])
        waitFor(lambda: _latest(state)[0] > before and _cosigners(state, ws) == {"witness.test/w1"},
                what="w1 to cosign alone")
        waitFor(lambda: "Witness witness.test/w2:" in gw.log(), what="the gateway to report w2's failure")
        # Still ready (sessions go on); the lag of w2 and of the quorum shows in readiness and metrics.
        waitFor(lambda: _metric(gw, "sealgate_witness_lag_leaves", "witness.test/w2") > 0
                and _metric(gw, "sealgate_witness_lag_leaves", "quorum") > 0, what="the lag in the metrics")
        ready = _get(gw, "/readyz")
        assert ready["status"] == "ready" and ready["witnessing"]["lag_leaves"] > 0
        assert ready["witnessing"]["witnessed_size"] < ready["witnessing"]["checkpoint_size"]
        ws[1].start()
        waitFor(lambda: _cosigners(state, ws) == names, what="w2 to catch up after its restart")
        waitFor(lambda: _witnessSize(ws[1]) == _latest(state)[0], what="w2's own record to catch up")
        waitFor(lambda: _metric(gw, "sealgate_witness_lag_leaves", "quorum") == 0, what="the quorum lag to clear")
        assert _metric(gw, "sealgate_witness_size", "quorum") == _latest(state)[0]
    finally:
        gw.stop(signal.SIGTERM)
    cosignedSize = _witnessSize(ws[0])
    snapshot = tmp_path / "snapshot"
    shutil.copytree(state, snapshot)
    gw.start()
    try:
        _session(gw, key, ["more history", "and more"])
        waitFor(lambda: _cosigners(state, ws) == names and _witnessSize(ws[0]) > cosignedSize,
                what="the later history to be cosigned")
        # A monitor follows the gateway (with an auditor's token) and a witness, and keeps what it saw.
        both = ["--witness", ws[0].vkey, "--witness", ws[1].vkey]
        monitor = ["--key", signer.verifier.vkey(), *both, "--quorum", "2", "--state", str(tmp_path / "monitor.json")]
        r = runCLI("monitor", f"http://127.0.0.1:{gw.adminPort}", *monitor, token=key, check=False)
        assert r.returncode == 0 and r.stdout.startswith(f"sealgate monitor: OK {ORIGIN} at size"), r.stdout
        r = runCLI("monitor", ws[0].url, "--key", signer.verifier.vkey(), "--witness", ws[0].vkey,
                   "--state", str(tmp_path / "monitor-w1.json"), check=False)
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout
    finally:
        gw.stop(signal.SIGTERM)
    witnessed = [_witnessSize(w) for w in ws]
    # An auditor's copy of the published, cosigned checkpoint (what `monitor` or the log API hands out).
    audited = tmp_path / "audited.note"
    audited.write_text(_latest(state)[1])

    # The newest session's bundle carries a checkpoint both witnesses cosigned, verifiable offline.
    listed = json.loads(gw.cli("sessions", "list", "--json").stdout)
    sid = (listed if isinstance(listed, list) else listed["sessions"])[0]["id"]
    bundle = tmp_path / "s.bundle"
    gw.cli("export", sid, "--out", str(bundle))
    header, _ = readBundle(bundle.read_bytes())
    assert header["witnessed"] is True
    ok = runCLI("verify-bundle", str(bundle), "--key", signer.verifier.vkey(), *both, "--quorum", "2", check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stranger = Cosigner.generate("witness.test/w1").verifier.vkey()
    bad = runCLI("verify-bundle", str(bundle), "--key", signer.verifier.vkey(), "--witness", ws[0].vkey,
                 "--witness", stranger, "--quorum", "2", check=False)
    assert bad.returncode == 1 and "1 valid cosignature(s)" in bad.stdout and "the quorum is 2" in bad.stdout

    # The operator cuts the log back to the snapshot and goes on signing with the node's own key.
    shutil.rmtree(state)
    shutil.copytree(snapshot, state)
    mark = len(gw.log())
    gw.start()
    try:
        _session(gw, key, ["a rewritten history"])
        waitFor(lambda: gw.log()[mark:].count("cut back or forked") >= 2, what="both witnesses to refuse")
        assert _cosigners(state, ws) == set()
        # The monitor that saw the cosigned log names the cut-back with both checkpoints as evidence.
        r = runCLI("monitor", f"http://127.0.0.1:{gw.adminPort}", *monitor, token=key, check=False)
        assert r.returncode in (3, 4), r.stdout
        first = r.stdout.splitlines()[0]
        assert first.startswith((f"sealgate monitor: ROLLBACK {ORIGIN}", f"sealgate monitor: FORK {ORIGIN}")), first
        assert r.stdout.count(ORIGIN + "\n") >= 2 and audited.read_text().split("\n\n")[0] in r.stdout
    finally:
        gw.stop(signal.SIGTERM)
        for w in ws:
            w.stop()
    assert [_witnessSize(w) for w in ws] == witnessed  # neither witness was rolled back
    # The auditor holding the cosigned checkpoint: verify names the cut-back log.
    r = gw.cli("verify", "--key", signer.verifier.vkey(), *both, "--quorum", "2", "--checkpoint", str(audited),
               "--checkpoint-dir", "none", check=False)
    assert r.returncode == 1, r.stdout
    assert "the log is truncated" in r.stdout or "split view" in r.stdout, r.stdout
    assert key not in gw.log()


def test_a_fork_past_the_cosigned_size_is_refused_and_named_by_monitor_and_verify(tmp_path, echoBackend):  # noqa: F811
    """The operator restores an old store and signs a different, longer history: a fork, not a mere cut-back."""
    state, signer, ws, gw, key = witnessedGateway(tmp_path, echoBackend)
    names = {w.cosigner.verifier.name for w in ws}
    both = ["--witness", ws[0].vkey, "--witness", ws[1].vkey]
    monitor = ["--key", signer.verifier.vkey(), *both, "--quorum", "2", "--state", str(tmp_path / "monitor.json")]
    try:
        gw.start()
        _session(gw, key, ["the common past"])
        waitFor(lambda: _cosigners(state, ws) == names, what="both cosignatures")
        gw.stop(signal.SIGTERM)
        shutil.copytree(state, tmp_path / "snapshot")
        gw.start()
        _session(gw, key, ["the true history", "goes on"])
        waitFor(lambda: _settled(state, 2), what="the second session sealed")
        waitFor(lambda: _cosigners(state, ws) == names and all(_witnessSize(w) == _latest(state)[0] for w in ws),
                what="the true history cosigned by both")
        cosigned = _latest(state)[0]
        r = runCLI("monitor", f"http://127.0.0.1:{gw.adminPort}", *monitor, token=key, check=False)
        assert r.returncode == 0 and f"OK {ORIGIN} at size {cosigned}" in r.stdout, r.stdout
        gw.stop(signal.SIGTERM)
        audited = tmp_path / "audited.note"
        audited.write_text(_latest(state)[1])

        shutil.rmtree(state)
        shutil.copytree(tmp_path / "snapshot", state)
        mark = len(gw.log())
        gw.start()
        for n in range(1, 20):  # the restored store holds the first session
            waitFor(lambda: _settled(state, n), what=f"{n} sessions sealed")  # noqa: B023
            if _latest(state)[0] > cosigned:
                break
            _session(gw, key, [f"another history {n}"])
        forked = _latest(state)[0]
        assert forked > cosigned
        # Each witness holds the true root at `cosigned`: the forked log's proof from there cannot verify (422).
        waitFor(lambda: all(f"Witness {n}: the witness refused size" in gw.log()[mark:] for n in names),
                what="both witnesses to refuse the fork")
        assert "HTTP 422" in gw.log()[mark:] and _cosigners(state, ws) == set()
        r = runCLI("monitor", f"http://127.0.0.1:{gw.adminPort}", *monitor, token=key, check=False)
        assert r.returncode == 3, r.stdout
        first = r.stdout.splitlines()[0]
        assert first.startswith(f"sealgate monitor: FORK {ORIGIN}: size "), first
        assert f"does not extend size {cosigned}" in first or f"two roots for size {cosigned}" in first, first
        assert audited.read_text().split("\n\n")[0] in r.stdout and f"{ORIGIN}\n{forked}\n" in r.stdout
    finally:
        gw.stop(signal.SIGTERM)
        for w in ws:
            w.stop()
    assert [_witnessSize(w) for w in ws] == [cosigned, cosigned]  # neither witness followed the fork
    r = gw.cli("verify", "--key", signer.verifier.vkey(), *both, "--quorum", "2", "--checkpoint", str(audited),
               "--checkpoint-dir", "none", check=False)
    assert r.returncode == 1, r.stdout
    assert (f"does not match the signed checkpoint at size {cosigned}" in r.stdout
            or f"disagree about the log at size {cosigned}" in r.stdout), r.stdout
    assert key not in gw.log()
