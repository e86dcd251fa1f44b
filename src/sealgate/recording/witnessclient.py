"""The gateway's side of tlog-witness: [[witnesses]], each new checkpoint submitted off the write path, cosignatures kept."""

from io import BytesIO
from pathlib import Path

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from sealgate.recording.cosignature import (
    AddCheckpoint,
    CosignatureVerifier,
    addSignatures,
    cosignatures,
    parseSizeBody,
    signatureLines,
)
from sealgate.recording.cosigned import Cosignatures
from sealgate.recording.witnessconfig import WitnessEndpoint, WitnessPolicy


def _prepare(stateDir: Path, witness: str, known: int | None):
    """
    In a thread: C{(latest size, largest size this witness's cosignature is
    kept for, work)}, the work being C{(size, note,
    request)} for the latest checkpoint this witness has not cosigned,
    C{None} when there is none, or C{("ahead", n)} when the witness is past the log.
    """
    from sealgate.recording.reader import StoreReader

    with StoreReader(stateDir) as r, r.snapshot():
        latest = r.latestCheckpoint()
        if latest is None:
            return 0, None, None
        size, _, note = latest
        with Cosignatures(stateDir) as c:
            mine = c.latest(witness)
        if mine == size:
            return size, mine, None
        known = (mine or 0) if known is None else known
        if known > size:
            return size, mine, ("ahead", known)
        proof = r.consistencyProof(known, size)["proof"] if 0 < known < size else []
        return size, mine, (size, note, AddCheckpoint(known, tuple(proof), note))


class WitnessPump:
    """Keeps one witness up to date with the log: submit, learn its size on 409, back off on failure."""

    _log = Logger()

    def __init__(self, witness: WitnessEndpoint, stateDir: Path, reactor, threadpool, agent=None, poll: float = 1.0):
        self.witness = witness
        self.stateDir = stateDir
        self.reactor = reactor
        self.threadpool = threadpool
        self.agent = agent or Agent(reactor, connectTimeout=witness.timeout,
                                    pool=HTTPConnectionPool(reactor, persistent=True))
        self.poll = poll
        self.known: int | None = None   # the witness's latest cosigned size, as it last told us
        self.cosigned = 0                # the largest size we hold its cosignature for
        self.logCheckpoint = 0           # the log's latest checkpoint size, as last read
        self.failures = 0
        self.lastError: str | None = None
        #: When this witness last cosigned (its cosignature's own timestamp), or None.
        self.lastSuccess: int | None = None
        self._stopped = False
        self._wake = None

    def _thread(self, fn, *args):
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args)

    @defer.inlineCallbacks
    def run(self):
        while not self._stopped:
            try:
                self.logCheckpoint, mine, work = yield self._thread(
                    _prepare, self.stateDir, self.witness.name, self.known)
                self.cosigned = max(self.cosigned, mine or 0)
                if self.lastSuccess is None and mine:
                    # After a restart: when it cosigned what we already hold.
                    self.lastSuccess = yield self._thread(_cosignedAt, self.stateDir, self.witness.name, mine)
                if work is None:
                    yield self._sleep(self.poll)
                    continue
                if work[0] == "ahead":
                    raise RuntimeError(f"the witness cosigned size {work[1]}, beyond this log's latest "
                                       "checkpoint: the log was cut back or forked")
                yield self._submit(*work)
                self.failures, self.lastError = 0, None
            except Exception as e:
                if self._stopped:
                    break
                self.failures += 1
                self.lastError = f"{e}"[:300] or type(e).__name__
                wait = min(self.witness.max_backoff, self.witness.backoff * 2 ** (self.failures - 1))
                self._log.warn("Witness {name}: {why}; retrying in {wait}s", name=self.witness.name,
                               why=self.lastError, wait=wait)
                yield self._sleep(wait)

    @defer.inlineCallbacks
    def _submit(self, size: int, note: str, request: AddCheckpoint):
        code, body = yield self._post(request.encode())
        if code == 409:
            theirs = parseSizeBody(body)
            if theirs == request.oldSize:
                raise RuntimeError(f"the witness holds another root for size {theirs} (409): a fork")
            self.known = theirs
            return
        if code != 200:
            raise RuntimeError(f"the witness refused size {size} from {request.oldSize}: HTTP {code} "
                               f"{body[:200].decode('utf-8', 'replace').strip()}")
        lines = signatureLines(body.decode("utf-8"))
        found = cosignatures(addSignatures(note, lines), [self.witness.verifier])
        if not found:
            raise RuntimeError("the witness answered 200 without a valid cosignature by its key")
        mine = [line for line in lines if _cosignedBy(note, line, self.witness.verifier)]
        yield self._thread(_keep, self.stateDir, size, self.witness.name, mine[0], found[0].timestamp)
        self.known = self.cosigned = size
        self.lastSuccess = found[0].timestamp

    @defer.inlineCallbacks
    def _post(self, body: bytes):
        """C{(status, body)} of one add-checkpoint request, or a failure after the timeout."""
        d = self.agent.request(b"POST", (self.witness.url + "/add-checkpoint").encode(),
                               Headers({b"User-Agent": [b"sealgate"]}), FileBodyProducer(BytesIO(body)))
        d.addTimeout(self.witness.timeout, self.reactor)
        response = yield d
        answer = yield readBody(response)
        return response.code, answer

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._wake = self.reactor.callLater(seconds, d.callback, None)
        return d

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None and self._wake.active():
            self._wake.cancel()

    def status(self) -> dict:
        return {"name": self.witness.name, "size": self.cosigned, "lag_leaves": max(0, self.logCheckpoint - self.cosigned),
                "failures": self.failures, "error": self.lastError, "last_success": self.lastSuccess}


def _cosignedBy(note: str, line: str, verifier: CosignatureVerifier) -> bool:
    return bool(cosignatures(addSignatures(note, [line]), [verifier]))


def _cosignedAt(stateDir: Path, name: str, size: int) -> int | None:
    with Cosignatures(stateDir, readOnly=True) as c:
        return c.timestamp(size, name)


def _keep(stateDir: Path, size: int, name: str, line: str, timestamp: int) -> None:
    with Cosignatures(stateDir) as c:
        c.add(size, name, line, timestamp)


class Witnessing(Service):
    """Every configured witness, followed once the store is up; status for readiness, metrics and the console."""

    def __init__(self, policy: WitnessPolicy, stateDir: Path, reactor, threadpool, agent=None, poll: float = 1.0):
        self.policy = policy
        self.stateDir = stateDir
        self.pumps = [WitnessPump(w, stateDir, reactor, threadpool, agent, poll) for w in policy.witnesses]
        self._runs: list = []

    def startWitnessing(self) -> None:
        for p in self.pumps:
            self._runs.append(p.run())

    def stopService(self):
        for p in self.pumps:
            p.stop()
        return super().stopService()

    def status(self) -> dict:
        """
        In memory (safe on the reactor): each witness's cosigned size and lag,
        and the size a quorum has cosigned (lag behind the log's latest checkpoint).
        """
        witnesses = [p.status() for p in self.pumps]
        sizes = sorted((w["size"] for w in witnesses), reverse=True)
        quorum = self.policy.quorum
        witnessed = sizes[quorum - 1] if 0 < quorum <= len(sizes) else 0
        latest = max((p.logCheckpoint for p in self.pumps), default=0)
        return {"quorum": quorum, "witnessed_size": witnessed, "checkpoint_size": latest,
                "lag_leaves": max(0, latest - witnessed) if quorum else 0, "witnesses": witnesses}
