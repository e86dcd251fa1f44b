"""GET /api/log/...: the signed checkpoint, leaves, and RFC 9162 proofs for outside monitors."""

import base64
import hashlib

from sealgate.admin._http import (
    Authenticated,
    BadRequest,
    NotFound,
    intArg,
    inThread,
    jsonBody,
    strArg,
)
from sealgate.admin.roles import require
from sealgate.recording._engine import StoreError
from sealgate.recording.cosigned import witnessedNote

MAX_LEAVES = 1000


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


class LogAPI(Authenticated):
    """
    GET /api/log/checkpoint: the latest signed checkpoint note (C{sealgate
    verify --checkpoint} format) and the verifier key;
    GET /api/log/leaves?start=&end=: raw leaves (base64), at most 1000;
    GET /api/log/inclusion?index=N[&size=M]: the audit path of leaf N in the tree of size M;
    GET /api/log/consistency?first=A[&second=B]: the proof that tree B extends tree A.
    Sizes default to the latest checkpoint's, so a monitor can check a proof
    against a note it verified itself.  In a fleet, C{?node=NAME} asks about
    that node's log (default: this node's).
    """

    def handle(self, request, identity, path):
        require(identity, self.admin.service.config, "read")
        if request.method != b"GET" or len(path) != 1:
            raise NotFound("no such endpoint")
        what = path[0]
        node = strArg(request, "node") or None
        if what == "checkpoint":
            work = (self._checkpoint, node)
        elif what == "leaves":
            start = intArg(request, "start", 0, minimum=0)
            end = intArg(request, "end", start + 100, minimum=start + 1)
            work = (self._leaves, node, start, min(end, start + MAX_LEAVES))
        elif what == "inclusion":
            work = (self._inclusion, node, intArg(request, "index", minimum=0), intArg(request, "size", 0, minimum=0))
        elif what == "consistency":
            work = (self._consistency, node, intArg(request, "first", minimum=1),
                    intArg(request, "second", 0, minimum=0))
        else:
            raise NotFound("no such endpoint")
        return inThread(self.admin, *work).addCallback(lambda d: jsonBody(request, 200, d))

    def _reader(self, node: str | None):
        from sealgate.recording.pgreader import openReader

        try:
            return openReader(self.admin.service.config.gateway, node)
        except StoreError as e:
            raise NotFound(str(e))

    def _checkpoint(self, node: str | None) -> dict:
        with self._reader(node) as r:
            latest = r.latestCheckpoint()
            if latest is None:
                raise NotFound("the store has no signed checkpoint yet")
            size, when, note = latest
            policy = self.admin.service.config.witnesses
            return {"origin": r.origin, "size": size, "time": when, "note": witnessedNote(r.stateDir, size, note),
                    "key": r.verifier().vkey(), "log_size": r.logSize(),
                    "witnesses": [w.verifier.vkey() for w in policy.witnesses], "witness_quorum": policy.quorum}

    def _leaves(self, node: str | None, start: int, end: int) -> dict:
        with self._reader(node) as r:
            rows = [(n, bytes(leaf)) for n, _session, _kind, leaf in r.logLeaves(start, end)]
        return {"leaves": [{"index": n, "leaf": _b64(leaf), "hash": _b64(hashlib.sha256(b"\x00" + leaf).digest())}
                           for n, leaf in rows]}

    def _proof(self, node: str | None, make, *args) -> dict:
        """A proof from the reader, its hashes in base64; a size outside the log is the caller's error."""
        with self._reader(node) as r:
            try:
                proof = make(r, *args)
            except StoreError as e:
                raise NotFound(str(e))
            except ValueError as e:
                raise BadRequest(str(e))
        return {k: [_b64(h) for h in v] if isinstance(v, list) else _b64(v) if isinstance(v, bytes) else v
                for k, v in proof.items()}

    def _inclusion(self, node: str | None, index: int, size: int) -> dict:
        return self._proof(node, lambda r, i, n: r.inclusionProof(i, n or None), index, size)

    def _consistency(self, node: str | None, first: int, second: int) -> dict:
        return self._proof(node, lambda r, a, b: r.consistencyProof(a, b or None), first, second)
