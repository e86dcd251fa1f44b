"""The witness's HTTP face: POST /add-checkpoint (tlog-witness) and GET /checkpoint for monitors, in a thread."""

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web import resource, server

from sealgate.witness._decide import OK, Outcome

_log = Logger()


def _gone(request) -> bool:
    """Whether the client went away while the answer was being decided (it is then not written)."""
    return getattr(request, "sealgateGone", False)


def _watch(request) -> None:
    def lost(_):
        request.sealgateGone = True

    request.notifyFinish().addErrback(lost)


def _internalError(failure, request) -> None:
    _log.failure("witness request failed", failure)
    if not _gone(request):
        request.setResponseCode(500)
        request.write(b"internal error\n")
        request.finish()


class AddCheckpointResource(resource.Resource):
    """One request at a time per origin is the store's job; this only moves bytes and never blocks."""

    isLeaf = True
    _log = Logger()

    def __init__(self, store, config, reactor, threadpool):
        super().__init__()
        self.store = store
        self.config = config
        self.reactor = reactor
        self.threadpool = threadpool

    def render_POST(self, request):
        body = request.content.read(self.config.max_body + 1)
        if len(body) > self.config.max_body:
            return self._answer(request, Outcome(413, "request too large", b"request too large\n"))
        _watch(request)
        d = deferToThreadPool(self.reactor, self.threadpool, self.store.submit, body,
                              self.config.logs, self.config.cosigner)
        d.addCallback(lambda outcome: self._finish(request, outcome))
        d.addErrback(_internalError, request)
        return server.NOT_DONE_YET

    def render_GET(self, request):
        request.setResponseCode(405)
        request.setHeader(b"Allow", b"POST")
        return b"add-checkpoint takes POST\n"

    def _answer(self, request, outcome: Outcome) -> bytes:
        request.setResponseCode(outcome.status)
        request.setHeader(b"Content-Type", outcome.contentType.encode())
        if outcome.status != OK:
            self._log.info("Refused a checkpoint: {status} {reason}", status=outcome.status, reason=outcome.reason)
        return outcome.body

    def _finish(self, request, outcome: Outcome) -> None:
        body = self._answer(request, outcome)
        if outcome.status == OK and outcome.checkpoint is not None:
            self._log.info("Cosigned {origin} at size {size}", origin=outcome.checkpoint.origin,
                           size=outcome.checkpoint.size)
        if not _gone(request):
            request.write(body)
            request.finish()



class CheckpointResource(resource.Resource):
    """
    GET /checkpoint?origin=O: the latest checkpoint this witness cosigned for
    O, with its cosignature, for monitors (tlog-witness leaves monitor
    retrieval open; this is ours, on the same prefix).
    """

    isLeaf = True

    def __init__(self, store, reactor, threadpool):
        super().__init__()
        self.store = store
        self.reactor = reactor
        self.threadpool = threadpool

    def render_GET(self, request):
        origin = (request.args.get(b"origin") or [b""])[0].decode("utf-8", "replace")
        _watch(request)
        d = deferToThreadPool(self.reactor, self.threadpool, self.store.latest, origin)

        def answer(latest):
            if _gone(request):
                return
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            if latest is None:
                request.setResponseCode(404)
                request.write(f"no checkpoint cosigned for origin {origin!r}\n".encode())
            else:
                request.write(latest[2].encode())
            request.finish()

        d.addCallback(answer)
        d.addErrback(_internalError, request)
        return server.NOT_DONE_YET


def makeSite(store, config, reactor, threadpool) -> server.Site:
    root = resource.Resource()
    root.putChild(b"add-checkpoint", AddCheckpointResource(store, config, reactor, threadpool))
    root.putChild(b"checkpoint", CheckpointResource(store, reactor, threadpool))
    return server.Site(root)
