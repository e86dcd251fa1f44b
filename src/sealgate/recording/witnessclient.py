"""The gateway's side of tlog-witness: [[witnesses]], each new checkpoint submitted off the write path, cosignatures kept."""

import sqlite3
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
from sealgate.recording.witnessconfig import WitnessEndpoint, WitnessPolicy

DB_NAME = "witness.sqlite"


class Cosignatures:
    """The cosignatures the gateway collected, in its own SQLite beside the store (never the writer's file); blocking."""

    def __init__(self, stateDir: Path, readOnly: bool = False):
        path = Path(stateDir) / DB_NAME
        if readOnly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True) if path.exists() else None
            return
        self._db = sqlite3.connect(str(path), timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cosignatures (size INTEGER NOT NULL, witness TEXT NOT NULL,"
                         " line TEXT NOT NULL, timestamp INTEGER NOT NULL, PRIMARY KEY (size, witness))")
        self._db.commit()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._db is not None:
            self._db.close()

    def add(self, size: int, witness: str, line: str, timestamp: int) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO cosignatures VALUES (?,?,?,?)", (size, witness, line, timestamp))
        self._db.commit()

    def latest(self, witness: str) -> int | None:
        """The largest size C{witness} cosigned, or None."""
        if self._db is None:
            return None
        return self._db.execute("SELECT max(size) FROM cosignatures WHERE witness=?", (witness,)).fetchone()[0]

    def lines(self, size: int) -> list[str]:
        if self._db is None:
            return []
        return [r[0] for r in self._db.execute("SELECT line FROM cosignatures WHERE size=? ORDER BY witness", (size,))]

    def witnessedSize(self, names, quorum: int) -> int:
        """The largest size at least C{quorum} of the named witnesses cosigned (0 if none)."""
        if self._db is None or quorum <= 0:
            return 0
        names = list(names)
        marks = ",".join("?" * len(names))
        row = self._db.execute(f"SELECT max(size) FROM (SELECT size FROM cosignatures WHERE witness IN ({marks})"
                               " GROUP BY size HAVING count(*) >= ?)", (*names, quorum)).fetchone()
        return row[0] or 0


def witnessedNote(stateDir: Path, size: int, note: str) -> str:
    """A stored checkpoint note with the cosignatures collected for its size appended (blocking)."""
    with Cosignatures(stateDir, readOnly=True) as c:
        return addSignatures(note, c.lines(size))


def _prepare(stateDir: Path, witness: str, known: int | None):
    """
    In a thread: C{(size, note, request)} for the latest checkpoint this
    witness has not cosigned, C{None} when there is none, or C{("ahead", n)}.
    """
    from sealgate.recording.reader import StoreReader

    with StoreReader(stateDir) as r, r.snapshot():
        latest = r.latestCheckpoint()
        if latest is None:
            return None
        size, _, note = latest
        with Cosignatures(stateDir) as c:
            if known is None:
                known = c.latest(witness) or 0
            if c.latest(witness) == size:
                return None
        if known > size:
            return ("ahead", known)
        proof = r.consistencyProof(known, size)["proof"] if 0 < known < size else []
        return size, note, AddCheckpoint(known, tuple(proof), note)


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
        self.failures = 0
        self.lastError: str | None = None
        self._stopped = False
        self._wake = None

    def _thread(self, fn, *args):
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args)

    @defer.inlineCallbacks
    def run(self):
        while not self._stopped:
            try:
                work = yield self._thread(_prepare, self.stateDir, self.witness.name, self.known)
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
        d = self.agent.request(b"POST", (self.witness.url + "/add-checkpoint").encode(),
                               Headers({b"User-Agent": [b"sealgate"]}),
                               FileBodyProducer(BytesIO(request.encode())))
        d.addTimeout(self.witness.timeout, self.reactor)
        response = yield d
        body = yield readBody(response)
        if response.code == 409:
            theirs = parseSizeBody(body)
            if theirs == request.oldSize:
                raise RuntimeError(f"the witness holds another root for size {theirs} (409): a fork")
            self.known = theirs
            return
        if response.code != 200:
            raise RuntimeError(f"the witness refused size {size} from {request.oldSize}: HTTP {response.code} "
                               f"{body[:200].decode('utf-8', 'replace').strip()}")
        lines = signatureLines(body.decode("utf-8"))
        found = cosignatures(addSignatures(note, lines), [self.witness.verifier])
        if not found:
            raise RuntimeError("the witness answered 200 without a valid cosignature by its key")
        mine = [line for line in lines if _cosignedBy(note, line, self.witness.verifier)]
        yield self._thread(_keep, self.stateDir, size, self.witness.name, mine[0], found[0].timestamp)
        self.known = size

    def _sleep(self, seconds: float) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._wake = self.reactor.callLater(seconds, d.callback, None)
        return d

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None and self._wake.active():
            self._wake.cancel()

    def status(self) -> dict:
        return {"name": self.witness.name, "size": self.known, "failures": self.failures, "error": self.lastError}


def _cosignedBy(note: str, line: str, verifier: CosignatureVerifier) -> bool:
    return bool(cosignatures(addSignatures(note, [line]), [verifier]))


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

    def witnessedSize(self) -> int:
        """Blocking: the largest size a quorum cosigned."""
        with Cosignatures(self.stateDir, readOnly=True) as c:
            return c.witnessedSize([w.name for w in self.policy.witnesses], self.policy.quorum)

    def status(self) -> list:
        return [p.status() for p in self.pumps]
