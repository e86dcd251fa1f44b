"""The gateway's witness pumps alone, in their own process, following a store another process writes.

Run: python bench/_witnesspump.py STATE_DIR QUORUM URL=VKEY [URL=VKEY ...]
It runs sealgate.recording.witnessclient.Witnessing as the gateway does
(the reactor's thread pool for store reads, one pump per witness, a poll
each second), so bench/recording.py can time the store's writer with and
without witnessing on, in the process topology of a real gateway (the
store's writer is its own process; the pumps live in the gateway's).
SIGTERM stops it.
"""

import sys
from pathlib import Path

from twisted.internet import reactor

from sealgate.recording.cosignature import CosignatureVerifier
from sealgate.recording.witnessclient import Witnessing
from sealgate.recording.witnessconfig import WitnessEndpoint, WitnessPolicy


def main() -> None:
    stateDir, quorum = Path(sys.argv[1]), int(sys.argv[2])
    witnesses = []
    for arg in sys.argv[3:]:
        url, _, vkey = arg.partition("=")
        verifier = CosignatureVerifier.fromVkey(vkey)
        witnesses.append(WitnessEndpoint(verifier.name, url, verifier, backoff=0.1, max_backoff=0.5))
    witnessing = Witnessing(WitnessPolicy(tuple(witnesses), quorum), stateDir, reactor, reactor.getThreadPool())
    witnessing.startService()
    reactor.callWhenRunning(witnessing.startWitnessing)
    reactor.addSystemEventTrigger("before", "shutdown", witnessing.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
