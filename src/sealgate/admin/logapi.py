"""GET /api/log/...: the signed checkpoint, leaves, and RFC 9162 proofs for outside monitors."""

import base64
import hashlib

from sealgate.admin._http import Authenticated, BadRequest, NotFound, intArg, inThread, jsonBody
from sealgate.admin.roles import require

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
    against a note it verified itself.
    """

    def handle(self, request, identity, path):
        require(identity, self.admin.service.config, "read")
        if request.method != b"GET" or len(path) != 1:
            raise NotFound("no such endpoint")
        what = path[0]
        if what == "checkpoint":
            work = (self._checkpoint,)
        elif what == "leaves":
            start = intArg(request, "start", 0, minimum=0)
            end = intArg(request, "end", start + 100, minimum=start + 1)
            work = (self._leaves, start, min(end, start + MAX_LEAVES))
        elif what == "inclusion":
            work = (self._inclusion, intArg(request, "index", minimum=0), intArg(request, "size", 0, minimum=0))
        elif what == "consistency":
            work = (self._consistency, intArg(request, "first", minimum=1),
                    intArg(request, "second", 0, minimum=0))
        else:
            raise NotFound("no such endpoint")
        return inThread(self.admin, *work).addCallback(lambda d: jsonBody(request, 200, d))

    def _reader(self):
        from sealgate.recording.reader import StoreReader

        return StoreReader(self.admin.service.config.gateway.state_dir)

    def _checkpoint(self) -> dict:
        with self._reader() as r:
            latest = r.latestCheckpoint()
            if latest is None:
                raise NotFound("the store has no signed checkpoint yet")
            size, when, note = latest
            return {"origin": r.origin, "size": size, "time": when, "note": note,
                    "key": r.verifier().vkey(), "log_size": r.logSize()}

    def _leaves(self, start: int, end: int) -> dict:
        with self._reader() as r:
            rows = r.db.execute("SELECT n, leaf FROM log WHERE n >= ? AND n < ? ORDER BY n",
                                (start, end)).fetchall()
        return {"leaves": [{"index": n, "leaf": _b64(bytes(leaf)),
                            "hash": _b64(hashlib.sha256(b"\x00" + bytes(leaf)).digest())}
                           for n, leaf in rows]}

    def _hashes(self, r, size: int) -> list:
        if size == 0:
            latest = r.latestCheckpoint()
            if latest is None:
                raise NotFound("the store has no signed checkpoint yet")
            size = latest[0]
        rows = r.db.execute("SELECT leaf FROM log WHERE n < ? ORDER BY n", (size,)).fetchall()
        if len(rows) < size:
            raise BadRequest(f"the log has only {len(rows)} leaves, not {size}")
        return [hashlib.sha256(b"\x00" + bytes(leaf)).digest() for (leaf,) in rows]

    def _inclusion(self, index: int, size: int) -> dict:
        from sealgate.recording.merkle import Levels

        with self._reader() as r:
            hashes = self._hashes(r, size)
        if index >= len(hashes):
            raise BadRequest(f"leaf {index} is outside a tree of size {len(hashes)}")
        levels = Levels(hashes)
        return {"index": index, "size": len(hashes), "leaf_hash": _b64(hashes[index]),
                "root": _b64(levels.root()), "proof": [_b64(h) for h in levels.inclusionProof(index)]}

    def _consistency(self, first: int, second: int) -> dict:
        from sealgate.recording.merkle import Levels, consistencyProof, rootOf

        with self._reader() as r:
            hashes = self._hashes(r, second)
        if first > len(hashes):
            raise BadRequest(f"first ({first}) is larger than the tree ({len(hashes)})")
        return {"first": first, "second": len(hashes), "first_root": _b64(rootOf(hashes[:first])),
                "second_root": _b64(Levels(hashes).root()),
                "proof": [_b64(h) for h in consistencyProof(hashes, first)]}
